//! What the device and the server agree on, beside the update messages of
//! [`pupil_wire::update`]: the published versions' metadata, the chunked
//! upload requests, and what the server signs for a model version. The
//! client needs only this module, not the server.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use pupil_format::DType;
use serde::{Deserialize, Serialize};

/// What the server signs for a model version: this context, then the 32-byte
/// content hash. Devices verify it before using a pulled model.
pub const MODEL_SIGNING_CONTEXT: &[u8] = b"pupil model v1\0";

/// The message signed for a model with content hash `hash`.
pub fn model_signing_message(hash: &[u8; 32]) -> Vec<u8> {
    [MODEL_SIGNING_CONTEXT, hash.as_slice()].concat()
}

/// A published model version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// Version number in this store, counting from 1.
    pub version: u64,
    /// Content hash of the model file, hex.
    pub hash: String,
    /// Content hash of the version it was made from, hex.
    pub parent: Option<String>,
    /// Seconds since the Unix epoch when it was published.
    pub published_unix: u64,
    /// The server's Ed25519 signature of the content hash, hex.
    pub signature: String,
    /// The model file's size in bytes.
    pub size: u64,
    /// The round that made it (none for an imported model).
    pub round: Option<u64>,
    /// Metrics: the quality gate's holdout scores and the round's mean device metrics.
    pub metrics: BTreeMap<String, f64>,
}

/// Name prefix of the data tensors a model file carries, the replay anchors
/// (`replay.images`, `replay.labels`): examples, not weights, so no update
/// changes them.
pub const DATA_TENSOR_PREFIX: &str = "replay.";

/// Whether tensor `name` of `dtype` takes deltas: a trainable floating-point
/// tensor (F32, F16 or BF16) that is not a data tensor. Integer tensors (a
/// tokenizer, a chat template, labels) and block-quantized ones cannot be
/// averaged; data tensors hold examples.
pub fn takes_deltas(name: &str, dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16) && !name.starts_with(DATA_TENSOR_PREFIX)
}

/// Most chunks one upload may have; a client picks chunks of at least
/// `length / MAX_UPLOAD_CHUNKS` bytes.
pub const MAX_UPLOAD_CHUNKS: u64 = 4096;

/// Body of `POST /v1/uploads`: the update an upload will carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenUpload {
    /// The update's sequence number.
    pub seq: u64,
    /// The signed envelope's length in bytes.
    pub length: u64,
    /// The signed envelope's SHA-256, hex.
    pub sha256: String,
}

/// The server's view of an upload, as every upload endpoint answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The upload's id, 32 hex digits.
    pub upload_id: String,
    /// Bytes the server holds: the next chunk starts here.
    pub offset: u64,
    /// The declared length.
    pub length: u64,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
