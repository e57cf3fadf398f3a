//! What the store keeps, and pruning the rest: without it a busy server's store grows
//! with every version and every update for good.
//!
//! - **Versions:** the newest [`Retention::versions`] keep their model files and
//!   metadata, and so do the current version (after a rollback, an old one), the
//!   target of the last rollback and version 1 (the model the fleet shipped with);
//!   the rest are removed. A device on a removed version downloads the full file.
//! - **Updates:** a round consumes or sets aside each update it sees; for
//!   [`Retention::update_grace_secs`] after that the update keeps its bytes (for
//!   inspection), then only its SHA-256 stays, so that a device resending it is still
//!   answered "duplicate" and a different update under its number is still refused.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use sha2::{Digest, Sha256};

use super::{Store, META, PENDING, STATE, UPDATES, VERSIONS, VERSION_META};
use crate::error::{db, SyncError};

/// (seconds since the Unix epoch when a round consumed it, device id, sequence number)
/// of every update a round consumed or set aside whose bytes are still stored.
const CONSUMED: TableDefinition<(u64, &str, u64), ()> = TableDefinition::new("consumed");
/// (device id, sequence number) → [`UpdateDigest`] of an update whose bytes were pruned.
pub(super) const UPDATE_DIGESTS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("update_digests");

/// What the store keeps (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Newest versions kept with their files, besides the current one, the last
    /// rollback's target and version 1.
    pub versions: u64,
    /// Seconds a consumed update keeps its bytes before only its digest stays.
    pub update_grace_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            versions: 32,
            update_grace_secs: 24 * 3600,
        }
    }
}

/// What one prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Versions removed with their files.
    pub versions: u64,
    /// Updates whose bytes were replaced by their digest.
    pub updates: u64,
}

/// The [`META`] entry set once a store's consumed updates are all recorded in [`CONSUMED`].
const INDEXED: &str = "consumed_indexed";

/// Opens the retention tables in `tx` (creating them) and, once per store, records as
/// consumed at `now_unix` the stored updates that are not pending (a store written before
/// updates were pruned).
pub(super) fn create_tables(tx: &WriteTransaction, now_unix: u64) -> Result<(), SyncError> {
    tx.open_table(UPDATE_DIGESTS).map_err(db)?;
    let mut consumed = tx.open_table(CONSUMED).map_err(db)?;
    let mut meta = tx.open_table(META).map_err(db)?;
    if meta.get(INDEXED).map_err(db)?.is_some() {
        return Ok(());
    }
    meta.insert(INDEXED, 1).map_err(db)?;
    let pending = tx.open_table(PENDING).map_err(db)?;
    let updates = tx.open_table(UPDATES).map_err(db)?;
    for item in updates.iter().map_err(db)? {
        let (k, _) = item.map_err(db)?;
        let (device, seq) = k.value();
        if pending.get((device, seq)).map_err(db)?.is_none() {
            consumed.insert((now_unix, device, seq), ()).map_err(db)?;
        }
    }
    Ok(())
}

/// Records within `tx` that a round finished at `unix` consumed update `(device, seq)`.
pub(super) fn mark_consumed(
    tx: &WriteTransaction,
    unix: u64,
    device: &str,
    seq: u64,
) -> Result<(), SyncError> {
    tx.open_table(CONSUMED)
        .map_err(db)?
        .insert((unix, device, seq), ())
        .map_err(db)?;
    Ok(())
}

/// What identifies an update's bytes once they are pruned: their SHA-256 and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateDigest {
    /// SHA-256 of the signed envelope.
    pub sha256: [u8; 32],
    /// Its length in bytes.
    pub len: u64,
}

impl UpdateDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        UpdateDigest {
            sha256: Sha256::digest(bytes).into(),
            len: bytes.len() as u64,
        }
    }

    /// As stored: the hash, then the length as u64 little-endian.
    fn to_bytes(self) -> [u8; 40] {
        let mut out = [0; 40];
        out[..32].copy_from_slice(&self.sha256);
        out[32..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Reads [`UpdateDigest::to_bytes`]'s 40 bytes.
    fn from_bytes(b: &[u8]) -> Option<Self> {
        let (sha256, len) = (b.get(..32)?, b.get(32..40)?);
        Some(UpdateDigest {
            sha256: sha256.try_into().ok()?,
            len: u64::from_le_bytes(len.try_into().ok()?),
        })
    }
}

/// The digest recorded in `table` for pruned update `(device, seq)`.
pub(super) fn pruned_digest(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    device: &str,
    seq: u64,
) -> Result<Option<UpdateDigest>, SyncError> {
    Ok(table
        .get((device, seq))
        .map_err(db)?
        .and_then(|v| UpdateDigest::from_bytes(v.value())))
}

/// Versions to remove under `keep_newest`: every stored one but the newest
/// `keep_newest` and those in `pinned`.
fn versions_to_remove(stored: &[u64], keep_newest: u64, pinned: &[u64]) -> Vec<u64> {
    let keep_from = stored.len().saturating_sub(keep_newest as usize);
    stored[..keep_from]
        .iter()
        .copied()
        .filter(|v| !pinned.contains(v))
        .collect()
}

impl Store {
    /// Applies `retention` as of `now_unix` in one transaction: removes versions past
    /// it and replaces the bytes of updates consumed before the grace by their digest.
    pub fn prune(&self, retention: &Retention, now_unix: u64) -> Result<Pruned, SyncError> {
        let mut pruned = Pruned::default();
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut versions = tx.open_table(VERSIONS).map_err(db)?;
            let mut metas = tx.open_table(VERSION_META).map_err(db)?;
            let stored: Vec<u64> = versions
                .iter()
                .map_err(db)?
                .map(|item| item.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()
                .map_err(db)?;
            let mut pinned = vec![1];
            pinned.extend(
                tx.open_table(META)
                    .map_err(db)?
                    .get("current")
                    .map_err(db)?
                    .map(|v| v.value()),
            );
            if let Some(marker) = tx
                .open_table(STATE)
                .map_err(db)?
                .get("rollback")
                .map_err(db)?
            {
                let marker: Option<crate::protocol::Rollback> =
                    serde_json::from_slice(marker.value()).ok();
                pinned.extend(marker.map(|m| m.to));
            }
            for v in versions_to_remove(&stored, retention.versions, &pinned) {
                versions.remove(v).map_err(db)?;
                metas.remove(v).map_err(db)?;
                pruned.versions += 1;
            }
        }
        {
            let cutoff = now_unix.saturating_sub(retention.update_grace_secs);
            let mut consumed = tx.open_table(CONSUMED).map_err(db)?;
            let mut updates = tx.open_table(UPDATES).map_err(db)?;
            let mut digests = tx.open_table(UPDATE_DIGESTS).map_err(db)?;
            let due: Vec<(u64, String, u64)> = consumed
                .range(..(cutoff.saturating_add(1), "", 0))
                .map_err(db)?
                .map(|item| {
                    item.map(|(k, _)| {
                        let (at, device, seq) = k.value();
                        (at, device.to_owned(), seq)
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(db)?;
            for (at, device, seq) in due {
                consumed.remove((at, device.as_str(), seq)).map_err(db)?;
                let Some(bytes) = updates.remove((device.as_str(), seq)).map_err(db)? else {
                    continue;
                };
                let digest = UpdateDigest::of(bytes.value()).to_bytes();
                drop(bytes);
                digests
                    .insert((device.as_str(), seq), digest.as_slice())
                    .map_err(db)?;
                pruned.updates += 1;
            }
        }
        tx.commit().map_err(db)?;
        Ok(pruned)
    }

    /// Rewrites the database file without the space pruned entries left free (each pass
    /// moves pages towards the start and truncates the end, so it runs until a pass
    /// finds nothing to do, at most 8); run at startup, before serving.
    pub fn compact(&mut self) -> Result<(), SyncError> {
        for _ in 0..8 {
            if !self.db.compact().map_err(db)? {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_versions_and_the_pinned_ones_stay() {
        let stored: Vec<u64> = (1..=10).collect();
        assert_eq!(versions_to_remove(&stored, 3, &[1, 4]), [2, 3, 5, 6, 7]);
        assert_eq!(versions_to_remove(&stored, 20, &[1]), Vec::<u64>::new());
        assert_eq!(
            versions_to_remove(&stored, 0, &[10]),
            (1..=9).collect::<Vec<_>>()
        );
    }
}
