//! The device side: a durable outbox of signed updates, uploads with retry
//! and exponential backoff (large ones in resumable chunks), and pulling
//! verified model versions (as deltas where possible); building an update
//! from a refined model ([`Outbox::queue_update`]) and a device's directory
//! ([`DeviceDir`]).

//!
//! Talking to the server ([`Client`], pulls and chunked uploads) needs the `http` feature.

mod device;
#[cfg(feature = "http")]
mod http;
mod outbox;
#[cfg(feature = "http")]
mod pull;
mod update;
#[cfg(feature = "http")]
mod upload;

pub use device::DeviceDir;
#[cfg(feature = "http")]
pub use http::{Client, Kept, PushReport, RetryPolicy};
pub use outbox::{sign_envelope, Outbox, OutboxStatus};
#[cfg(feature = "http")]
pub use pull::{version_file, PullOutcome, PullReport, Transfer};
pub use update::{DeltaEncoding, NamedValues, Queued, UpdateOptions};
#[cfg(feature = "http")]
pub use upload::ChunkPolicy;
