//! Applying a delta to the local base file, every range checked.

use pupil_wire::content_hash;

use super::{
    take_varint, DeltaError, DELTA_HEADER_LEN, DELTA_MAGIC, DELTA_VERSION, OP_COPY, OP_LITERAL,
    OP_XOR,
};
use crate::hex;

/// A cursor over the delta's operations that checks every read and write.
struct Reader<'a> {
    delta: &'a [u8],
    base: &'a [u8],
    at: usize,
    /// Where the current operation started, for errors.
    op: usize,
    out: Vec<u8>,
    target_len: usize,
}

impl<'a> Reader<'a> {
    /// The error for the current operation.
    fn bad(&self, what: &'static str) -> DeltaError {
        DeltaError::BadOp { at: self.op, what }
    }

    /// The next varint as a `usize`.
    fn varint(&mut self) -> Result<usize, DeltaError> {
        take_varint(self.delta, &mut self.at)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or(DeltaError::Truncated { what: "a varint" })
    }

    /// The next `n` bytes of the delta.
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DeltaError> {
        let b = self
            .at
            .checked_add(n)
            .and_then(|end| self.delta.get(self.at..end))
            .ok_or(DeltaError::Truncated {
                what: "literal bytes",
            })?;
        self.at += n;
        Ok(b)
    }

    /// `base[offset..offset + n]`, refusing a range outside the base or an
    /// output growing past the target length.
    fn base_range(&self, offset: usize, n: usize) -> Result<&'a [u8], DeltaError> {
        self.room(n)?;
        offset
            .checked_add(n)
            .and_then(|end| self.base.get(offset..end))
            .ok_or_else(|| self.bad("a range outside the base model"))
    }

    /// Refuses `n` more output bytes past the target length.
    fn room(&self, n: usize) -> Result<(), DeltaError> {
        if n > self.target_len - self.out.len() {
            return Err(self.bad("output past the target length"));
        }
        Ok(())
    }

    /// Applies one XOR operation's pairs over `src`.
    fn xor(&mut self, src: &[u8]) -> Result<(), DeltaError> {
        let mut done = 0;
        while done < src.len() {
            let zeros = self.varint()?;
            let k = self.varint()?;
            let covered = zeros.checked_add(k).filter(|&c| c > 0);
            let Some(end) = covered.and_then(|c| done.checked_add(c)) else {
                return Err(self.bad("an empty XOR pair"));
            };
            if end > src.len() {
                return Err(self.bad("XOR pairs past the operation's length"));
            }
            let lit = self.bytes(k)?;
            self.out.extend_from_slice(&src[done..done + zeros]);
            self.out
                .extend(src[done + zeros..end].iter().zip(lit).map(|(a, b)| a ^ b));
            done = end;
        }
        Ok(())
    }
}

/// The `N` header bytes at `at`; `header` is [`DELTA_HEADER_LEN`] long, so they exist.
fn field<const N: usize>(header: &[u8], at: usize) -> [u8; N] {
    header
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; N])
}

/// Rebuilds the target file from `base` and `delta`, refusing a delta for
/// another base, one declaring more than `max_len` bytes, any range out of
/// bounds, and an output without the declared length and content hash.
pub fn apply(base: &[u8], delta: &[u8], max_len: u64) -> Result<Vec<u8>, DeltaError> {
    let header = delta
        .get(..DELTA_HEADER_LEN)
        .ok_or(DeltaError::Truncated { what: "the header" })?;
    if header[..8] != DELTA_MAGIC {
        return Err(DeltaError::BadMagic);
    }
    let version = u32::from_le_bytes(field(header, 8));
    if version != DELTA_VERSION {
        return Err(DeltaError::UnsupportedVersion { found: version });
    }
    let (base_hash, target_hash): ([u8; 32], [u8; 32]) = (field(header, 12), field(header, 44));
    let target_len = u64::from_le_bytes(field(header, 76));
    let local = content_hash(base);
    if base_hash != local {
        return Err(DeltaError::WrongBase {
            expected: hex::encode(&base_hash),
            local: hex::encode(&local),
        });
    }
    let too_large = DeltaError::TooLarge {
        len: target_len,
        max: max_len,
    };
    if target_len > max_len {
        return Err(too_large);
    }
    let target_len = usize::try_from(target_len).map_err(|_| too_large)?;
    let mut r = Reader {
        delta,
        base,
        at: DELTA_HEADER_LEN,
        op: DELTA_HEADER_LEN,
        out: Vec::new(),
        target_len,
    };
    while r.at < delta.len() {
        r.op = r.at;
        let tag = delta[r.at];
        r.at += 1;
        match tag {
            OP_LITERAL => {
                let n = r.varint()?;
                r.room(n)?;
                let lit = r.bytes(n)?;
                r.out.extend_from_slice(lit);
            }
            OP_COPY => {
                let (offset, n) = (r.varint()?, r.varint()?);
                let src = r.base_range(offset, n)?;
                r.out.extend_from_slice(src);
            }
            OP_XOR => {
                let (offset, n) = (r.varint()?, r.varint()?);
                let src = r.base_range(offset, n)?;
                r.xor(src)?;
            }
            _ => return Err(r.bad("an unknown operation")),
        }
    }
    if r.out.len() != target_len {
        return Err(DeltaError::LengthMismatch {
            len: r.out.len() as u64,
            expected: target_len as u64,
        });
    }
    let computed = content_hash(&r.out);
    if computed != target_hash {
        return Err(DeltaError::HashMismatch {
            expected: hex::encode(&target_hash),
            computed: hex::encode(&computed),
        });
    }
    Ok(r.out)
}
