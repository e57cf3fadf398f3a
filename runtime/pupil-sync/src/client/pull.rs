//! Pulling the current version: as a delta from the local file where the
//! server can make one, else the full file; either way the result is checked
//! against the version's content hash and the server's signature before it
//! replaces the local file atomically.

use std::path::Path;

use pupil_format::ModelFile;
use ureq::http::Response;

use super::http::Client;
use crate::protocol::model_signing_message;
use crate::protocol::VersionMeta;
use crate::{delta, fsutil, hex, keys, SyncError};

/// What a pull did.
#[derive(Clone, Debug, PartialEq)]
pub enum PullOutcome {
    /// The local model is the current version.
    UpToDate(VersionMeta),
    /// The local model was replaced by this version.
    Updated(VersionMeta),
}

/// How a new version arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// As a delta applied to the local file.
    Delta {
        /// Bytes downloaded.
        bytes: u64,
    },
    /// As the full file.
    Full {
        /// Bytes downloaded.
        bytes: u64,
        /// Why no delta was used, when one was tried (no local file: none tried).
        delta_refused: Option<String>,
    },
}

/// What a pull did and how the version arrived.
#[derive(Clone, Debug, PartialEq)]
pub struct PullReport {
    /// What the pull did.
    pub outcome: PullOutcome,
    /// How the new version arrived; none when the local model was current.
    pub transfer: Option<Transfer>,
}

/// `bytes` as version `meta`'s model file, if they have its content hash and
/// the `x-pupil-signature` in `headers` is the pinned `server_key`'s signature of it.
fn verified(
    meta: &VersionMeta,
    bytes: Vec<u8>,
    headers: Option<&Response<()>>,
    server_key: &[u8; 32],
) -> Result<ModelFile, SyncError> {
    let signature = headers
        .and_then(|h| h.headers().get("x-pupil-signature"))
        .and_then(|v| v.to_str().ok())
        .and_then(hex::decode::<64>)
        .ok_or_else(|| {
            SyncError::BadAnswer("the model has no valid x-pupil-signature header".into())
        })?;
    let model = ModelFile::from_bytes(bytes)?;
    let hash = model.content_hash();
    if hex::encode(&hash) != meta.hash {
        return Err(SyncError::BadAnswer(format!(
            "version {} has content hash {} but the metadata says {}",
            meta.version,
            hex::encode(&hash),
            meta.hash
        )));
    }
    if !keys::verify(server_key, &model_signing_message(&hash), &signature) {
        return Err(SyncError::BadAnswer(format!(
            "version {}'s signature does not verify with the pinned server key",
            meta.version
        )));
    }
    Ok(model)
}

impl Client {
    /// Fetches the current version unless `model_path` holds it already,
    /// verifies the server's signature (with the pinned `server_key`) and the
    /// content hash, and replaces `model_path` atomically.
    pub fn pull(&self, model_path: &Path, server_key: &[u8; 32]) -> Result<PullOutcome, SyncError> {
        Ok(self.pull_report(model_path, server_key)?.outcome)
    }

    /// [`Client::pull`], saying how the version arrived: as a delta from the
    /// local file when there is one and the delta rebuilds exactly the signed
    /// version, else as the full file. A failed delta leaves the local file
    /// untouched; a failed full download too.
    pub fn pull_report(
        &self,
        model_path: &Path,
        server_key: &[u8; 32],
    ) -> Result<PullReport, SyncError> {
        let meta = self.latest()?;
        let local = ModelFile::open(model_path).ok();
        let mut delta_refused = None;
        if let Some(local) = &local {
            if hex::encode(&local.content_hash()) == meta.hash {
                return Ok(PullReport {
                    outcome: PullOutcome::UpToDate(meta),
                    transfer: None,
                });
            }
            match self.fetch_delta(local, &meta, server_key) {
                Ok((model, bytes)) => {
                    fsutil::write_atomic(model_path, model.as_bytes(), 0o644)?;
                    return Ok(PullReport {
                        outcome: PullOutcome::Updated(meta),
                        transfer: Some(Transfer::Delta { bytes }),
                    });
                }
                Err(e) => delta_refused = Some(e.to_string()),
            }
        }
        let (bytes, headers) = self.get(&format!("/v1/models/{}", meta.version))?;
        let downloaded = bytes.len() as u64;
        let model = verified(&meta, bytes, headers.as_ref(), server_key)?;
        fsutil::write_atomic(model_path, model.as_bytes(), 0o644)?;
        Ok(PullReport {
            outcome: PullOutcome::Updated(meta),
            transfer: Some(Transfer::Full {
                bytes: downloaded,
                delta_refused,
            }),
        })
    }

    /// Version `meta` rebuilt from `local` with a delta, verified; and the
    /// delta's size.
    fn fetch_delta(
        &self,
        local: &ModelFile,
        meta: &VersionMeta,
        server_key: &[u8; 32],
    ) -> Result<(ModelFile, u64), SyncError> {
        let path = format!(
            "/v1/models/{}/delta?from={}",
            meta.version,
            hex::encode(&local.content_hash())
        );
        let (delta, headers) = self.get(&path)?;
        let rebuilt = delta::apply(local.as_bytes(), &delta, meta.size)?;
        let model = verified(meta, rebuilt, headers.as_ref(), server_key)?;
        Ok((model, delta.len() as u64))
    }
}
