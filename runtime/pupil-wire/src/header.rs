//! The fixed 32-byte file header.

use crate::{FormatError, ALIGN, FORMAT_VERSION, HASH_LEN, HEADER_LEN, MAGIC, MAX_MANIFEST_LEN};

/// The decoded file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version, [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Header flags; none is defined.
    pub flags: u32,
    /// Manifest length in bytes, content hash included.
    pub manifest_len: u32,
    /// Tensor data length in bytes.
    pub data_len: u64,
}

/// Reads the little-endian `u32` at `at` of the header.
fn u32_at(h: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&h[at..at + 4]);
    u32::from_le_bytes(b)
}

impl Header {
    /// A version-1 header for a manifest and data section of the given lengths.
    pub const fn new(manifest_len: u32, data_len: u64) -> Header {
        Header {
            format_version: FORMAT_VERSION,
            flags: 0,
            manifest_len,
            data_len,
        }
    }

    /// Decodes and checks the header at the start of `file`: magic, version,
    /// flags, reserved field and the manifest length limits. Lengths are not
    /// compared with the file here.
    pub fn parse(file: &[u8]) -> Result<Header, FormatError> {
        let len = file.len() as u64;
        let h: &[u8; HEADER_LEN] = file.first_chunk().ok_or(FormatError::TooShort { len })?;
        let (magic, _) = h
            .split_first_chunk::<8>()
            .ok_or(FormatError::TooShort { len })?;
        if *magic != MAGIC {
            return Err(FormatError::BadMagic { found: *magic });
        }
        let format_version = u32_at(h, 8);
        if format_version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: format_version,
            });
        }
        let flags = u32_at(h, 12);
        if flags != 0 {
            return Err(FormatError::UnsupportedFlags { flags });
        }
        let manifest_len = u32_at(h, 16);
        let reserved = u32_at(h, 20);
        if reserved != 0 {
            return Err(FormatError::ReservedNotZero { value: reserved });
        }
        if manifest_len > MAX_MANIFEST_LEN {
            return Err(FormatError::ManifestTooLarge {
                len: manifest_len.into(),
            });
        }
        if (manifest_len as usize) < HASH_LEN {
            return Err(FormatError::ManifestTooSmall { len: manifest_len });
        }
        let mut data_len = [0u8; 8];
        data_len.copy_from_slice(&h[24..32]);
        Ok(Header {
            format_version,
            flags,
            manifest_len,
            data_len: u64::from_le_bytes(data_len),
        })
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        h[12..16].copy_from_slice(&self.flags.to_le_bytes());
        h[16..20].copy_from_slice(&self.manifest_len.to_le_bytes());
        h[24..32].copy_from_slice(&self.data_len.to_le_bytes());
        h
    }

    /// Where the data section starts: after header and manifest, rounded up to
    /// a multiple of [`ALIGN`].
    pub const fn data_start(&self) -> u64 {
        // The manifest length is a u32, so this cannot overflow.
        (HEADER_LEN as u64 + self.manifest_len as u64).next_multiple_of(ALIGN)
    }
}
