//! The device side: a durable outbox of signed updates, uploads with retry
//! and exponential backoff (large ones in resumable chunks), and pulling
//! verified model versions (as deltas where possible); building an update
//! from a refined model ([`Outbox::queue_update`]) and a device's directory
//! ([`DeviceDir`]).

mod device;
mod http;
mod outbox;
mod pull;
mod update;
mod upload;

pub use device::DeviceDir;
pub use http::{Client, Kept, PushReport, RetryPolicy};
pub use outbox::{sign_envelope, Outbox, OutboxStatus};
pub use pull::{version_file, PullOutcome, PullReport, Transfer};
pub use update::{DeltaEncoding, NamedValues, Queued, UpdateOptions};
pub use upload::ChunkPolicy;
