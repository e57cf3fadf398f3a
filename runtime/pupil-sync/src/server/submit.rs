//! Accepting an update: authenticate, validate, deduplicate, store durably.

use axum::http::StatusCode;
use pupil_format::DType;
use pupil_wire::{Envelope, Update, UpdateError};

use super::api_error::ApiError;
use super::Server;
use crate::keys;
use crate::protocol::{takes_deltas, DATA_TENSOR_PREFIX};
use crate::store::{Insert, UpdateDigest, UploadId};

/// What happened to an update that was not rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Stored durably; it will be aggregated.
    Accepted,
    /// The identical update was stored before.
    Duplicate,
}

impl Submitted {
    /// The status word in the JSON answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
        }
    }
}

/// Maps a decoding error of the envelope or body.
fn decode_error(e: UpdateError) -> ApiError {
    match e {
        UpdateError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        UpdateError::NonFinite { .. } | UpdateError::NonFiniteMetric { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "non_finite",
            e.to_string(),
        ),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed", e.to_string()),
    }
}

/// Why tensor `name` of `dtype` takes no delta.
pub(super) fn not_trainable(name: &str, dtype: DType) -> String {
    let what = if name.starts_with(DATA_TENSOR_PREFIX) {
        format!("a data tensor ({DATA_TENSOR_PREFIX}*: examples, not weights)")
    } else {
        format!("{}, not floating point", dtype.name())
    };
    format!("tensor {name:?} is {what}: only trainable F32, F16 and BF16 tensors take deltas; leave it out of the update (freeze it or mark it personal)")
}

/// A 422 of `kind`.
fn unprocessable(kind: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, kind, message)
}

impl Server {
    /// Authenticates and validates a signed update envelope and stores it;
    /// returns only after the store committed it.
    pub fn submit(&self, bytes: &[u8]) -> Result<Submitted, ApiError> {
        self.submit_from(bytes, None)
    }

    /// [`Server::submit`] of bytes assembled from chunked upload `upload`, if
    /// any: storing the update removes the upload in the same transaction.
    pub(super) fn submit_from(
        &self,
        bytes: &[u8],
        upload: Option<&UploadId>,
    ) -> Result<Submitted, ApiError> {
        let result = self.check_and_store(bytes, upload);
        match &result {
            Ok(Submitted::Duplicate) => self.count("duplicate"),
            Ok(Submitted::Accepted) => self.count("accepted"),
            Err(e) => self.count(&format!("rejected.{}", e.kind)),
        }
        result
    }

    /// [`Server::submit_from`] without the counting.
    fn check_and_store(
        &self,
        bytes: &[u8],
        upload: Option<&UploadId>,
    ) -> Result<Submitted, ApiError> {
        let env = Envelope::parse(bytes).map_err(decode_error)?;
        let (device, public) = self.store.device_for_key(&env.key_id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unknown_device",
                "the signing key is not registered; register the device with POST /v1/devices first",
            )
        })?;
        if !keys::verify(&public, env.body, &env.signature) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                format!("the signature does not verify with device {device:?}'s registered key; sign the update with that device's key"),
            ));
        }
        let update = Update::parse(env.body).map_err(decode_error)?;
        if update.device_id != device {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "device_mismatch",
                format!("the update claims device {:?} but is signed by device {device:?}; send updates under the signer's own id", update.device_id),
            ));
        }
        if let Some(stored) = self.store.update_digest(&device, update.seq)? {
            return if stored == UpdateDigest::of(bytes) {
                // An upload of it that outlived the store (a crash of an older server) goes.
                self.store.remove_upload_of(&device, update.seq)?;
                Ok(Submitted::Duplicate)
            } else {
                Err(self.seq_conflict(&device, update.seq))
            };
        }
        self.validate(&update)?;
        let inserted = match upload {
            Some(id) => self
                .store
                .insert_uploaded_update(id, &device, update.seq, bytes)?,
            None => self.store.insert_update(&device, update.seq, bytes)?,
        };
        match inserted {
            Insert::Stored => Ok(Submitted::Accepted),
            Insert::Duplicate => Ok(Submitted::Duplicate),
            Insert::Conflict => Err(self.seq_conflict(&device, update.seq)),
        }
    }

    /// The error for a reused sequence number with different content.
    pub(super) fn seq_conflict(&self, device: &str, seq: u64) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "seq_conflict",
            format!("device {device:?} already sent a different update with sequence number {seq}; use a new sequence number for new content"),
        )
    }

    /// Checks an authenticated update against the current model: model id,
    /// base version and staleness, tensor names, shapes and kinds (only
    /// trainable floating-point tensors take deltas), and the norm bound.
    fn validate(&self, update: &Update<'_>) -> Result<(), ApiError> {
        let current = self.current().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_model",
                "the server has no model yet; start it with --init-model",
            )
        })?;
        let model = &current.model;
        if update.model_id != model.info().model_id.as_str() {
            return Err(unprocessable(
                "wrong_model",
                format!("the update is for model {:?} but this server serves {:?}; send it to the right server", update.model_id, model.info().model_id.as_str()),
            ));
        }
        let base = self.version_of(&update.base_version).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "unknown_base",
                "the update's base version is not a version this server published; pull the latest model and refine again",
            )
        })?;
        let staleness = current.meta.version.saturating_sub(base);
        if staleness > self.config.max_staleness {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "stale_base",
                format!("the update is based on version {base}, {staleness} versions behind the current {} (the bound is {}); pull the latest model and refine again", current.meta.version, self.config.max_staleness),
            ));
        }
        for delta in update.deltas.iter() {
            let delta = delta.map_err(decode_error)?;
            let tensor = model.tensor(delta.name).map_err(|_| {
                unprocessable(
                    "unknown_tensor",
                    format!(
                        "the model has no tensor {:?}; send deltas for the model's own tensors",
                        delta.name
                    ),
                )
            })?;
            if tensor.shape != delta.shape.as_slice() {
                return Err(unprocessable(
                    "wrong_shape",
                    format!("delta {:?} has shape {:?} but the model's tensor is {:?}; refine the current model", delta.name, delta.shape.as_slice(), tensor.shape),
                ));
            }
            if !takes_deltas(delta.name, tensor.dtype) {
                return Err(unprocessable(
                    "not_trainable",
                    not_trainable(delta.name, tensor.dtype),
                ));
            }
        }
        let norm = update.squared_norm().sqrt();
        if norm > self.config.max_norm {
            return Err(unprocessable(
                "norm_too_large",
                format!("the update's L2 norm is {norm:.4e}, above the bound {:.4e}; clip the delta or lower the learning rate", self.config.max_norm),
            ));
        }
        Ok(())
    }
}
