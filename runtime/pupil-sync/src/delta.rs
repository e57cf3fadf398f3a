//! Model deltas: a published version's file rebuilt losslessly from an older
//! version's file, so a device downloads only what changed.
//!
//! # Format (version 1)
//!
//! | size | field                                                    |
//! |------|----------------------------------------------------------|
//! | 8    | magic `PUPILDLT`                                         |
//! | 4    | format version, `u32` little-endian (= 1)                |
//! | 32   | base: content hash of the file the delta applies to      |
//! | 32   | target: content hash of the file it rebuilds             |
//! | 8    | target length in bytes, `u64` little-endian              |
//! | ...  | operations, up to the end                                |
//!
//! Each operation appends to the output:
//!
//! - `0` literal: varint `n`, then `n` bytes, copied;
//! - `1` copy: varint base offset `o`, varint `n`: `base[o..o + n]`;
//! - `2` xor: varint base offset `o`, varint `n`, then pairs covering exactly
//!   `n` bytes, each a varint `z`, a varint `k` and `k` bytes: `z` bytes copied
//!   from the base, then `k` base bytes each XORed with the given byte. A pair
//!   covers at least one byte.
//!
//! Varints are unsigned LEB128 (7 bits a byte, least significant first, at most
//! 10 bytes). The output must have exactly the target length and the target
//! content hash; the device then checks that hash against the version's
//! metadata and the server's signature of it, as for a full download.
//!
//! The server encodes tensor by tensor ([`encode`]): a tensor of the target
//! whose name and byte length match one of the base is a copy when unchanged
//! and an XOR when that is smaller than its bytes (a changed head, a merged
//! LoRA); everything else (header, manifest, padding, new tensors) is literal.

mod apply;
mod encode;

pub use apply::apply;
pub use encode::encode;

use thiserror::Error;

/// The 8 bytes every delta starts with.
pub const DELTA_MAGIC: [u8; 8] = *b"PUPILDLT";
/// The delta format version this crate writes and reads.
pub const DELTA_VERSION: u32 = 1;
/// Length of the fixed header before the operations.
pub const DELTA_HEADER_LEN: usize = 8 + 4 + 32 + 32 + 8;

/// Operation tag: literal bytes.
const OP_LITERAL: u8 = 0;
/// Operation tag: a range of the base.
const OP_COPY: u8 = 1;
/// Operation tag: a range of the base XOR zero-run-coded bytes.
const OP_XOR: u8 = 2;

/// Why a delta cannot be made or applied. Each message says what to do; a
/// device falls back to downloading the full file.
#[derive(Debug, Error)]
pub enum DeltaError {
    /// A model given to [`encode`] is not a valid `.pupil` file.
    #[error("cannot diff a model that does not read: {0}")]
    NotAModel(pupil_wire::FormatError),
    /// The bytes do not start with `PUPILDLT`.
    #[error("not a model delta (bad magic); download the full model")]
    BadMagic,
    /// The delta format version is not one this crate reads.
    #[error("delta format version {found} is not supported (this build reads {DELTA_VERSION}); download the full model")]
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// The delta ends in the middle of a field.
    #[error("the delta is truncated in {what}; download the full model")]
    Truncated {
        /// Which field.
        what: &'static str,
    },
    /// The delta is for another base file than the one given.
    #[error("the delta applies to model {expected} but the local model is {local}; download the full model")]
    WrongBase {
        /// The delta's base hash, hex.
        expected: String,
        /// The local model's hash, hex.
        local: String,
    },
    /// The declared target is larger than allowed.
    #[error(
        "the delta rebuilds {len} bytes, more than the {max} expected; download the full model"
    )]
    TooLarge {
        /// The declared target length.
        len: u64,
        /// The most allowed.
        max: u64,
    },
    /// An operation is malformed: unknown tag, a range outside the base, an
    /// output past the target length, or an empty XOR pair.
    #[error("the delta's operation at byte {at} is invalid ({what}); download the full model")]
    BadOp {
        /// The operation's offset in the delta.
        at: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The output's length differs from the declared target length.
    #[error("the delta rebuilt {len} bytes but declares {expected}; download the full model")]
    LengthMismatch {
        /// Bytes rebuilt.
        len: u64,
        /// Bytes declared.
        expected: u64,
    },
    /// The output does not have the declared content hash.
    #[error("the rebuilt model has content hash {computed}, not the delta's {expected}; download the full model")]
    HashMismatch {
        /// The declared target hash, hex.
        expected: String,
        /// The rebuilt file's hash, hex.
        computed: String,
    },
}

/// Appends `v` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 varint at `*at`, advancing it; `None` when
/// truncated or longer than a `u64`.
fn take_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            return None;
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests;
