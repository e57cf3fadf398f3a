//! The device's durable outbox: one file per signed update, written
//! atomically (write, fsync, rename, fsync the directory), removed only after
//! the server acknowledged it; one it refused for good waits in `rejected/` until
//! [`Outbox::requeue`] moves it back. Sequence numbers come from a counter file that
//! is advanced durably before the update using it is written, so a number is
//! never reused, even across crashes.

use std::fs;
use std::path::{Path, PathBuf};

use pupil_wire::{Envelope, UpdateError};

use crate::error::{io_err, SyncError};
use crate::fsutil;
use crate::keys::KeyPair;

/// The counter file's name.
const NEXT_SEQ: &str = "next_seq";
/// Extension of queued updates.
const EXT: &str = "update";
/// Subdirectory of updates the server refused for good.
const REJECTED: &str = "rejected";

/// Signs `body` with `key` into an update envelope.
pub fn sign_envelope(key: &KeyPair, body: &[u8]) -> Result<Vec<u8>, SyncError> {
    Ok(Envelope {
        body,
        signature: key.sign(body),
        key_id: key.key_id(),
    }
    .to_bytes()?)
}

/// A directory of signed updates waiting for upload.
#[derive(Clone, Debug)]
pub struct Outbox {
    dir: PathBuf,
}

/// What the outbox holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Sequence numbers waiting for upload, ascending.
    pub queued: Vec<u64>,
    /// Sequence numbers the server refused for good.
    pub rejected: Vec<u64>,
    /// The sequence number the next update gets.
    pub next_seq: u64,
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`.
    pub fn open(dir: &Path) -> Result<Self, SyncError> {
        fs::create_dir_all(dir.join(REJECTED)).map_err(io_err("create directory", dir))?;
        Ok(Outbox {
            dir: dir.to_path_buf(),
        })
    }

    /// The outbox's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number the next update gets (1 for a new outbox).
    pub fn next_seq(&self) -> Result<u64, SyncError> {
        let path = self.dir.join(NEXT_SEQ);
        match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| SyncError::Corrupt {
                what: path.display().to_string(),
                detail: format!("{s:?} is not a sequence number"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(1),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Reserves the next sequence number, builds the update body for it with
    /// `build`, signs it with `key` and queues it durably; returns the number.
    pub fn enqueue(
        &self,
        key: &KeyPair,
        build: impl FnOnce(u64) -> Result<Vec<u8>, UpdateError>,
    ) -> Result<u64, SyncError> {
        let seq = self.next_seq()?;
        fsutil::write_atomic(
            &self.dir.join(NEXT_SEQ),
            (seq + 1).to_string().as_bytes(),
            0o600,
        )?;
        let envelope = sign_envelope(key, &build(seq)?)?;
        fsutil::write_atomic(&self.path(seq), &envelope, 0o600)?;
        Ok(seq)
    }

    /// The file of update `seq`.
    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.{EXT}"))
    }

    /// The sequence numbers of the update files in `dir`, ascending.
    fn list(dir: &Path) -> Result<Vec<u64>, SyncError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let name = entry.map_err(io_err("list", dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(&format!(".{EXT}"))
                .and_then(|s| s.parse().ok())
            {
                out.push(seq);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The queued updates' sequence numbers, ascending.
    pub fn queued(&self) -> Result<Vec<u64>, SyncError> {
        Self::list(&self.dir)
    }

    /// The signed bytes of queued update `seq`.
    pub fn read(&self, seq: u64) -> Result<Vec<u8>, SyncError> {
        let path = self.path(seq);
        fs::read(&path).map_err(io_err("read", &path))
    }

    /// Removes update `seq` after the server acknowledged it.
    pub fn remove(&self, seq: u64) -> Result<(), SyncError> {
        let path = self.path(seq);
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        fsutil::sync_dir(&self.dir)
    }

    /// Moves update `seq` aside after the server refused it for good.
    pub fn reject(&self, seq: u64) -> Result<(), SyncError> {
        let from = self.path(seq);
        let to = self.dir.join(REJECTED).join(format!("{seq:020}.{EXT}"));
        fs::rename(&from, &to).map_err(io_err("move aside", &from))?;
        fsutil::sync_dir(&self.dir)
    }

    /// Moves rejected updates `seqs` (every rejected one when `seqs` is
    /// empty) back into the queue, to be pushed again once the cause is
    /// fixed; returns their numbers, ascending.
    pub fn requeue(&self, seqs: &[u64]) -> Result<Vec<u64>, SyncError> {
        let rejected_dir = self.dir.join(REJECTED);
        let rejected = Self::list(&rejected_dir)?;
        let mut moving = if seqs.is_empty() {
            rejected.clone()
        } else {
            seqs.to_vec()
        };
        moving.sort_unstable();
        moving.dedup();
        if let Some(missing) = moving.iter().find(|s| !rejected.contains(s)) {
            return Err(SyncError::InvalidArgument(format!(
                "update {missing} is not among the rejected ones ({rejected:?}); see `pupil sync status`"
            )));
        }
        for &seq in &moving {
            let from = rejected_dir.join(format!("{seq:020}.{EXT}"));
            let to = self.path(seq);
            if to.exists() {
                return Err(SyncError::InvalidArgument(format!(
                    "update {seq} is queued already as {}; remove one of the two copies",
                    to.display()
                )));
            }
            fs::rename(&from, &to).map_err(io_err("move back", &from))?;
        }
        fsutil::sync_dir(&rejected_dir)?;
        fsutil::sync_dir(&self.dir)?;
        Ok(moving)
    }

    /// What the outbox holds.
    pub fn status(&self) -> Result<OutboxStatus, SyncError> {
        Ok(OutboxStatus {
            queued: self.queued()?,
            rejected: Self::list(&self.dir.join(REJECTED))?,
            next_seq: self.next_seq()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_survives_reopening_and_never_reuses_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::from_seed([4; 32]);
        let a = Outbox::open(dir.path()).unwrap();
        assert_eq!(a.enqueue(&key, |seq| Ok(vec![seq as u8])).unwrap(), 1);
        assert_eq!(a.enqueue(&key, |seq| Ok(vec![seq as u8])).unwrap(), 2);
        a.remove(1).unwrap();
        let b = Outbox::open(dir.path()).unwrap();
        assert_eq!(b.queued().unwrap(), [2]);
        assert_eq!(b.enqueue(&key, |seq| Ok(vec![seq as u8])).unwrap(), 3);
        b.reject(2).unwrap();
        let status = b.status().unwrap();
        assert_eq!(
            status,
            OutboxStatus {
                queued: vec![3],
                rejected: vec![2],
                next_seq: 4
            }
        );
        assert_eq!(b.requeue(&[]).unwrap(), [2]);
        assert_eq!(b.queued().unwrap(), [2, 3]);
        b.reject(2).unwrap();
        b.reject(3).unwrap();
        assert!(b.requeue(&[4]).is_err(), "4 was never rejected");
        assert_eq!(b.requeue(&[3, 3]).unwrap(), [3]);
        assert_eq!(b.status().unwrap().rejected, [2]);
        b.requeue(&[2]).unwrap();
        assert!(b.status().unwrap().rejected.is_empty());
        let env = b.read(3).unwrap();
        let parsed = Envelope::parse(&env).unwrap();
        assert_eq!(parsed.body, [3]);
        assert!(crate::keys::verify(
            &key.public(),
            parsed.body,
            &parsed.signature
        ));
    }

    #[test]
    fn a_failed_build_consumes_its_number_but_queues_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::from_seed([4; 32]);
        let o = Outbox::open(dir.path()).unwrap();
        assert!(o.enqueue(&key, |_| Err(UpdateError::BadMagic)).is_err());
        assert_eq!(o.status().unwrap().queued, Vec::<u64>::new());
        assert_eq!(o.enqueue(&key, |seq| Ok(vec![seq as u8])).unwrap(), 2);
    }
}
