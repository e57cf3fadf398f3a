//! Refinement checkpoints: everything a session needs to continue bit for bit (trainable
//! values, optimizer moments, where it stopped, the labels it was given, its history), written
//! atomically (temporary file, fsync, rename) so a crash leaves the old or the new checkpoint,
//! never half of one. The file ends with a SHA-256 of everything before it.
//!
//! Layout (little-endian): magic `PUPILCKP`, u32 version, then fields in order, each vector
//! as a u64 length and its elements, strings as u64 length and UTF-8 bytes, then the hash.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::optim::OptimizerState;

const MAGIC: &[u8; 8] = b"PUPILCKP";
const VERSION: u32 = 1;
/// No vector in a checkpoint may declare more elements than this (1 G), so a corrupt length
/// cannot ask for absurd memory.
const MAX_LEN: u64 = 1 << 30;

/// A session's state between steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Content hash of the model file the session started from.
    pub base: [u8; 32],
    /// Rounds completed.
    pub round: u32,
    /// Optimizer steps completed in the current round.
    pub step: u32,
    /// Trainable values (the store's flat trainable range).
    pub values: Vec<f32>,
    /// Optimizer state.
    pub optimizer: OptimizerState,
    /// Labels given by the oracle so far: (local index, class).
    pub labels: Vec<(u32, u32)>,
    /// The current round's training list: (local index, class).
    pub selection: Vec<(u32, u32)>,
    /// Trainable values and optimizer state when the current round started (for rollback).
    pub start: Option<(Vec<f32>, OptimizerState)>,
    /// The session's report so far (JSON).
    pub history: String,
}

impl Checkpoint {
    /// Serialise, hash included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.base);
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.step.to_le_bytes());
        put_f32s(&mut out, &self.values);
        put_state(&mut out, &self.optimizer);
        put_pairs(&mut out, &self.labels);
        put_pairs(&mut out, &self.selection);
        out.push(u8::from(self.start.is_some()));
        if let Some((values, state)) = &self.start {
            put_f32s(&mut out, values);
            put_state(&mut out, state);
        }
        out.extend_from_slice(&(self.history.len() as u64).to_le_bytes());
        out.extend_from_slice(self.history.as_bytes());
        let hash = Sha256::digest(&out);
        out.extend_from_slice(&hash);
        out
    }

    /// Parse and verify (magic, version, lengths, hash).
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "checkpoint is unusable: {why}; delete it to start over"
            ))
        };
        if bytes.len() < MAGIC.len() + 4 + 32 || &bytes[..8] != MAGIC {
            return Err(bad("not a pupil checkpoint"));
        }
        let (body, hash) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != hash {
            return Err(bad("its hash does not match (truncated or corrupted)"));
        }
        let mut r = Reader { bytes: body, at: 8 };
        let version = r.u32()?;
        if version != VERSION {
            return Err(bad(&format!(
                "version {version}, this build reads {VERSION}"
            )));
        }
        let base = r.take(32)?.try_into().map_err(|_| bad("short base hash"))?;
        let round = r.u32()?;
        let step = r.u32()?;
        let values = r.f32s()?;
        let optimizer = r.state()?;
        let labels = r.pairs()?;
        let selection = r.pairs()?;
        let start = match r.take(1)?[0] {
            0 => None,
            _ => Some((r.f32s()?, r.state()?)),
        };
        let len = r.len(1)?;
        let history =
            String::from_utf8(r.take(len)?.to_vec()).map_err(|_| bad("history is not UTF-8"))?;
        if r.at != body.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Checkpoint {
            base,
            round,
            step,
            values,
            optimizer,
            labels,
            selection,
            start,
            history,
        })
    }

    /// Write atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        Ok(crate::format::write_atomic(path, &self.to_bytes())?)
    }

    /// Read `path`; `Ok(None)` when there is no checkpoint yet.
    pub fn load(path: &Path) -> Result<Option<Checkpoint>> {
        match std::fs::read(path) {
            Ok(bytes) => Checkpoint::from_bytes(&bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn put_state(out: &mut Vec<u8>, s: &OptimizerState) {
    out.extend_from_slice(&s.steps.to_le_bytes());
    put_f32s(out, &s.m);
    out.push(u8::from(s.v.is_some()));
    put_f32s(out, s.v.as_deref().unwrap_or(&[]));
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(u32, u32)]) {
    out.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
    for (a, b) in pairs {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                Error::Invalid(
                    "checkpoint is unusable: it ends early; delete it to start over".into(),
                )
            })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    /// A length of elements of `size` bytes each, checked against what is left.
    fn len(&mut self, size: usize) -> Result<usize> {
        let n = u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default());
        let left = (self.bytes.len() - self.at) as u64;
        if n > MAX_LEN || n * size as u64 > left {
            return Err(Error::Invalid(format!(
                "checkpoint is unusable: declares {n} elements with {left} bytes left; delete it to start over"
            )));
        }
        Ok(n as usize)
    }

    fn state(&mut self) -> Result<OptimizerState> {
        let steps = self.u32()?;
        let m = self.f32s()?;
        let has_v = self.take(1)?[0] == 1;
        let v = self.f32s()?;
        Ok(OptimizerState {
            steps,
            m,
            v: has_v.then_some(v),
        })
    }

    fn pairs(&mut self) -> Result<Vec<(u32, u32)>> {
        let n = self.len(8)?;
        (0..n).map(|_| Ok((self.u32()?, self.u32()?))).collect()
    }

    fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.len(4)?;
        Ok(self
            .take(n * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            base: [7; 32],
            round: 2,
            step: 13,
            values: vec![1.0, -2.5, f32::MIN_POSITIVE],
            optimizer: OptimizerState {
                steps: 40,
                m: vec![0.1, 0.2, 0.3],
                v: Some(vec![0.01, 0.02, 0.03]),
            },
            labels: vec![(5, 3), (17, 9)],
            selection: vec![(1, 2)],
            start: Some((
                vec![0.5; 3],
                OptimizerState {
                    steps: 30,
                    m: vec![0.0; 3],
                    v: None,
                },
            )),
            history: "[{\"round\":1}]".into(),
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt");
        assert_eq!(Checkpoint::load(&path).unwrap(), None);
        sample().save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(sample()));
        let mut sgd = sample();
        sgd.optimizer.v = None;
        assert_eq!(Checkpoint::from_bytes(&sgd.to_bytes()).unwrap(), sgd);
    }

    #[test]
    fn damage_is_refused() {
        let bytes = sample().to_bytes();
        for cut in [0, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                Checkpoint::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(Checkpoint::from_bytes(&b).is_err(), "flip at {i}");
        }
    }
}
