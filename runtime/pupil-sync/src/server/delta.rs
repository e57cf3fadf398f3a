//! Serving a version as a delta from an older one the device holds.

use axum::http::StatusCode;

use super::{ApiError, Server};
use crate::store::VersionMeta;
use crate::{delta, hex};

impl Server {
    /// Version `n`'s metadata and the delta that rebuilds its file from the
    /// version `from` names: a version number or a content hash (hex).
    pub fn delta(&self, n: u64, from: &str) -> Result<(VersionMeta, Vec<u8>), ApiError> {
        let base = match hex::decode::<32>(from) {
            Some(hash) => self.version_of(&hash),
            None => Some(from.parse::<u64>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("from={from:?} is neither a version number nor a 64-hex-digit content hash; send the version or hash of the model the device holds"),
                )
            })?),
        };
        let (Some(meta), Some(target)) =
            (self.store.version_meta(n)?, self.store.version_bytes(n)?)
        else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_version",
                format!("version {n} does not exist; see /v1/versions"),
            ));
        };
        let base_bytes = match base {
            Some(b) => self.store.version_bytes(b)?,
            None => None,
        };
        let base_bytes = base_bytes.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_base",
                format!("{from} is not a version this server published, so there is no delta from it; download the full file from /v1/models/{n}"),
            )
        })?;
        let bytes = delta::encode(&base_bytes, &target).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("{e}; download the full file from /v1/models/{n}"),
            )
        })?;
        self.count("pulls.delta");
        self.add("pulls.delta_bytes", bytes.len() as u64);
        Ok((meta, bytes))
    }
}
