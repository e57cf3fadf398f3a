//! pupil devices as Flower SuperNodes: Flower's Fleet API (protobuf over HTTP, `flwr`
//! 1.42.0) in Rust, each request signed with the node's SECP384R1 identity.
//!
//! - [`proto`]: Flower's messages, generated from the descriptors in the flwr wheel.
//! - [`NodeKey`]: the node's key pair, kept like a device key, and the signed headers.
//! - [`FleetClient`]: every Fleet call a SuperNode makes (register, activate, heartbeat,
//!   pull messages and objects, confirm receipt, push replies and objects, get the run,
//!   deactivate, unregister), plain HTTP or TLS.
//! - [`objects`] and [`npy`]: messages as Flower's content-addressed object trees.
//! - [`supernode`]: the SuperNode loop over an [`supernode::App`]; [`classifier`] and
//!   [`lora`] are the apps of a pupil classifier and of a decoder's adapters.

pub mod classifier;
mod fleet;
mod identity;
pub mod lora;
pub mod npy;
pub mod objects;
pub mod params;
pub mod supernode;

pub use fleet::{FleetClient, FleetError};
pub use identity::{iso8601_utc, NodeKey};

/// Flower's protobuf messages (package `flwr.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/flwr.proto.rs"));
}
