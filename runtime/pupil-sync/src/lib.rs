//! Syncing refined weights upstream.
//!
//! Devices sign compact updates ([`pupil_wire::update`]) with their Ed25519 key
//! ([`keys`]), queue them durably and upload them ([`client`]); the server
//! ([`server`]) authenticates and validates each one, stores it in an embedded
//! database ([`store`]) before acknowledging it, aggregates rounds with robust
//! rules ([`aggregate`]), gates candidates on a holdout and publishes signed
//! model versions that devices verify before use.

pub mod aggregate;
pub mod auth;
pub mod cli;
pub mod client;
pub mod delta;
pub mod error;
mod fsutil;
pub mod hex;
pub mod keys;
pub mod server;
pub mod store;

pub use error::SyncError;
pub use keys::KeyPair;
