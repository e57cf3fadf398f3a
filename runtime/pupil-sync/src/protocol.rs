//! What the device and the server agree on, beside the update messages of
//! [`pupil_wire::update`]: the published versions' metadata, the chunked
//! upload requests, registration challenges, and what the server signs for a
//! model version. The client needs only this module, not the server.

use std::collections::BTreeMap;

use pupil_format::DType;
use serde::{Deserialize, Serialize};

use crate::SyncError;

/// What the server signs for a model version: this context, the model id's
/// length (u32 little-endian) and bytes, the version number (u64
/// little-endian), the parent's content hash (a 0 byte, or a 1 byte and the
/// 32-byte hash) and the 32-byte content hash. Devices verify it before using
/// a version, so nobody can relabel an older signed version as a newer one.
pub const VERSION_SIGNING_CONTEXT: &[u8] = b"pupil version v2\0";

/// The message signed for version `version` of model `model_id` with content
/// hash `hash`, made from the version with content hash `parent`.
pub fn version_signing_message(
    model_id: &str,
    version: u64,
    parent: Option<&[u8; 32]>,
    hash: &[u8; 32],
) -> Vec<u8> {
    let id_len = u32::try_from(model_id.len()).unwrap_or(u32::MAX);
    let mut m = Vec::with_capacity(VERSION_SIGNING_CONTEXT.len() + model_id.len() + 80);
    m.extend_from_slice(VERSION_SIGNING_CONTEXT);
    m.extend_from_slice(&id_len.to_le_bytes());
    m.extend_from_slice(model_id.as_bytes());
    m.extend_from_slice(&version.to_le_bytes());
    match parent {
        Some(p) => {
            m.push(1);
            m.extend_from_slice(p);
        }
        None => m.push(0),
    }
    m.extend_from_slice(hash);
    m
}

/// What the server signs when an admin makes an earlier version current:
/// this context, the version made current (u64 little-endian) and its
/// 32-byte content hash, and the highest version number published then (u64
/// little-endian). A device accepts a lower version number than the one it
/// runs only with such a marker.
pub const ROLLBACK_SIGNING_CONTEXT: &[u8] = b"pupil rollback v1\0";

/// A signed rollback marker: version `to` was made current again when
/// versions up to `from` existed, so versions `to + 1 ..= from` are
/// withdrawn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The version made current again.
    pub to: u64,
    /// Its content hash, hex.
    pub to_hash: String,
    /// The highest version number published when it was made.
    pub from: u64,
    /// The server's Ed25519 signature of [`Rollback::signing_message`], hex.
    pub signature: String,
}

impl Rollback {
    /// The message signed for a rollback to version `to` with content hash
    /// `to_hash` when versions up to `from` existed.
    pub fn signing_message(to: u64, to_hash: &[u8; 32], from: u64) -> Vec<u8> {
        [
            ROLLBACK_SIGNING_CONTEXT,
            &to.to_le_bytes(),
            to_hash,
            &from.to_le_bytes(),
        ]
        .concat()
    }

    /// Whether `server_key` signed this marker.
    pub fn verifies(&self, server_key: &[u8; 32]) -> bool {
        let (Some(hash), Some(sig)) = (
            crate::hex::decode::<32>(&self.to_hash),
            crate::hex::decode::<64>(&self.signature),
        ) else {
            return false;
        };
        crate::keys::verify(
            server_key,
            &Self::signing_message(self.to, &hash, self.from),
            &sig,
        )
    }
}

/// A published model version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// The model id inside the file (a store written before it was signed
    /// has it filled in when the server opens it).
    #[serde(default)]
    pub model_id: String,
    /// Version number in this store, counting from 1.
    pub version: u64,
    /// Content hash of the model file, hex.
    pub hash: String,
    /// Content hash of the version it was made from, hex.
    pub parent: Option<String>,
    /// Seconds since the Unix epoch when it was published.
    pub published_unix: u64,
    /// The server's Ed25519 signature of [`version_signing_message`] for this
    /// version's model id, number, parent and content hash, hex.
    pub signature: String,
    /// The model file's size in bytes.
    pub size: u64,
    /// The round that made it (none for an imported model).
    pub round: Option<u64>,
    /// Metrics: the quality gate's holdout scores and the round's mean device metrics.
    pub metrics: BTreeMap<String, f64>,
}

impl VersionMeta {
    /// The message the server signs for this version; `None` when its hashes
    /// are not 64 hex digits.
    pub fn signing_message(&self) -> Option<Vec<u8>> {
        let hash = crate::hex::decode::<32>(&self.hash)?;
        let parent = match &self.parent {
            Some(p) => Some(crate::hex::decode::<32>(p)?),
            None => None,
        };
        Some(version_signing_message(
            &self.model_id,
            self.version,
            parent.as_ref(),
            &hash,
        ))
    }

    /// Whether `server_key` signed this version's model id, number, parent
    /// and content hash.
    pub fn verifies(&self, server_key: &[u8; 32]) -> bool {
        match (
            self.signing_message(),
            crate::hex::decode::<64>(&self.signature),
        ) {
            (Some(message), Some(sig)) => crate::keys::verify(server_key, &message, &sig),
            _ => false,
        }
    }
}

/// The answer of `GET /v1/models/latest`: the current version's signed
/// metadata and, when an admin made it current again, the signed rollback
/// marker that lets devices running a later version go back to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    /// The current version.
    #[serde(flatten)]
    pub meta: VersionMeta,
    /// The rollback that made it current, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
}

impl Latest {
    /// Checks that `server_key` signed the metadata and the rollback marker,
    /// and that the marker names this version.
    pub fn verify(&self, server_key: &[u8; 32]) -> Result<(), SyncError> {
        if !self.meta.verifies(server_key) {
            return Err(SyncError::BadAnswer(format!(
                "the signature of version {}'s metadata (model id, number, parent, content \
                 hash) does not verify with the pinned server key",
                self.meta.version
            )));
        }
        if let Some(r) = &self.rollback {
            if !r.verifies(server_key) || r.to != self.meta.version || r.to_hash != self.meta.hash {
                return Err(SyncError::BadAnswer(format!(
                    "the rollback marker sent with version {} is not the pinned server key's \
                     signature of a rollback to it",
                    self.meta.version
                )));
            }
        }
        Ok(())
    }

    /// Whether a device that accepted `held` last (verified) may move to
    /// this (verified) version: a higher version number, unless a rollback
    /// the device accepted withdrew it; the same number with the same
    /// content; or a lower number with a signed rollback made after the
    /// version the device runs was published.
    pub fn may_follow(&self, held: &Latest) -> Result<(), SyncError> {
        let (offered, running) = (self.meta.version, held.meta.version);
        let fresh_rollback = self.rollback.as_ref().filter(|r| r.from >= running);
        let withdrawn = held
            .rollback
            .as_ref()
            .is_some_and(|r| r.to < offered && offered <= r.from);
        let refusal = if offered == running && self.meta.hash != held.meta.hash {
            Some("the same version number with other content")
        } else if offered < running && fresh_rollback.is_none() {
            Some("a lower version number without a signed rollback to it")
        } else if withdrawn && fresh_rollback.is_none() {
            Some("a version a signed rollback withdrew")
        } else {
            None
        };
        match refusal {
            Some(why) => Err(SyncError::Downgrade {
                offered,
                running,
                why,
            }),
            None => Ok(()),
        }
    }
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

/// What the server signs for a registration challenge: this context, the
/// 16-byte nonce and the expiry (u64 little-endian).
pub const CHALLENGE_CONTEXT: &[u8] = b"pupil challenge v1\0";

/// What a device signs to register: this context, the challenge's nonce and
/// expiry, the device id's length (u32 little-endian) and bytes, and the
/// 32-byte public key it registers.
pub const REGISTRATION_CONTEXT: &[u8] = b"pupil register v1\0";

/// How long a registration challenge stays valid, in seconds.
pub const CHALLENGE_TTL_SECS: u64 = 300;

/// Length of a challenge's nonce in bytes.
pub const CHALLENGE_NONCE_LEN: usize = 16;

/// A registration challenge, as `GET /v1/challenge` answers it: a random
/// nonce and an expiry, signed by the server so that it needs no state until
/// it is used (the server then records it, so it is used once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The nonce, hex.
    pub nonce: String,
    /// Seconds since the Unix epoch after which the server refuses it.
    pub expires_unix: u64,
    /// The server's Ed25519 signature of [`Challenge::server_message`], hex.
    pub server_signature: String,
}

impl Challenge {
    /// The message the server signs for `nonce` expiring at `expires_unix`.
    pub fn server_message(nonce: &[u8; CHALLENGE_NONCE_LEN], expires_unix: u64) -> Vec<u8> {
        [CHALLENGE_CONTEXT, nonce, &expires_unix.to_le_bytes()].concat()
    }

    /// The nonce's bytes; `None` when it is not 32 hex digits.
    pub fn nonce_bytes(&self) -> Option<[u8; CHALLENGE_NONCE_LEN]> {
        crate::hex::decode(&self.nonce)
    }

    /// The message a device signs to register `device_id` with `public_key`
    /// in answer to this challenge; `None` when the nonce is not hex.
    pub fn registration_message(&self, device_id: &str, public_key: &[u8; 32]) -> Option<Vec<u8>> {
        let nonce = self.nonce_bytes()?;
        let id_len = u32::try_from(device_id.len()).ok()?;
        Some(
            [
                REGISTRATION_CONTEXT,
                &nonce,
                &self.expires_unix.to_le_bytes(),
                &id_len.to_le_bytes(),
                device_id.as_bytes(),
                public_key,
            ]
            .concat(),
        )
    }
}

/// Body of `POST /v1/devices`: the device id and public key, with the
/// device key's signature of a fresh server challenge, proving the device
/// holds the private key of what it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The device id to register.
    pub device_id: String,
    /// The Ed25519 public key, hex.
    pub public_key: String,
    /// The challenge from `GET /v1/challenge`, as the server gave it.
    pub challenge: Challenge,
    /// The device key's signature of [`Challenge::registration_message`], hex.
    pub signature: String,
}

/// Seconds since the Unix epoch.
#[cfg(any(feature = "http", feature = "server"))]
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;

    /// Version `n` with content `content`, signed by `key`, with `rollback`
    /// (versions up to `from`) when given.
    fn version(key: &KeyPair, n: u64, content: u8, rollback: Option<u64>) -> Latest {
        let hash = [content; 32];
        let mut meta = VersionMeta {
            model_id: "m".into(),
            version: n,
            hash: crate::hex::encode(&hash),
            parent: None,
            published_unix: 0,
            signature: String::new(),
            size: 0,
            round: None,
            metrics: BTreeMap::new(),
        };
        meta.signature = crate::hex::encode(&key.sign(&meta.signing_message().unwrap()));
        let rollback = rollback.map(|from| Rollback {
            to: n,
            to_hash: meta.hash.clone(),
            from,
            signature: crate::hex::encode(&key.sign(&Rollback::signing_message(n, &hash, from))),
        });
        Latest { meta, rollback }
    }

    #[test]
    fn only_newer_versions_or_signed_rollbacks_follow() {
        let key = KeyPair::from_seed([1; 32]);
        let running = version(&key, 5, 5, None);
        let follows = |offered: &Latest, held: &Latest| {
            offered.verify(&key.public()).is_ok() && offered.may_follow(held).is_ok()
        };
        assert!(follows(&version(&key, 6, 6, None), &running));
        assert!(follows(&version(&key, 5, 5, None), &running));
        assert!(
            !follows(&version(&key, 5, 9, None), &running),
            "same number, other content"
        );
        assert!(!follows(&version(&key, 4, 4, None), &running), "older");
        assert!(
            !follows(&version(&key, 4, 5, None), &running),
            "same content, lower number"
        );
        assert!(
            follows(&version(&key, 4, 4, Some(5)), &running),
            "signed rollback"
        );
        assert!(
            !follows(&version(&key, 4, 4, Some(4)), &running),
            "rollback made before"
        );
        let rolled_back = version(&key, 3, 3, Some(7));
        assert!(
            !follows(&version(&key, 6, 6, None), &rolled_back),
            "withdrawn"
        );
        assert!(follows(&version(&key, 8, 8, None), &rolled_back));
        assert!(
            follows(&version(&key, 6, 6, Some(8)), &rolled_back),
            "rolled back to again"
        );

        let other = KeyPair::from_seed([2; 32]);
        assert!(
            !follows(&version(&other, 6, 6, None), &running),
            "another key"
        );
        let mut relabelled = version(&key, 4, 4, None);
        relabelled.meta.version = 6;
        assert!(!follows(&relabelled, &running), "the number is signed");
        let mut reparented = version(&key, 6, 6, None);
        reparented.meta.parent = Some(crate::hex::encode(&[1; 32]));
        assert!(!follows(&reparented, &running), "the parent is signed");
        let mut forged = version(&key, 4, 4, Some(5));
        forged.rollback.as_mut().unwrap().from = 9;
        assert!(!follows(&forged, &running), "the marker is signed");
        let mut misplaced = version(&key, 4, 4, Some(5));
        misplaced.rollback = version(&key, 2, 2, Some(5)).rollback;
        assert!(
            !follows(&misplaced, &running),
            "the marker names its version"
        );
    }
}
