//! The content hash: SHA-256 over every byte of the file except the hash itself.

use core::fmt;

use sha2::{Digest, Sha256};

use crate::{FormatError, HASH_LEN, HEADER_LEN};

/// Where the content hash ends in the file.
const HASH_END: usize = HEADER_LEN + HASH_LEN;

/// The content hash of `file`: SHA-256 of `file[0..32]` followed by `file[64..]`.
pub fn content_hash(file: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(file.get(..HEADER_LEN).unwrap_or(file));
    hasher.update(file.get(HASH_END..).unwrap_or_default());
    hasher.finalize().into()
}

/// Computes the content hash of `file` and stores it at bytes 32..64.
pub fn seal(file: &mut [u8]) -> Result<[u8; 32], FormatError> {
    let hash = content_hash(file);
    let len = file.len() as u64;
    let slot = file
        .get_mut(HEADER_LEN..HASH_END)
        .ok_or(FormatError::TooShort { len })?;
    slot.copy_from_slice(&hash);
    Ok(hash)
}

/// Lower-case hexadecimal display of bytes, e.g. a content hash.
#[derive(Clone, Copy, Debug)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
