//! The device side: a durable outbox of signed updates, uploads with retry
//! and exponential backoff, and pulling verified model versions.

mod http;
mod outbox;

pub use http::{Client, PullOutcome, PushReport, RetryPolicy};
pub use outbox::{sign_envelope, Outbox, OutboxStatus};
