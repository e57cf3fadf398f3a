//! Resumable uploads in the store: an upload's metadata and its chunks, each
//! acknowledged chunk one committed transaction, so after a crash the server
//! still holds every byte it acknowledged and a device continues from there.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{from_json, insert_in, to_json, Insert, Store};
use crate::error::{db, SyncError};

/// Upload id → [`UploadMeta`] as JSON.
const UPLOADS: TableDefinition<&[u8], &str> = TableDefinition::new("uploads");
/// (device id, sequence number) → upload id: one upload per update.
const UPLOAD_KEYS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("upload_keys");
/// (upload id, offset) → the chunk's bytes.
const UPLOAD_CHUNKS: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("upload_chunks");

/// Length of an upload id in bytes.
pub const UPLOAD_ID_LEN: usize = 16;

/// An upload id: 16 random bytes.
pub type UploadId = [u8; UPLOAD_ID_LEN];

/// An upload in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadMeta {
    /// The device that opened it.
    pub device: String,
    /// The sequence number of the update it carries.
    pub seq: u64,
    /// The update's declared length in bytes.
    pub length: u64,
    /// The declared SHA-256 of the whole update, hex.
    pub sha256: String,
    /// Bytes held so far: the chunks are contiguous from 0.
    pub received: u64,
    /// Chunks held so far.
    pub chunks: u64,
    /// Seconds since the Unix epoch when it was opened.
    pub created_unix: u64,
    /// Seconds since the Unix epoch when it last received a chunk (0: none yet).
    #[serde(default)]
    pub touched_unix: u64,
}

impl UploadMeta {
    /// When it was last active: opened or sent a chunk.
    pub fn active_unix(&self) -> u64 {
        self.created_unix.max(self.touched_unix)
    }
}

/// The outcome of opening an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadOpen {
    /// A new, empty upload with this id.
    Created(UploadId),
    /// The device already has an upload of this update with the same length
    /// and hash: continue it.
    Existing(UploadId, UploadMeta),
    /// The device has an upload of this sequence number with another length or hash.
    Conflict(UploadMeta),
    /// The device has as many uploads open as allowed.
    TooMany,
    /// The open uploads declare as many bytes together as allowed.
    StoreFull {
        /// Bytes the open uploads declare.
        open_bytes: u64,
    },
}

/// The outcome of appending a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Append {
    /// Stored; the upload now holds `received` bytes.
    Appended(UploadMeta),
    /// No such upload (never opened, committed, or expired).
    NoSuchUpload,
    /// The upload belongs to another device.
    NotYours,
    /// The chunk starts before the bytes held end.
    Overlap {
        /// Bytes held.
        held: u64,
    },
    /// The chunk starts after the bytes held end.
    Gap {
        /// Bytes held.
        held: u64,
    },
    /// The chunk ends past the declared length.
    Beyond {
        /// The declared length.
        length: u64,
    },
    /// The upload holds as many chunks as allowed.
    TooManyChunks,
}

/// Opens the upload tables in `tx` (creating them).
pub(super) fn create_tables(tx: &WriteTransaction) -> Result<(), SyncError> {
    tx.open_table(UPLOADS).map_err(db)?;
    tx.open_table(UPLOAD_KEYS).map_err(db)?;
    tx.open_table(UPLOAD_CHUNKS).map_err(db)?;
    Ok(())
}

/// Reads upload `id`'s metadata within a table.
fn get_meta(
    table: &impl ReadableTable<&'static [u8], &'static str>,
    id: &[u8],
) -> Result<Option<UploadMeta>, SyncError> {
    let json = table.get(id).map_err(db)?.map(|v| v.value().to_owned());
    json.map(|j| from_json(format!("upload {}", crate::hex::encode(id)), &j))
        .transpose()
}

/// The bytes every open upload declares, together.
fn open_bytes(uploads: &impl ReadableTable<&'static [u8], &'static str>) -> Result<u64, SyncError> {
    let mut total = 0u64;
    for item in uploads.iter().map_err(db)? {
        let (k, v) = item.map_err(db)?;
        let meta: UploadMeta = from_json(
            format!("upload {}", crate::hex::encode(k.value())),
            v.value(),
        )?;
        total = total.saturating_add(meta.length);
    }
    Ok(total)
}

/// Removes upload `id` and its chunks within `tx`; false when there is none.
fn remove_in(tx: &WriteTransaction, id: &[u8]) -> Result<bool, SyncError> {
    let mut uploads = tx.open_table(UPLOADS).map_err(db)?;
    let Some(meta) = get_meta(&uploads, id)? else {
        return Ok(false);
    };
    uploads.remove(id).map_err(db)?;
    tx.open_table(UPLOAD_KEYS)
        .map_err(db)?
        .remove((meta.device.as_str(), meta.seq))
        .map_err(db)?;
    let mut chunks = tx.open_table(UPLOAD_CHUNKS).map_err(db)?;
    let offsets: Vec<u64> = chunks
        .range((id, 0)..=(id, u64::MAX))
        .map_err(db)?
        .map(|item| item.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()
        .map_err(db)?;
    for offset in offsets {
        chunks.remove((id, offset)).map_err(db)?;
    }
    Ok(true)
}

impl Store {
    /// Opens upload `id` described by `meta` (nothing received), unless the
    /// device has an upload of the same sequence number already, or
    /// `max_per_device` uploads open, or the open uploads would declare more than
    /// `max_total_bytes` together.
    pub fn open_upload(
        &self,
        id: &UploadId,
        meta: &UploadMeta,
        max_per_device: u64,
        max_total_bytes: u64,
    ) -> Result<UploadOpen, SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        let outcome = {
            let mut keys = tx.open_table(UPLOAD_KEYS).map_err(db)?;
            let mut uploads = tx.open_table(UPLOADS).map_err(db)?;
            let existing = keys
                .get((meta.device.as_str(), meta.seq))
                .map_err(db)?
                .map(|v| v.value().to_vec());
            let open = keys
                .range((meta.device.as_str(), 0)..=(meta.device.as_str(), u64::MAX))
                .map_err(db)?
                .count() as u64;
            match existing {
                Some(old_id) => {
                    let old = get_meta(&uploads, &old_id)?.ok_or_else(|| SyncError::Corrupt {
                        what: format!("upload of {:?} {}", meta.device, meta.seq),
                        detail: "its index entry has no upload".into(),
                    })?;
                    match <UploadId>::try_from(old_id.as_slice()) {
                        Ok(old_id) if old.length == meta.length && old.sha256 == meta.sha256 => {
                            UploadOpen::Existing(old_id, old)
                        }
                        _ => UploadOpen::Conflict(old),
                    }
                }
                None if open >= max_per_device => UploadOpen::TooMany,
                None => {
                    let open_bytes = open_bytes(&uploads)?;
                    if open_bytes.saturating_add(meta.length) > max_total_bytes {
                        UploadOpen::StoreFull { open_bytes }
                    } else {
                        uploads
                            .insert(id.as_slice(), to_json(meta).as_str())
                            .map_err(db)?;
                        keys.insert((meta.device.as_str(), meta.seq), id.as_slice())
                            .map_err(db)?;
                        UploadOpen::Created(*id)
                    }
                }
            }
        };
        tx.commit().map_err(db)?;
        Ok(outcome)
    }

    /// Upload `id`'s metadata.
    pub fn upload(&self, id: &UploadId) -> Result<Option<UploadMeta>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        get_meta(&tx.open_table(UPLOADS).map_err(db)?, id)
    }

    /// Every upload in progress with its id.
    pub fn uploads(&self) -> Result<Vec<(UploadId, UploadMeta)>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(UPLOADS).map_err(db)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let id = crate::hex::encode(k.value());
            let key = <UploadId>::try_from(k.value()).map_err(|_| SyncError::Corrupt {
                what: format!("upload {id}"),
                detail: "its id is not 16 bytes".into(),
            })?;
            out.push((key, from_json(format!("upload {id}"), v.value())?));
        }
        Ok(out)
    }

    /// Appends chunk `bytes` at `offset` to `device`'s upload `id` and commits
    /// it, unless it is not contiguous with the bytes held, runs past the
    /// declared length, or the upload holds `max_chunks` chunks.
    pub fn append_chunk(
        &self,
        id: &UploadId,
        device: &str,
        offset: u64,
        bytes: &[u8],
        max_chunks: u64,
    ) -> Result<Append, SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        let outcome = {
            let mut uploads = tx.open_table(UPLOADS).map_err(db)?;
            match get_meta(&uploads, id)? {
                None => Append::NoSuchUpload,
                Some(meta) if meta.device != device => Append::NotYours,
                Some(meta) if offset < meta.received => Append::Overlap {
                    held: meta.received,
                },
                Some(meta) if offset > meta.received => Append::Gap {
                    held: meta.received,
                },
                Some(meta)
                    if offset
                        .checked_add(bytes.len() as u64)
                        .is_none_or(|end| end > meta.length) =>
                {
                    Append::Beyond {
                        length: meta.length,
                    }
                }
                Some(meta) if meta.chunks >= max_chunks => Append::TooManyChunks,
                Some(mut meta) => {
                    tx.open_table(UPLOAD_CHUNKS)
                        .map_err(db)?
                        .insert((id.as_slice(), offset), bytes)
                        .map_err(db)?;
                    meta.received += bytes.len() as u64;
                    meta.chunks += 1;
                    meta.touched_unix = crate::protocol::unix_now();
                    uploads
                        .insert(id.as_slice(), to_json(&meta).as_str())
                        .map_err(db)?;
                    Append::Appended(meta)
                }
            }
        };
        tx.commit().map_err(db)?;
        Ok(outcome)
    }

    /// The bytes upload `id` holds, in order.
    pub fn upload_bytes(&self, id: &UploadId) -> Result<Option<Vec<u8>>, SyncError> {
        let tx = self.db.begin_read().map_err(db)?;
        let Some(meta) = get_meta(&tx.open_table(UPLOADS).map_err(db)?, id)? else {
            return Ok(None);
        };
        let chunks = tx.open_table(UPLOAD_CHUNKS).map_err(db)?;
        let mut out = Vec::with_capacity(usize::try_from(meta.received).unwrap_or(0));
        for item in chunks
            .range((id.as_slice(), 0)..=(id.as_slice(), u64::MAX))
            .map_err(db)?
        {
            let (k, v) = item.map_err(db)?;
            if k.value().1 != out.len() as u64 {
                return Err(SyncError::Corrupt {
                    what: format!("upload {}", crate::hex::encode(id)),
                    detail: format!("a chunk at {} follows {} bytes", k.value().1, out.len()),
                });
            }
            out.extend_from_slice(v.value());
        }
        Ok(Some(out))
    }

    /// Removes upload `id` and its chunks; false when there is none.
    pub fn remove_upload(&self, id: &UploadId) -> Result<bool, SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        let removed = remove_in(&tx, id)?;
        tx.commit().map_err(db)?;
        Ok(removed)
    }

    /// Stores update `(device, seq)`, assembled from upload `id`, like
    /// [`Store::insert_update`], and removes the upload in the same
    /// transaction when the update is stored or was stored before: a crash
    /// leaves either the upload or the update, never both.
    pub fn insert_uploaded_update(
        &self,
        id: &UploadId,
        device: &str,
        seq: u64,
        bytes: &[u8],
    ) -> Result<Insert, SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        let outcome = insert_in(&tx, device, seq, bytes)?;
        if outcome != Insert::Conflict {
            remove_in(&tx, id)?;
        }
        tx.commit().map_err(db)?;
        Ok(outcome)
    }

    /// Removes `device`'s upload of update `seq` and its chunks, if it has
    /// one (left behind when the update is stored already); false when there
    /// is none.
    pub fn remove_upload_of(&self, device: &str, seq: u64) -> Result<bool, SyncError> {
        let tx = self.db.begin_write().map_err(db)?;
        let id = tx
            .open_table(UPLOAD_KEYS)
            .map_err(db)?
            .get((device, seq))
            .map_err(db)?
            .map(|v| v.value().to_vec());
        let removed = match id {
            Some(id) => remove_in(&tx, &id)?,
            None => false,
        };
        tx.commit().map_err(db)?;
        Ok(removed)
    }

    /// Removes every upload opened at or before `opened_by` or last active at or
    /// before `idle_by` (seconds since the Unix epoch); returns how many.
    pub fn remove_stale_uploads(&self, opened_by: u64, idle_by: u64) -> Result<u64, SyncError> {
        let stale: Vec<UploadId> = self
            .uploads()?
            .into_iter()
            .filter(|(_, m)| m.created_unix <= opened_by || m.active_unix() <= idle_by)
            .map(|(id, _)| id)
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        let tx = self.db.begin_write().map_err(db)?;
        let mut removed = 0;
        for id in &stale {
            removed += u64::from(remove_in(&tx, id)?);
        }
        tx.commit().map_err(db)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(device: &str, seq: u64, length: u64) -> UploadMeta {
        UploadMeta {
            device: device.into(),
            seq,
            length,
            sha256: "ab".into(),
            received: 0,
            chunks: 0,
            created_unix: 100,
            touched_unix: 0,
        }
    }

    #[test]
    fn chunks_append_in_order_survive_reopening_and_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let id = [1u8; UPLOAD_ID_LEN];
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(
                s.open_upload(&id, &meta("d", 1, 6), 2, u64::MAX).unwrap(),
                UploadOpen::Created(id)
            );
            let app = |off, b: &[u8]| s.append_chunk(&id, "d", off, b, 3).unwrap();
            assert!(matches!(app(0, b"abc"), Append::Appended(m) if m.received == 3));
            assert_eq!(app(2, b"x"), Append::Overlap { held: 3 });
            assert_eq!(app(4, b"x"), Append::Gap { held: 3 });
            assert_eq!(app(3, b"xyzw"), Append::Beyond { length: 6 });
            assert_eq!(
                s.append_chunk(&id, "e", 3, b"x", 3).unwrap(),
                Append::NotYours
            );
            assert_eq!(
                s.append_chunk(&[2; UPLOAD_ID_LEN], "d", 0, b"x", 3)
                    .unwrap(),
                Append::NoSuchUpload
            );
            assert!(matches!(app(3, b"d"), Append::Appended(m) if m.received == 4));
        }
        let s = Store::open(dir.path()).unwrap();
        assert!(matches!(
            s.open_upload(&[3; UPLOAD_ID_LEN], &meta("d", 1, 6), 2, u64::MAX).unwrap(),
            UploadOpen::Existing(got, m) if got == id && m.received == 4
        ));
        assert!(matches!(
            s.open_upload(&[3; UPLOAD_ID_LEN], &meta("d", 1, 7), 2, u64::MAX)
                .unwrap(),
            UploadOpen::Conflict(_)
        ));
        assert!(matches!(
            s.append_chunk(&id, "d", 4, b"e", 3).unwrap(),
            Append::Appended(m) if m.received == 5
        ));
        assert_eq!(
            s.append_chunk(&id, "d", 5, b"f", 3).unwrap(),
            Append::TooManyChunks
        );
        assert_eq!(s.upload_bytes(&id).unwrap().unwrap(), b"abcde");
        let other = [4; UPLOAD_ID_LEN];
        assert_eq!(
            s.open_upload(&other, &meta("d", 2, 6), 2, u64::MAX)
                .unwrap(),
            UploadOpen::Created(other)
        );
        assert_eq!(
            s.open_upload(&[5; UPLOAD_ID_LEN], &meta("d", 3, 6), 2, u64::MAX)
                .unwrap(),
            UploadOpen::TooMany
        );
        assert!(s.remove_upload(&id).unwrap());
        assert!(!s.remove_upload(&id).unwrap());
        assert_eq!(s.upload_bytes(&id).unwrap(), None);
        assert_eq!(s.remove_stale_uploads(99, 0).unwrap(), 0);
        assert_eq!(s.remove_stale_uploads(100, 0).unwrap(), 1);
        assert!(s.uploads().unwrap().is_empty());
        // Removing frees the device's slots and the sequence numbers.
        assert_eq!(
            s.open_upload(&id, &meta("d", 1, 7), 2, u64::MAX).unwrap(),
            UploadOpen::Created(id)
        );
    }

    #[test]
    fn open_uploads_are_bounded_in_bytes_and_idle_ones_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (a, b, c) = (
            [1u8; UPLOAD_ID_LEN],
            [2u8; UPLOAD_ID_LEN],
            [3u8; UPLOAD_ID_LEN],
        );
        s.open_upload(&a, &meta("d", 1, 6), 4, 10).unwrap();
        assert_eq!(
            s.open_upload(&b, &meta("e", 1, 5), 4, 10).unwrap(),
            UploadOpen::StoreFull { open_bytes: 6 }
        );
        assert_eq!(
            s.open_upload(&b, &meta("e", 1, 4), 4, 10).unwrap(),
            UploadOpen::Created(b)
        );
        s.open_upload(&c, &meta("f", 1, 0), 4, 10).unwrap();
        // `a` sends a chunk now; `b` and `c` stay idle since they opened at 100.
        assert!(matches!(
            s.append_chunk(&a, "d", 0, b"ab", 8).unwrap(),
            Append::Appended(_)
        ));
        assert_eq!(s.remove_stale_uploads(0, 100).unwrap(), 2);
        let left: Vec<UploadId> = s.uploads().unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(left, [a]);
    }

    #[test]
    fn storing_an_uploaded_update_removes_its_upload_in_the_same_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (a, b) = ([1u8; UPLOAD_ID_LEN], [2u8; UPLOAD_ID_LEN]);
        s.open_upload(&a, &meta("d", 1, 3), 4, u64::MAX).unwrap();
        s.append_chunk(&a, "d", 0, b"abc", 4).unwrap();
        assert_eq!(
            s.insert_uploaded_update(&a, "d", 1, b"abc").unwrap(),
            Insert::Stored
        );
        assert_eq!(s.upload(&a).unwrap(), None);
        assert_eq!(s.get_update("d", 1).unwrap().unwrap(), b"abc");
        // A conflicting update keeps its upload for the caller to refuse.
        s.open_upload(&b, &meta("d", 1, 3), 4, u64::MAX).unwrap();
        assert_eq!(
            s.insert_uploaded_update(&b, "d", 1, b"xyz").unwrap(),
            Insert::Conflict
        );
        assert!(s.upload(&b).unwrap().is_some());
        // An upload left beside its stored update is collected by sequence number.
        assert!(s.remove_upload_of("d", 1).unwrap());
        assert!(!s.remove_upload_of("d", 1).unwrap());
        assert!(s.uploads().unwrap().is_empty());
    }
}
