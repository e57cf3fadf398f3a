//! Errors of the sync crate's device side and store. Messages say what to do.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong outside an HTTP handler: keys, the store, the
/// outbox and talking to the server.
#[derive(Debug, Error)]
pub enum SyncError {
    /// The operating system refused a file operation.
    #[error("cannot {action} {}: {source}; check the path, its permissions and the free space", .path.display())]
    Io {
        /// What was being done, e.g. `read`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A key file is not a 32-byte Ed25519 secret key.
    #[error("key file {} is {len} bytes, not a 32-byte Ed25519 secret key; delete it to create a new key (a device must then register again)", .path.display())]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// A key file can be read by other users.
    #[error("key file {} has mode {mode:o}, readable by others; run `chmod 600` on it", .path.display())]
    KeyFileMode {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The address to listen on is taken.
    #[error("cannot listen on {addr}: the address is in use (another `pupil serve`?); stop that server or pass another --addr")]
    AddrInUse {
        /// The address.
        addr: String,
    },
    /// Another running server holds the store.
    #[error("the store {} is open in another running server; stop it, or pass another --store", .path.display())]
    StoreInUse {
        /// The store's database file.
        path: PathBuf,
    },
    /// The embedded database failed.
    #[cfg(feature = "server")]
    #[error("store error: {0}; check the store directory's disk and permissions, or restore it from a backup")]
    Store(Box<redb::Error>),
    /// A stored record does not decode.
    #[error("store record {what} is corrupt: {detail}; restore the store from a backup")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// A model file is invalid.
    #[error(transparent)]
    Model(#[from] pupil_format::ModelFileError),
    /// A model delta cannot be applied.
    #[error("cannot apply the model delta: {0}")]
    Delta(#[from] crate::delta::DeltaError),
    /// An update could not be built.
    #[error("cannot build the update: {0}")]
    Update(#[from] pupil_wire::UpdateError),
    /// The server could not be reached.
    #[error(
        "cannot reach the server at {url}: {detail}; check the address and that `pupil serve` runs"
    )]
    Network {
        /// The URL requested.
        url: String,
        /// The transport error.
        detail: String,
    },
    /// The server answered with an error.
    #[error("server rejected {what} with {status} ({kind}): {message}")]
    Rejected {
        /// What was sent, e.g. `update 7`.
        what: String,
        /// HTTP status.
        status: u16,
        /// The error kind, e.g. `bad_signature`.
        kind: String,
        /// The server's message.
        message: String,
    },
    /// A command-line or configuration value is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The server offered a version the device must not move to.
    #[error("refusing version {offered}: this device runs version {running} and was offered {why} (a downgrade, or someone in between); the server's admin rolls back with `pupil sync rollback`, which devices accept; if the server's store was replaced on purpose, delete the model's `.version` file")]
    Downgrade {
        /// The version offered.
        offered: u64,
        /// The version the device runs.
        running: u64,
        /// Why it is refused.
        why: &'static str,
    },
    /// The server's answer cannot be trusted or understood.
    #[error(
        "server answer is unusable: {0}; check that the server key is the right one and try again"
    )]
    BadAnswer(String),
}

/// Maps an I/O error of `action` on `path`.
pub(crate) fn io_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> SyncError {
    let path = path.to_path_buf();
    move |source| SyncError::Io {
        action,
        path,
        source,
    }
}

/// Maps any redb error into [`SyncError::Store`].
#[cfg(feature = "server")]
pub(crate) fn db<E: Into<redb::Error>>(e: E) -> SyncError {
    SyncError::Store(Box::new(e.into()))
}
