//! Encoding a whole file into memory (needs an allocator).

use alloc::vec::Vec;

use crate::{seal, FormatError, Header, ModelInfo, TensorEntry, HASH_LEN};

/// Encodes a `.pupil` file from its parts verbatim and seals it with its
/// content hash. The parts are not checked (that is [`crate::ModelView::parse`]'s
/// job), so tools and tests can also write deliberately broken files;
/// `pupil::format::ModelBuilder` computes a valid layout for it.
pub fn encode_file(
    info: &ModelInfo,
    tensors: &[TensorEntry<'_>],
    data: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut manifest = alloc::vec![0u8; HASH_LEN];
    manifest =
        postcard::to_extend(info, manifest).map_err(|error| FormatError::Encode { error })?;
    manifest =
        postcard::to_extend(tensors, manifest).map_err(|error| FormatError::Encode { error })?;
    let manifest_len =
        u32::try_from(manifest.len()).map_err(|_| FormatError::ManifestTooLarge {
            len: manifest.len() as u64,
        })?;
    let header = Header::new(manifest_len, data.len() as u64);
    let data_start =
        usize::try_from(header.data_start()).map_err(|_| FormatError::ManifestTooLarge {
            len: manifest.len() as u64,
        })?;
    let mut file = Vec::with_capacity(data_start.saturating_add(data.len()));
    file.extend_from_slice(&header.to_bytes());
    file.extend_from_slice(&manifest);
    file.resize(data_start, 0);
    file.extend_from_slice(data);
    seal(&mut file)?;
    Ok(file)
}
