//! The device side: a durable outbox of signed updates, uploads with retry
//! and exponential backoff (large ones in resumable chunks), and pulling
//! verified model versions (as deltas where possible).

mod http;
mod outbox;
mod pull;
mod upload;

pub use http::{Client, PushReport, RetryPolicy};
pub use outbox::{sign_envelope, Outbox, OutboxStatus};
pub use pull::{PullOutcome, PullReport, Transfer};
pub use upload::ChunkPolicy;
