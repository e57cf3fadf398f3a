//! The server's durable store: one redb database file.
//!
//! Every method that changes state runs in one write transaction and commits
//! it (redb's default durability fsyncs on commit) before returning, so once a
//! handler acknowledges a request, its effect survives a crash or a SIGKILL.
//! A round publishes its version, records itself, consumes its pending
//! updates and sets aside those it could not aggregate in one transaction: it
//! happens completely or not at all.
//! Resumable uploads and their chunks have tables of their own
//! ([`Store::open_upload`], [`Store::append_chunk`]).

use std::fs;
use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{db, io_err, SyncError};

mod retention;
mod uploads;

pub use crate::protocol::{Rollback, VersionMeta};
pub use retention::{Pruned, Retention, UpdateDigest};
pub use uploads::{Append, UploadId, UploadMeta, UploadOpen, UPLOAD_ID_LEN};

/// Device id → 32-byte Ed25519 public key.
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// Key id → device id.
const DEVICE_KEYS: TableDefinition<&[u8], &str> = TableDefinition::new("device_keys");
/// (device id, sequence number) → the signed envelope as received.
const UPDATES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("updates");
/// Accepted updates not yet consumed by a round.
const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("pending");
/// Updates a round could not aggregate, moved out of [`PENDING`] → why.
const SET_ASIDE: TableDefinition<(&str, u64), &str> = TableDefinition::new("set_aside");
/// Version number → model file bytes.
const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("versions");
/// Version number → [`VersionMeta`] as JSON.
const VERSION_META: TableDefinition<u64, &str> = TableDefinition::new("version_meta");
/// Round number → [`RoundRecord`] as JSON.
const ROUNDS: TableDefinition<u64, &str> = TableDefinition::new("rounds");
/// (expiry, nonce) of registration challenges used; kept until they expire.
const USED_CHALLENGES: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("used_challenges");
/// Named counters and pointers, e.g. `current`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Named server state blobs, e.g. `optimizer` (the server optimizer as JSON).
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");

/// The key of an update: device id and sequence number.
pub type UpdateKey = (String, u64);

/// What a round did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number, counting from 1.
    pub round: u64,
    /// Updates aggregated.
    pub updates: u64,
    /// Updates set aside unaggregated (see [`Store::set_aside`]).
    #[serde(default)]
    pub set_aside: u64,
    /// The version it published; none when the quality gate rejected it.
    pub published: Option<u64>,
    /// The quality gate's verdict.
    pub gate: String,
    /// Seconds since the Unix epoch when it finished.
    pub finished_unix: u64,
}

/// The outcome of registering a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// The device is new.
    Created,
    /// The device was registered with the same key already.
    Unchanged,
    /// The device is registered with another key.
    Conflict,
    /// The registration challenge was used before.
    ChallengeUsed,
}

/// The outcome of storing an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Stored and pending aggregation.
    Stored,
    /// The same bytes were stored before.
    Duplicate,
    /// Different bytes were stored under the same device and sequence number.
    Conflict,
}

/// The redb database of a server.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

/// Decodes a JSON record.
fn from_json<T: for<'de> Deserialize<'de>>(what: String, s: &str) -> Result<T, SyncError> {
    serde_json::from_str(s).map_err(|e| SyncError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// Encodes a record as JSON.
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, SyncError> {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let path = dir.join("store.redb");
        let database = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                SyncError::StoreInUse { path: path.clone() }
            }
            e => db(e),
        })?;
        let store = Store { db: database };
        let tx = store.db.begin_write().map_err(db)?;
        tx.open_table(DEVICES).map_err(db)?;
        tx.open_table(DEVICE_KEYS).map_err(db)?;
        tx.open_table(UPDATES).map_err(db)?;
        tx.open_table(PENDING).map_err(db)?;
        tx.open_table(SET_ASIDE).map_err(db)?;
        tx.open_table(VERSIONS).map_err(db)?;
        tx.open_table(VERSION_META).map_err(db)?;
        tx.open_table(ROUNDS).map_err(db)?;
        tx.open_table(META).map_err(db)?;
        tx.open_table(STATE).map_err(db)?;
        tx.open_table(USED_CHALLENGES).map_err(db)?;
        uploads::create_tables(&tx)?;
        retention::create_tables(&tx, crate::protocol::unix_now())?;
        tx.commit().map_err(db)?;
        Ok(store)
    }

    /// Registers `device_id` with `public_key` and its key id, without a
    /// challenge (provisioning by whoever holds the store).
    pub fn register(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        key_id: &[u8],
    ) -> Result<Registration, SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        let outcome = register_in(&tx, device_id, public_key, key_id)?;
        tx.commit().map_err(db)?;
        Ok(outcome)
    }

    /// Registers `device_id` with `public_key` in answer to the challenge
    /// `(expires_unix, nonce)`, which is recorded as used in the same
    /// transaction: a second use answers [`Registration::ChallengeUsed`].
    /// Challenges that expired before `now_unix` are forgotten.
    pub fn register_with_challenge(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        key_id: &[u8],
        challenge: (u64, &[u8]),
        now_unix: u64,
    ) -> Result<Registration, SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        let outcome = {
            let mut used = tx.open_table(USED_CHALLENGES).map_err(db)?;
            used.retain_in(..(now_unix, [].as_slice()), |_, _| false)
                .map_err(db)?;
            if used.insert(challenge, ()).map_err(db)?.is_some() {
                Registration::ChallengeUsed
            } else {
                register_in(&tx, device_id, public_key, key_id)?
            }
        };
        tx.commit().map_err(db)?;
        Ok(outcome)
    }

    /// The device id and public key registered under `key_id`.
    pub fn device_for_key(&self, key_id: &[u8]) -> Result<Option<(String, [u8; 32])>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let keys = tx.open_table(DEVICE_KEYS).map_err(db)?;
        let Some(device) = keys.get(key_id).map_err(db)?.map(|v| v.value().to_owned()) else {
            return Ok(None);
        };
        let devices = tx.open_table(DEVICES).map_err(db)?;
        let key = devices
            .get(device.as_str())
            .map_err(db)?
            .and_then(|v| <[u8; 32]>::try_from(v.value()).ok())
            .ok_or_else(|| SyncError::Corrupt {
                what: format!("device {device:?}"),
                detail: "its public key is missing or not 32 bytes".into(),
            })?;
        Ok(Some((device, key)))
    }

    /// Stores update `(device, seq)` and marks it pending, unless that key
    /// exists: then reports whether the stored bytes are the same.
    pub fn insert_update(&self, device: &str, seq: u64, bytes: &[u8]) -> Result<Insert, SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        let outcome = insert_in(&tx, device, seq, bytes)?;
        tx.commit().map_err(db)?;
        Ok(outcome)
    }

    /// The stored bytes of update `(device, seq)`.
    pub fn get_update(&self, device: &str, seq: u64) -> Result<Option<Vec<u8>>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let updates = tx.open_table(UPDATES).map_err(db)?;
        let bytes = updates
            .get((device, seq))
            .map_err(db)?
            .map(|v| v.value().to_vec());
        Ok(bytes)
    }

    /// The digest of update `(device, seq)`, whether its bytes are stored or were
    /// pruned ([`Retention`]).
    pub fn update_digest(&self, device: &str, seq: u64) -> Result<Option<UpdateDigest>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let updates = tx.open_table(UPDATES).map_err(db)?;
        if let Some(bytes) = updates.get((device, seq)).map_err(db)? {
            return Ok(Some(UpdateDigest::of(bytes.value())));
        }
        let digests = tx.open_table(retention::UPDATE_DIGESTS).map_err(db)?;
        retention::pruned_digest(&digests, device, seq)
    }

    /// The pending updates with their bytes, in key order.
    pub fn pending(&self) -> Result<Vec<(UpdateKey, Vec<u8>)>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let pending = tx.open_table(PENDING).map_err(db)?;
        let updates = tx.open_table(UPDATES).map_err(db)?;
        let mut out = Vec::new();
        for item in pending.iter().map_err(db)? {
            let (k, _) = item.map_err(db)?;
            let (device, seq) = k.value();
            if let Some(bytes) = updates.get((device, seq)).map_err(db)? {
                out.push(((device.to_owned(), seq), bytes.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Every accepted update's key (its bytes stored or pruned), in key order.
    pub fn update_keys(&self) -> Result<Vec<UpdateKey>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let mut out = Vec::new();
        for item in tx.open_table(UPDATES).map_err(db)?.iter().map_err(db)? {
            let (k, _) = item.map_err(db)?;
            let (device, seq) = k.value();
            out.push((device.to_owned(), seq));
        }
        let digests = tx.open_table(retention::UPDATE_DIGESTS).map_err(db)?;
        for item in digests.iter().map_err(db)? {
            let (k, _) = item.map_err(db)?;
            let (device, seq) = k.value();
            out.push((device.to_owned(), seq));
        }
        out.sort();
        Ok(out)
    }

    /// Counts: accepted updates (bytes stored or pruned), pending updates, versions,
    /// rounds.
    pub fn counts(&self) -> Result<[u64; 4], SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        Ok([
            tx.open_table(UPDATES).map_err(db)?.len().map_err(db)?
                + tx.open_table(retention::UPDATE_DIGESTS)
                    .map_err(db)?
                    .len()
                    .map_err(db)?,
            tx.open_table(PENDING).map_err(db)?.len().map_err(db)?,
            tx.open_table(VERSIONS).map_err(db)?.len().map_err(db)?,
            tx.open_table(ROUNDS).map_err(db)?.len().map_err(db)?,
        ])
    }

    /// Finishes a round in one transaction: stores `version` (when the gate
    /// passed) and makes it current together with the server optimizer's
    /// `optimizer` state, records `round`, consumes `used`, and moves
    /// `set_aside` out of the pending updates with the reason of each.
    pub fn finish_round(
        &self,
        version: Option<(&VersionMeta, &[u8], &[u8])>,
        round: &RoundRecord,
        used: &[UpdateKey],
        set_aside: &[(UpdateKey, String)],
    ) -> Result<(), SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            if let Some((meta, bytes, optimizer)) = version {
                put_version(&tx, meta, bytes)?;
                tx.open_table(STATE)
                    .map_err(db)?
                    .insert("optimizer", optimizer)
                    .map_err(db)?;
            }
            tx.open_table(ROUNDS)
                .map_err(db)?
                .insert(round.round, to_json(round).as_str())
                .map_err(db)?;
            let mut pending = tx.open_table(PENDING).map_err(db)?;
            for (device, seq) in used {
                pending.remove((device.as_str(), *seq)).map_err(db)?;
                retention::mark_consumed(&tx, round.finished_unix, device, *seq)?;
            }
            let mut aside = tx.open_table(SET_ASIDE).map_err(db)?;
            for ((device, seq), why) in set_aside {
                pending.remove((device.as_str(), *seq)).map_err(db)?;
                retention::mark_consumed(&tx, round.finished_unix, device, *seq)?;
                aside
                    .insert((device.as_str(), *seq), why.as_str())
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)
    }

    /// The updates rounds set aside unaggregated, with why, in key order.
    /// Their bytes stay in the store ([`Store::get_update`]).
    pub fn set_aside(&self) -> Result<Vec<(UpdateKey, String)>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(SET_ASIDE).map_err(db)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let (device, seq) = k.value();
            out.push(((device.to_owned(), seq), v.value().to_owned()));
        }
        Ok(out)
    }

    /// The server optimizer's state as of the current version, if a round stored one.
    pub fn optimizer(&self) -> Result<Option<Vec<u8>>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(STATE).map_err(db)?;
        let value = table.get("optimizer").map_err(db)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Stores `meta` and `bytes` as a version and makes it current.
    pub fn add_version(&self, meta: &VersionMeta, bytes: &[u8]) -> Result<(), SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        put_version(&tx, meta, bytes)?;
        tx.commit().map_err(db)
    }

    /// The current version's metadata, if any version exists.
    pub fn current(&self) -> Result<Option<VersionMeta>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let current = tx
            .open_table(META)
            .map_err(db)?
            .get("current")
            .map_err(db)?
            .map(|v| v.value());
        match current {
            Some(n) => self.version_meta(n),
            None => Ok(None),
        }
    }

    /// The metadata of version `n`.
    pub fn version_meta(&self, n: u64) -> Result<Option<VersionMeta>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(VERSION_META).map_err(db)?;
        let json = table.get(n).map_err(db)?.map(|v| v.value().to_owned());
        json.map(|j| from_json(format!("version {n}"), &j))
            .transpose()
    }

    /// The model file of version `n`.
    pub fn version_bytes(&self, n: u64) -> Result<Option<Vec<u8>>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(VERSIONS).map_err(db)?;
        Ok(table.get(n).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// Every version's metadata, oldest first.
    pub fn versions(&self) -> Result<Vec<VersionMeta>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(VERSION_META).map_err(db)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push(from_json(format!("version {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// The highest version number, 0 when there is none.
    pub fn last_version(&self) -> Result<u64, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(VERSIONS).map_err(db)?;
        let last = table.last().map_err(db)?.map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    /// Every round's record, oldest first.
    pub fn rounds(&self) -> Result<Vec<RoundRecord>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(ROUNDS).map_err(db)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push(from_json(format!("round {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// The highest round number, 0 when there is none.
    pub fn last_round(&self) -> Result<u64, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(ROUNDS).map_err(db)?;
        let last = table.last().map_err(db)?.map_or(0, |(k, _)| k.value());
        Ok(last)
    }

    /// Makes existing version `n` current (a rollback) with the server's
    /// signed `marker`, kept until a round publishes a version; false when
    /// version `n` does not exist.
    pub fn set_current(&self, n: u64, marker: &Rollback) -> Result<bool, SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        let exists = tx
            .open_table(VERSIONS)
            .map_err(db)?
            .get(n)
            .map_err(db)?
            .is_some();
        if exists {
            tx.open_table(META)
                .map_err(db)?
                .insert("current", n)
                .map_err(db)?;
            tx.open_table(STATE)
                .map_err(db)?
                .insert("rollback", to_json(marker).as_bytes())
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(exists)
    }

    /// The signed marker of the last rollback, unless a version was
    /// published since.
    pub fn rollback_marker(&self) -> Result<Option<Rollback>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(STATE).map_err(db)?;
        let value = table.get("rollback").map_err(db)?;
        value
            .map(|v| {
                let text = String::from_utf8_lossy(v.value()).into_owned();
                from_json("the rollback marker".into(), &text)
            })
            .transpose()
    }

    /// Replaces the metadata of existing version `meta.version` (a signature
    /// made again under a newer scheme).
    pub fn put_version_meta(&self, meta: &VersionMeta) -> Result<(), SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        tx.open_table(VERSION_META)
            .map_err(db)?
            .insert(meta.version, to_json(meta).as_str())
            .map_err(db)?;
        tx.commit().map_err(db)
    }
}

/// Registers `device_id` with `public_key` and its key id within `tx`.
fn register_in(
    tx: &redb::WriteTransaction,
    device_id: &str,
    public_key: &[u8; 32],
    key_id: &[u8],
) -> Result<Registration, SyncError> {
    let mut devices = tx.open_table(DEVICES).map_err(db)?;
    let existing = devices
        .get(device_id)
        .map_err(db)?
        .map(|v| v.value().to_vec());
    Ok(match existing {
        Some(k) if k == public_key => Registration::Unchanged,
        Some(_) => Registration::Conflict,
        None => {
            let mut keys = tx.open_table(DEVICE_KEYS).map_err(db)?;
            if keys.get(key_id).map_err(db)?.is_some() {
                Registration::Conflict
            } else {
                devices
                    .insert(device_id, public_key.as_slice())
                    .map_err(db)?;
                keys.insert(key_id, device_id).map_err(db)?;
                Registration::Created
            }
        }
    })
}

/// Stores update `(device, seq)` and marks it pending within `tx`, unless that
/// key exists: then reports whether the stored bytes are the same.
fn insert_in(
    tx: &redb::WriteTransaction,
    device: &str,
    seq: u64,
    bytes: &[u8],
) -> Result<Insert, SyncError> {
    let mut updates = tx.open_table(UPDATES).map_err(db)?;
    let mut existing = updates
        .get((device, seq))
        .map_err(db)?
        .map(|v| v.value() == bytes);
    if existing.is_none() {
        let digests = tx.open_table(retention::UPDATE_DIGESTS).map_err(db)?;
        existing =
            retention::pruned_digest(&digests, device, seq)?.map(|d| d == UpdateDigest::of(bytes));
    }
    Ok(match existing {
        Some(true) => Insert::Duplicate,
        Some(false) => Insert::Conflict,
        None => {
            updates.insert((device, seq), bytes).map_err(db)?;
            tx.open_table(PENDING)
                .map_err(db)?
                .insert((device, seq), ())
                .map_err(db)?;
            Insert::Stored
        }
    })
}

/// Inserts a version and makes it current within `tx`.
fn put_version(
    tx: &redb::WriteTransaction,
    meta: &VersionMeta,
    bytes: &[u8],
) -> Result<(), SyncError> {
    tx.open_table(VERSIONS)
        .map_err(db)?
        .insert(meta.version, bytes)
        .map_err(db)?;
    tx.open_table(VERSION_META)
        .map_err(db)?
        .insert(meta.version, to_json(meta).as_str())
        .map_err(db)?;
    tx.open_table(META)
        .map_err(db)?
        .insert("current", meta.version)
        .map_err(db)?;
    tx.open_table(STATE)
        .map_err(db)?
        .remove("rollback")
        .map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(version: u64) -> VersionMeta {
        VersionMeta {
            model_id: "m".into(),
            version,
            hash: format!("{version:064x}"),
            parent: None,
            published_unix: 1,
            signature: String::new(),
            size: 3,
            round: None,
            metrics: BTreeMap::new(),
        }
    }

    #[test]
    fn updates_deduplicate_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(
                s.register("d", &[1; 32], &[9; 8]).unwrap(),
                Registration::Created
            );
            assert_eq!(
                s.register("d", &[1; 32], &[9; 8]).unwrap(),
                Registration::Unchanged
            );
            assert_eq!(
                s.register("d", &[2; 32], &[8; 8]).unwrap(),
                Registration::Conflict
            );
            assert_eq!(s.insert_update("d", 1, b"a").unwrap(), Insert::Stored);
            assert_eq!(s.insert_update("d", 1, b"a").unwrap(), Insert::Duplicate);
            assert_eq!(s.insert_update("d", 1, b"b").unwrap(), Insert::Conflict);
            assert_eq!(s.insert_update("d", 2, b"c").unwrap(), Insert::Stored);
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.device_for_key(&[9; 8]).unwrap(),
            Some(("d".into(), [1; 32]))
        );
        assert_eq!(s.device_for_key(&[7; 8]).unwrap(), None);
        assert_eq!(s.counts().unwrap(), [2, 2, 0, 0]);
        let pending = s.pending().unwrap();
        assert_eq!(pending[0], (("d".into(), 1), b"a".to_vec()));
    }

    #[test]
    fn rounds_publish_and_consume_atomically_and_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.current().unwrap(), None);
        s.add_version(&meta(1), b"one").unwrap();
        s.insert_update("d", 1, b"a").unwrap();
        s.insert_update("d", 2, b"b").unwrap();
        s.insert_update("d", 3, b"c").unwrap();
        let round = RoundRecord {
            round: 1,
            updates: 1,
            set_aside: 1,
            published: Some(2),
            gate: "passed".into(),
            finished_unix: 2,
        };
        let aside = [(("d".to_owned(), 3), "bad".to_owned())];
        s.finish_round(
            Some((&meta(2), b"two", b"{}")),
            &round,
            &[("d".into(), 1)],
            &aside,
        )
        .unwrap();
        assert_eq!(s.current().unwrap().unwrap().version, 2);
        assert_eq!(s.counts().unwrap(), [3, 1, 2, 1]);
        assert_eq!(s.set_aside().unwrap(), aside);
        assert_eq!(s.rounds().unwrap(), [round]);
        assert_eq!(s.version_bytes(2).unwrap().unwrap(), b"two");
        assert_eq!((s.last_version().unwrap(), s.last_round().unwrap()), (2, 1));
        let marker = Rollback {
            to: 1,
            to_hash: meta(1).hash,
            from: 2,
            signature: String::new(),
        };
        assert!(s.set_current(1, &marker).unwrap());
        assert!(!s.set_current(9, &marker).unwrap());
        assert_eq!(s.current().unwrap().unwrap().version, 1);
        assert_eq!(s.rollback_marker().unwrap(), Some(marker));
        s.add_version(&meta(3), b"three").unwrap();
        assert_eq!(s.rollback_marker().unwrap(), None, "publishing ends it");
        assert_eq!(s.versions().unwrap().len(), 3);
    }
}
