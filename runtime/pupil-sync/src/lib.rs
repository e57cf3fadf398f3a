//! Syncing refined weights upstream.
//!
//! Devices sign compact updates ([`pupil_wire::update`]) with their Ed25519 key
//! ([`keys`]), queue them durably and upload them ([`client`]); the server
//! ([`server`]) authenticates and validates each one, stores it in an embedded
//! database ([`store`]) before acknowledging it, aggregates rounds with robust
//! rules ([`aggregate`]), optionally with differential privacy ([`dp`]), gates candidates on a holdout and publishes signed
//! model versions that devices verify before use.
//!
//! The server, its store and `pupil serve`'s arguments are behind the `server`
//! feature (on by default); a device app takes `default-features = false` and
//! links neither axum, tokio nor redb, and no GPU runtime either: model files
//! are read with `pupil-format`.

pub mod aggregate;
pub mod auth;
#[cfg(feature = "server")]
pub mod cli;
pub mod client;
pub mod delta;
pub mod dp;
pub mod error;
mod fsutil;
pub mod hex;
pub mod keys;
pub mod lora_merge;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;

pub use error::SyncError;
pub use keys::KeyPair;
