//! Resumable chunked uploads of large updates: open, append contiguous
//! chunks (each committed before it is acknowledged), ask how much is held,
//! commit. A commit runs the assembled bytes through [`Server::submit`]'s
//! path, the same as `POST /v1/updates`, and removes the upload in the
//! transaction that stores the update.

use axum::http::StatusCode;
use pupil_wire::{Envelope, Update};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use super::{unix_now, ApiError, Server, Submitted};
use crate::hex;
use crate::protocol::{OpenUpload, UploadState, MAX_UPLOAD_CHUNKS};
use crate::store::{Append, UploadId, UploadMeta, UploadOpen, UPLOAD_ID_LEN};
use crate::SyncError;

/// The outcome of opening an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Send the bytes from `offset` on; `resumed` when the upload existed.
    Upload {
        /// The upload.
        state: UploadState,
        /// Whether it was opened before (a resumption).
        resumed: bool,
    },
    /// The server stored this update already; nothing to send.
    Duplicate,
}

/// The answer for upload `id` with `meta`.
fn state(id: &UploadId, meta: &UploadMeta) -> UploadState {
    UploadState {
        upload_id: hex::encode(id),
        offset: meta.received,
        length: meta.length,
    }
}

/// A 409 of `kind`.
fn conflict(kind: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, kind, message)
}

/// The error for an upload that does not exist.
fn no_such_upload(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_upload",
        format!("upload {id} does not exist (never opened, committed already, or expired); open it again with POST /v1/uploads"),
    )
}

impl Server {
    /// Opens an upload of `device`'s update `req`, or finds the one opened
    /// before (so a device resumes from the bytes the server holds).
    pub fn open_upload(&self, device: &str, req: &OpenUpload) -> Result<Opened, ApiError> {
        let max = self.config.max_body as u64;
        if req.length == 0 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "length must be at least 1; send the signed update's length",
            ));
        }
        if req.length > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the update is {} bytes, above the server's limit of {max}; send a smaller delta (top-k or int8 encoding)", req.length),
            ));
        }
        let sha = hex::decode::<32>(&req.sha256).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "sha256 must be 64 hex digits: the SHA-256 of the signed update",
            )
        })?;
        if let Some(stored) = self.store.update_digest(device, req.seq)? {
            if stored.len == req.length && stored.sha256 == sha {
                // An upload of it left behind by a crash would hold a slot for a day.
                self.store.remove_upload_of(device, req.seq)?;
                self.count("duplicate");
                return Ok(Opened::Duplicate);
            }
            return Err(self.seq_conflict(device, req.seq));
        }
        let mut id: UploadId = [0; UPLOAD_ID_LEN];
        StdRng::from_os_rng().fill_bytes(&mut id);
        let meta = UploadMeta {
            device: device.to_owned(),
            seq: req.seq,
            length: req.length,
            sha256: hex::encode(&sha),
            received: 0,
            chunks: 0,
            created_unix: unix_now(),
            touched_unix: 0,
        };
        match self
            .store
            .open_upload(
                &id,
                &meta,
                self.config.max_uploads_per_device,
                self.config.max_upload_bytes,
            )?
        {
            UploadOpen::Created(id) => {
                self.count("uploads.opened");
                Ok(Opened::Upload {
                    state: state(&id, &meta),
                    resumed: false,
                })
            }
            UploadOpen::Existing(id, old) => {
                self.count("uploads.resumed");
                Ok(Opened::Upload {
                    state: state(&id, &old),
                    resumed: true,
                })
            }
            UploadOpen::Conflict(old) => Err(conflict(
                "upload_conflict",
                format!("device {device:?} has an upload of update {} with another content ({} bytes, SHA-256 {}); use a new sequence number for new content", req.seq, old.length, old.sha256),
            )),
            UploadOpen::StoreFull { open_bytes } => Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "uploads_full",
                format!("the server's open uploads hold {open_bytes} bytes and this one would pass its limit of {}; retry later, when uploads have been committed or expired", self.config.max_upload_bytes),
            )),
            UploadOpen::TooMany => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_uploads",
                format!("device {device:?} has {} uploads open already; commit them first (unfinished ones expire after {} s)", self.config.max_uploads_per_device, self.config.upload_ttl.as_secs()),
            )),
        }
    }

    /// `device`'s upload `id` (hex) with its metadata.
    fn own_upload(&self, device: &str, id: &str) -> Result<(UploadId, UploadMeta), ApiError> {
        let key = hex::decode::<UPLOAD_ID_LEN>(id).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "an upload id is 32 hex digits, as POST /v1/uploads answered",
            )
        })?;
        let meta = self.store.upload(&key)?.ok_or_else(|| no_such_upload(id))?;
        if meta.device != device {
            return Err(not_yours(id));
        }
        Ok((key, meta))
    }

    /// What `device`'s upload `id` holds.
    pub fn upload_state(&self, device: &str, id: &str) -> Result<UploadState, ApiError> {
        let (key, meta) = self.own_upload(device, id)?;
        Ok(state(&key, &meta))
    }

    /// Appends chunk `bytes` at `offset` to `device`'s upload `id`; returns
    /// once the chunk is committed to the store.
    pub fn put_chunk(
        &self,
        device: &str,
        id: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Result<UploadState, ApiError> {
        let (key, _) = self.own_upload(device, id)?;
        if bytes.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed",
                "the chunk is empty; send at least one byte",
            ));
        }
        let end = offset.saturating_add(bytes.len() as u64);
        match self
            .store
            .append_chunk(&key, device, offset, bytes, MAX_UPLOAD_CHUNKS)?
        {
            Append::Appended(meta) => Ok(state(&key, &meta)),
            Append::NoSuchUpload => Err(no_such_upload(id)),
            Append::NotYours => Err(not_yours(id)),
            Append::Overlap { held } => Err(conflict(
                "overlapping_chunk",
                format!("the chunk starts at {offset} but the server holds bytes 0..{held} already; continue from offset {held} (GET /v1/uploads/{id} says it too)"),
            )),
            Append::Gap { held } => Err(conflict(
                "wrong_offset",
                format!("the chunk starts at {offset} but the server holds {held} bytes; chunks must be contiguous, so send offset {held} next"),
            )),
            Append::Beyond { length } => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "beyond_length",
                format!("the chunk ends at byte {end}, past the upload's declared length {length}; send only the update's bytes"),
            )),
            Append::TooManyChunks => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_chunks",
                format!("the upload has {MAX_UPLOAD_CHUNKS} chunks already; use chunks of at least length / {MAX_UPLOAD_CHUNKS} bytes"),
            )),
        }
    }

    /// Assembles `device`'s complete upload `id` and submits it exactly like
    /// `POST /v1/updates`; the upload is removed once the update is stored (in
    /// the same transaction) or refused for good.
    pub fn commit_upload(&self, device: &str, id: &str) -> Result<Submitted, ApiError> {
        let (key, meta) = self.own_upload(device, id)?;
        if meta.received < meta.length {
            return Err(conflict(
                "incomplete_upload",
                format!("the upload holds {} of its {} bytes; send the rest from offset {}, then commit", meta.received, meta.length, meta.received),
            ));
        }
        let bytes = self
            .store
            .upload_bytes(&key)?
            .ok_or_else(|| no_such_upload(id))?;
        if hex::encode(&Sha256::digest(&bytes)) != meta.sha256 {
            self.store.remove_upload(&key)?;
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "hash_mismatch",
                "the bytes received do not have the SHA-256 declared when the upload was opened, so the upload was discarded; open it again and send the update unchanged",
            ));
        }
        let carried = Envelope::parse(&bytes)
            .ok()
            .and_then(|env| Update::parse(env.body).ok())
            .map(|u| (u.device_id == meta.device, u.seq));
        if let Some((same_device, seq)) = carried {
            if !same_device || seq != meta.seq {
                self.store.remove_upload(&key)?;
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "upload_mismatch",
                    format!("the upload was opened by device {device:?} for update {} but carries another device's update or number {seq}; upload each update under its own device and sequence number", meta.seq),
                ));
            }
        }
        let result = self.submit_from(&bytes, Some(&key));
        if result.as_ref().is_err_and(|e| e.status.is_client_error()) {
            self.store.remove_upload(&key)?;
        }
        if result.is_ok() {
            self.count("uploads.committed");
        }
        result
    }

    /// Removes uploads opened longer ago than the configured time to live, or idle
    /// longer than the configured idle time; returns how many.
    pub fn gc_uploads(&self) -> Result<u64, SyncError> {
        let now = unix_now();
        let opened_by = now.checked_sub(self.config.upload_ttl.as_secs());
        let idle_by = now.checked_sub(self.config.upload_idle.as_secs());
        if opened_by.is_none() && idle_by.is_none() {
            return Ok(0);
        }
        self.store
            .remove_stale_uploads(opened_by.unwrap_or(0), idle_by.unwrap_or(0))
    }
}

/// The error for another device's upload.
fn not_yours(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "not_your_upload",
        format!("upload {id} was opened by another device; open your own with POST /v1/uploads"),
    )
}
