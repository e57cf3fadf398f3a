//! A fully validated view of a `.pupil` file, borrowing its bytes.

use crate::{content_hash, FormatError, Header, Manifest, TensorEntry, HEADER_LEN};

/// A `.pupil` file whose every byte has been checked: header, manifest, tensor
/// table, layout and content hash.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelView<'a> {
    /// The file header.
    pub header: Header,
    /// The manifest.
    pub manifest: Manifest<'a>,
    data: &'a [u8],
}

impl<'a> ModelView<'a> {
    /// Checks `file` completely and returns a view of it. Structure is checked
    /// first, so each kind of damage gets its own error; the content hash last.
    pub fn parse(file: &'a [u8]) -> Result<Self, FormatError> {
        let header = Header::parse(file)?;
        let file_len = file.len() as u64;
        let after_header = file_len.saturating_sub(HEADER_LEN as u64);
        let manifest_len = u64::from(header.manifest_len);
        if manifest_len > after_header {
            return Err(FormatError::TruncatedManifest {
                declared: manifest_len,
                available: after_header,
            });
        }
        let data_start = header.data_start();
        let available = file_len.saturating_sub(data_start);
        if header.data_len > available {
            return Err(FormatError::TruncatedData {
                declared: header.data_len,
                available,
            });
        }
        if header.data_len < available {
            return Err(FormatError::TrailingBytes {
                extra: available - header.data_len,
            });
        }
        let manifest_bytes = slice(file, HEADER_LEN as u64, manifest_len)?;
        let data = slice(file, data_start, header.data_len)?;
        let manifest = Manifest::decode(manifest_bytes, header.format_version)?;
        check_table(&manifest, &header)?;
        let computed = content_hash(file);
        if computed != manifest.content_hash {
            return Err(FormatError::HashMismatch {
                stored: manifest.content_hash,
                computed,
            });
        }
        Ok(ModelView {
            header,
            manifest,
            data,
        })
    }

    /// The whole data section.
    pub const fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The entry named `name`, if the table has one.
    pub fn find(&self, name: &str) -> Result<Option<TensorEntry<'a>>, FormatError> {
        for entry in self.manifest.tensors.iter() {
            let entry = entry?;
            if entry.name == name {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// The bytes of the tensor described by `entry`.
    pub fn tensor_data(&self, entry: &TensorEntry<'_>) -> Result<&'a [u8], FormatError> {
        slice(self.data, entry.offset, entry.len)
    }
}

/// `bytes[start..start + len]`, or a truncation error.
fn slice(bytes: &[u8], start: u64, len: u64) -> Result<&[u8], FormatError> {
    let available = (bytes.len() as u64).saturating_sub(start);
    usize::try_from(start)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(s, l)| bytes.get(s..s.checked_add(l)?))
        .ok_or(FormatError::TruncatedData {
            declared: len,
            available,
        })
}

/// Checks what concerns several entries: name order, overlap, bounds, and that
/// the table fills the manifest and the tensors fill the data section.
fn check_table(manifest: &Manifest<'_>, header: &Header) -> Result<(), FormatError> {
    let mut iter = manifest.tensors.iter();
    let mut prev_name: Option<&str> = None;
    let mut prev_end = 0u64;
    for (index, entry) in (0u32..).zip(iter.by_ref()) {
        let entry = entry?;
        if prev_name.is_some_and(|p| p.as_bytes() >= entry.name.as_bytes()) {
            return Err(FormatError::NamesNotSorted { index });
        }
        if entry.offset < prev_end {
            return Err(FormatError::OverlappingTensors {
                index,
                offset: entry.offset,
                prev_end,
            });
        }
        let end = entry.end().filter(|&end| end <= header.data_len).ok_or(
            FormatError::TensorOutOfBounds {
                index,
                offset: entry.offset,
                len: entry.len,
                data_len: header.data_len,
            },
        )?;
        prev_name = Some(entry.name);
        prev_end = end;
    }
    let unused = iter.remainder().len() as u64;
    if unused != 0 {
        let declared = u64::from(header.manifest_len);
        return Err(FormatError::ManifestLengthMismatch {
            declared,
            used: declared - unused,
        });
    }
    if prev_end != header.data_len {
        return Err(FormatError::DataLengthMismatch {
            declared: header.data_len,
            used: prev_end,
        });
    }
    Ok(())
}
