//! The tensor table, decoded lazily without allocation.

use core::fmt;

use heapless::Vec;
use postcard::take_from_bytes;
use serde::Serialize;

use crate::{DType, FormatError, ALIGN, MAX_NAME_LEN, MAX_RANK};

/// A tensor shape, outermost dimension first.
pub type Shape = Vec<u64, MAX_RANK>;

/// One tensor table entry. Its name borrows from the file bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorEntry<'a> {
    /// Unique name, e.g. `fc1.weight`.
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost dimension first.
    pub shape: Shape,
    /// Offset from the start of the data section; a multiple of [`ALIGN`].
    pub offset: u64,
    /// Length in bytes: `dtype.byte_len(&shape)`.
    pub len: u64,
}

impl TensorEntry<'_> {
    /// Where the tensor's bytes end, relative to the data section.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

/// Displays a shape as `[784, 128]`.
pub(crate) struct ShapeDisplay<'a>(pub(crate) &'a [u64]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Decodes one value for entry `index`, mapping decoder errors.
fn take<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    index: u32,
) -> Result<(T, &'a [u8]), FormatError> {
    take_from_bytes(bytes).map_err(|error| FormatError::MalformedEntry { index, error })
}

/// Decodes and checks table entry `index` at the start of `bytes`, returning it
/// and the bytes after it. Checks everything that concerns this entry alone:
/// name length and encoding, dtype, rank, shape, length and alignment.
pub(crate) fn decode_entry(
    bytes: &[u8],
    index: u32,
) -> Result<(TensorEntry<'_>, &[u8]), FormatError> {
    let (name, rest): (&[u8], _) = take(bytes, index)?;
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(FormatError::BadNameLength {
            index,
            len: name.len() as u64,
        });
    }
    let name = core::str::from_utf8(name).map_err(|_| FormatError::NameNotUtf8 { index })?;
    let (code, rest): (u32, _) = take(rest, index)?;
    let dtype = DType::from_code(code).ok_or(FormatError::UnknownDType { index, code })?;
    let (rank, mut rest): (u32, _) = take(rest, index)?;
    if rank as usize > MAX_RANK {
        return Err(FormatError::RankTooLarge { index, rank });
    }
    let mut shape = Shape::new();
    for _ in 0..rank {
        let (dim, after): (u64, _) = take(rest, index)?;
        shape
            .push(dim)
            .map_err(|_| FormatError::RankTooLarge { index, rank })?;
        rest = after;
    }
    let (offset, rest): (u64, _) = take(rest, index)?;
    let (len, rest): (u64, _) = take(rest, index)?;
    let expected = dtype
        .byte_len(&shape)
        .map_err(|error| FormatError::BadShape { index, error })?;
    if len != expected {
        return Err(FormatError::LengthMismatch {
            index,
            declared: len,
            expected,
        });
    }
    if offset % ALIGN != 0 {
        return Err(FormatError::MisalignedTensor { index, offset });
    }
    let entry = TensorEntry {
        name,
        dtype,
        shape,
        offset,
        len,
    };
    Ok((entry, rest))
}

/// The tensor table: `count` entries encoded back to back in `bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorTable<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl<'a> TensorTable<'a> {
    /// A table of `count` entries encoded in `bytes`; entries are decoded and
    /// checked one by one as they are iterated.
    pub const fn new(bytes: &'a [u8], count: u32) -> Self {
        Self { bytes, count }
    }

    /// The number of entries.
    pub const fn len(&self) -> u32 {
        self.count
    }

    /// Whether the table has no entries.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded entries.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Iterates the entries in table order.
    pub const fn iter(&self) -> TensorIter<'a> {
        TensorIter {
            rest: self.bytes,
            index: 0,
            count: self.count,
        }
    }
}

impl<'a> IntoIterator for &TensorTable<'a> {
    type Item = Result<TensorEntry<'a>, FormatError>;
    type IntoIter = TensorIter<'a>;

    fn into_iter(self) -> TensorIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`TensorTable`]; it stops after the first error.
#[derive(Clone, Debug)]
pub struct TensorIter<'a> {
    rest: &'a [u8],
    index: u32,
    count: u32,
}

impl<'a> TensorIter<'a> {
    /// The bytes after the entries decoded so far.
    pub const fn remainder(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for TensorIter<'a> {
    type Item = Result<TensorEntry<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        match decode_entry(self.rest, self.index) {
            Ok((entry, rest)) => {
                self.rest = rest;
                self.index += 1;
                Some(Ok(entry))
            }
            Err(e) => {
                self.index = self.count;
                Some(Err(e))
            }
        }
    }
}
