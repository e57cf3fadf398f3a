//! Pulling the current version: as a delta from the local file where the
//! server can make one, else the full file. The current version's metadata
//! (model id, number, parent, content hash) is checked against the server's
//! signature first, and refused when it would take the device back to an
//! older version without a signed rollback ([`Latest::may_follow`]); the
//! file is checked against that metadata before it replaces the local file
//! atomically. The verified metadata is kept beside the model
//! ([`version_file`]), so the next pull knows which version the device runs.

use std::fs;
use std::path::{Path, PathBuf};

use pupil_format::ModelFile;

use super::http::Client;
use crate::protocol::{Latest, VersionMeta};
use crate::{delta, fsutil, hex, SyncError};

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

/// Where the verified metadata of the version in `model_path` is kept:
/// beside it, with `.version` appended to its name.
pub fn version_file(model_path: &Path) -> PathBuf {
    let mut name = model_path.as_os_str().to_owned();
    name.push(".version");
    PathBuf::from(name)
}

/// The version the device accepted last for `model_path`, when its metadata
/// is there and the pinned `server_key` signed it.
fn held_version(model_path: &Path, server_key: &[u8; 32]) -> Option<Latest> {
    let text = fs::read(version_file(model_path)).ok()?;
    let held: Latest = serde_json::from_slice(&text).ok()?;
    held.verify(server_key).ok()?;
    Some(held)
}

/// Records `latest` as the version the device runs from `model_path`.
fn hold_version(model_path: &Path, latest: &Latest) -> Result<(), SyncError> {
    let json = serde_json::to_vec(latest)
        .map_err(|e| SyncError::InvalidArgument(format!("version metadata: {e}")))?;
    fsutil::write_atomic(&version_file(model_path), &json, 0o644)
}

/// `bytes` as version `meta`'s model file (verified metadata), if they have
/// its content hash and model id.
fn verified(meta: &VersionMeta, bytes: Vec<u8>) -> Result<ModelFile, SyncError> {
    let model = ModelFile::from_bytes(bytes)?;
    let hash = model.content_hash();
    if hex::encode(&hash) != meta.hash {
        return Err(SyncError::BadAnswer(format!(
            "version {} has content hash {} but the signed metadata says {}",
            meta.version,
            hex::encode(&hash),
            meta.hash
        )));
    }
    let model_id = model.info().model_id.as_str();
    if model_id != meta.model_id {
        return Err(SyncError::BadAnswer(format!(
            "version {} holds model {model_id:?} but the signed metadata says {:?}",
            meta.version, meta.model_id
        )));
    }
    Ok(model)
}

impl Client {
    /// Fetches the current version unless `model_path` holds it already,
    /// verifies the server's signature of its metadata (with the pinned
    /// `server_key`), refuses a downgrade the server did not sign as a
    /// rollback ([`SyncError::Downgrade`]), checks the content hash, and
    /// replaces `model_path` atomically.
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
        let latest = self.latest(server_key)?;
        if let Some(held) = held_version(model_path, server_key) {
            latest.may_follow(&held)?;
        }
        let meta = latest.meta.clone();
        let local = ModelFile::open(model_path).ok();
        let mut delta_refused = None;
        if let Some(local) = &local {
            if hex::encode(&local.content_hash()) == meta.hash {
                hold_version(model_path, &latest)?;
                return Ok(PullReport {
                    outcome: PullOutcome::UpToDate(meta),
                    transfer: None,
                });
            }
            match self.fetch_delta(local, &meta) {
                Ok((model, bytes)) => {
                    fsutil::write_atomic(model_path, model.as_bytes(), 0o644)?;
                    hold_version(model_path, &latest)?;
                    return Ok(PullReport {
                        outcome: PullOutcome::Updated(meta),
                        transfer: Some(Transfer::Delta { bytes }),
                    });
                }
                Err(e) => delta_refused = Some(e.to_string()),
            }
        }
        let (bytes, _) = self.get(&format!("/v1/models/{}", meta.version))?;
        let downloaded = bytes.len() as u64;
        let model = verified(&meta, bytes)?;
        fsutil::write_atomic(model_path, model.as_bytes(), 0o644)?;
        hold_version(model_path, &latest)?;
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
    ) -> Result<(ModelFile, u64), SyncError> {
        let path = format!(
            "/v1/models/{}/delta?from={}",
            meta.version,
            hex::encode(&local.content_hash())
        );
        let (delta, _) = self.get(&path)?;
        let rebuilt = delta::apply(local.as_bytes(), &delta, meta.size)?;
        let model = verified(meta, rebuilt)?;
        Ok((model, delta.len() as u64))
    }
}
