//! A GGUF reader (versions 2 and 3): header, metadata key-values of every type, tensor
//! infos and the aligned data section. Every count, length and offset is checked against the
//! file's size before it is used, so truncated or hostile files give typed errors and never
//! large allocations.
//!
//! Layout (little-endian): magic `GGUF`, version u32, tensor count u64, metadata count u64;
//! metadata `key: string, type: u32, value`; tensor infos `name: string, n_dims: u32,
//! dims: u64 × n_dims (innermost first), type: u32, offset: u64`; padding to
//! `general.alignment` (default 32); the data section, each tensor at its offset.

use super::error::ImportError;
use super::ggml::GgmlType;

/// The default data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// The most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// How deeply arrays may nest in metadata.
const MAX_DEPTH: u32 = 4;
/// The most array items reserved before they are read.
const PREALLOCATE: usize = 1 << 16;

/// The fewest bytes a metadata value of type `ty` takes.
fn min_size(ty: u32) -> u64 {
    match ty {
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8: UTF-8 text (invalid sequences are replaced).
    Str(String),
    /// Type 9: values of one type.
    Array(MetaArray),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl MetaValue {
    /// The value as an integer, if it is one (booleans are not).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => i64::try_from(v).ok()?,
            MetaValue::I64(v) => v,
            _ => return None,
        })
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as text, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata array, stored about as compactly as in the file (a GGUF of large arrays
/// costs about its size in memory, not 32 bytes per byte as an array of [`MetaValue`]s
/// would).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    /// Numbers or booleans of GGUF type `ty`, as their little-endian bytes.
    Scalars {
        /// The element type (0 to 7, 10 to 12).
        ty: u32,
        /// `len × size` bytes.
        bytes: Vec<u8>,
    },
    /// Strings: their UTF-8 text end to end and where each ends.
    Strings {
        /// Every string's text, concatenated.
        text: String,
        /// The end of each string in `text`.
        ends: Vec<usize>,
    },
    /// Arrays (arrays nest at most a few levels deep).
    Arrays(Vec<MetaArray>),
}

impl MetaArray {
    /// Its number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::Scalars { ty, bytes } => bytes.len() / min_size(*ty) as usize,
            MetaArray::Strings { ends, .. } => ends.len(),
            MetaArray::Arrays(a) => a.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a scalar value, if it is a number or a boolean.
    pub fn scalar(&self, i: usize) -> Option<MetaValue> {
        let MetaArray::Scalars { ty, bytes } = self else {
            return None;
        };
        let size = min_size(*ty) as usize;
        scalar(*ty, bytes.get(i * size..(i + 1) * size)?)
    }

    /// Element `i` as text, if it is a string.
    pub fn str(&self, i: usize) -> Option<&str> {
        let MetaArray::Strings { text, ends } = self else {
            return None;
        };
        let start = if i == 0 { 0 } else { *ends.get(i - 1)? };
        text.get(start..*ends.get(i)?)
    }

    /// Every element as text, if it is an array of strings.
    pub fn strings(&self) -> Option<Vec<&str>> {
        match self {
            MetaArray::Strings { .. } => (0..self.len()).map(|i| self.str(i)).collect(),
            _ => None,
        }
    }
}

/// The scalar of GGUF type `ty` (not a string or an array) in `b`, exactly its size.
fn scalar(ty: u32, b: &[u8]) -> Option<MetaValue> {
    Some(match ty {
        0 => MetaValue::U8(b[0]),
        1 => MetaValue::I8(b[0] as i8),
        2 => MetaValue::U16(u16::from_le_bytes(b.try_into().ok()?)),
        3 => MetaValue::I16(i16::from_le_bytes(b.try_into().ok()?)),
        4 => MetaValue::U32(u32::from_le_bytes(b.try_into().ok()?)),
        5 => MetaValue::I32(i32::from_le_bytes(b.try_into().ok()?)),
        6 => MetaValue::F32(f32::from_le_bytes(b.try_into().ok()?)),
        7 => MetaValue::Bool(b[0] != 0),
        10 => MetaValue::U64(u64::from_le_bytes(b.try_into().ok()?)),
        11 => MetaValue::I64(i64::from_le_bytes(b.try_into().ok()?)),
        12 => MetaValue::F64(f64::from_le_bytes(b.try_into().ok()?)),
        _ => return None,
    })
}

/// One tensor's description.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    /// Its name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Its shape, outermost first (GGUF stores it innermost first).
    pub shape: Vec<u64>,
    /// Its element type.
    pub ggml_type: GgmlType,
    /// Where its bytes are in the file.
    pub data: std::ops::Range<usize>,
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Clone, Debug)]
pub struct Gguf<'a> {
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensor infos in file order.
    pub tensors: Vec<GgufTensor>,
    bytes: &'a [u8],
}

impl<'a> Gguf<'a> {
    /// Parses and validates `bytes` as GGUF.
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>, ImportError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4, "magic")? != b"GGUF" {
            return Err(ImportError::Gguf("the magic is not `GGUF`".into()));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ImportError::Gguf(format!(
                "version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = r.count("tensor count", 8)?;
        let n_meta = r.count("metadata count", 12)?;
        let mut metadata = Vec::with_capacity(n_meta.min(PREALLOCATE));
        for _ in 0..n_meta {
            let key = r.string("metadata key")?;
            let ty = r.u32("metadata type")?;
            let value = r.value(ty, 0)?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => v
                .as_i64()
                .and_then(|a| u64::try_from(a).ok())
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| {
                    ImportError::Gguf(format!("general.alignment {v:?} is not a power of two"))
                })?,
        };
        let mut infos = Vec::with_capacity(n_tensors.min(PREALLOCATE));
        for _ in 0..n_tensors {
            infos.push(r.tensor_info()?);
        }
        let data_start = (r.pos as u64).next_multiple_of(alignment);
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, shape, ggml_type, offset) in infos {
            let data = locate(
                &name, &shape, ggml_type, offset, data_start, alignment, bytes,
            )?;
            tensors.push(GgufTensor {
                name,
                shape,
                ggml_type,
                data,
            });
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The raw bytes of `tensor`.
    pub fn data(&self, tensor: &GgufTensor) -> &'a [u8] {
        self.bytes.get(tensor.data.clone()).unwrap_or_default()
    }
}

/// Checks a tensor's type, size and offset; returns its byte range in the file.
fn locate(
    name: &str,
    shape: &[u64],
    ggml_type: GgmlType,
    offset: u64,
    data_start: u64,
    alignment: u64,
    bytes: &[u8],
) -> Result<std::ops::Range<usize>, ImportError> {
    let elements = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| ImportError::Gguf(format!("tensor {name:?}: shape {shape:?} overflows")))?;
    let len = ggml_type.byte_len(elements).ok_or_else(|| {
        ImportError::Gguf(format!(
            "tensor {name:?}: {} elements are not a whole number of {} blocks (or the type is unknown)",
            elements,
            ggml_type.name()
        ))
    })?;
    if !offset.is_multiple_of(alignment) {
        return Err(ImportError::Gguf(format!(
            "tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    let start = data_start.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(len));
    match (start, end) {
        (Some(s), Some(e)) if e <= bytes.len() as u64 => Ok(s as usize..e as usize),
        _ => Err(ImportError::Truncated {
            what: "tensor data",
            offset: data_start.saturating_add(offset),
            needed: len,
            len: bytes.len() as u64,
        }),
    }
}

/// The error for metadata type `ty`, which GGUF does not define.
fn unknown_type(ty: u32) -> ImportError {
    ImportError::Gguf(format!("unknown metadata type {ty}"))
}

/// Checks that `bytes` hold scalars of type `ty`: a known type, and booleans 0 or 1.
fn check_scalars(ty: u32, bytes: &[u8]) -> Result<(), ImportError> {
    match ty {
        7 => match bytes.iter().find(|&&b| b > 1) {
            Some(b) => Err(ImportError::Gguf(format!("boolean byte {b} is not 0 or 1"))),
            None => Ok(()),
        },
        0..=6 | 10..=12 => Ok(()),
        ty => Err(unknown_type(ty)),
    }
}

/// A bounds-checked cursor.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], ImportError> {
        let truncated = || ImportError::Truncated {
            what,
            offset: self.pos as u64,
            needed: n,
            len: self.bytes.len() as u64,
        };
        let n = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let out = self.bytes.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ImportError> {
        let b = self.take(N as u64, what)?;
        let mut out = [0; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ImportError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ImportError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count of items that each take at least `min_bytes`: one that cannot fit in the rest
    /// of the file is rejected before anything is allocated.
    fn count(&mut self, what: &'static str, min_bytes: u64) -> Result<usize, ImportError> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.checked_mul(min_bytes).is_none_or(|need| need > left) {
            return Err(ImportError::Truncated {
                what,
                offset: self.pos as u64,
                needed: n.saturating_mul(min_bytes),
                len: self.bytes.len() as u64,
            });
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &'static str) -> Result<String, ImportError> {
        let n = self.u64(what)?;
        let b = self.take(n, what)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue, ImportError> {
        match ty {
            8 => Ok(MetaValue::Str(self.string("metadata value")?)),
            9 => Ok(MetaValue::Array(self.meta_array(depth)?)),
            0..=7 | 10..=12 => {
                let b = self.take(min_size(ty), "metadata value")?;
                check_scalars(ty, b)?;
                scalar(ty, b).ok_or_else(|| unknown_type(ty))
            }
            ty => Err(unknown_type(ty)),
        }
    }

    /// An array value (after its type tag) at nesting level `depth`.
    fn meta_array(&mut self, depth: u32) -> Result<MetaArray, ImportError> {
        if depth >= MAX_DEPTH {
            return Err(ImportError::Gguf(format!(
                "metadata arrays nest deeper than {MAX_DEPTH}"
            )));
        }
        let elem = self.u32("array element type")?;
        let n = self.count("array length", min_size(elem))?;
        Ok(match elem {
            8 => {
                let mut text = String::new();
                let mut ends = Vec::with_capacity(n.min(PREALLOCATE));
                for _ in 0..n {
                    let len = self.u64("metadata value")?;
                    text.push_str(&String::from_utf8_lossy(self.take(len, "metadata value")?));
                    ends.push(text.len());
                }
                MetaArray::Strings { text, ends }
            }
            9 => {
                let mut items = Vec::with_capacity(n.min(PREALLOCATE));
                for _ in 0..n {
                    items.push(self.meta_array(depth + 1)?);
                }
                MetaArray::Arrays(items)
            }
            ty => {
                // `count` checked that `n` elements fit in the file.
                let bytes = self.take(n as u64 * min_size(ty), "array values")?;
                check_scalars(ty, bytes)?;
                MetaArray::Scalars {
                    ty,
                    bytes: bytes.to_vec(),
                }
            }
        })
    }

    /// Name, shape (outermost first), type and offset of one tensor.
    fn tensor_info(&mut self) -> Result<(String, Vec<u64>, GgmlType, u64), ImportError> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32("tensor rank")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(ImportError::Gguf(format!(
                "tensor {name:?} has {n_dims} dimensions; ggml allows 1 to {MAX_DIMS}"
            )));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(self.u64("tensor dimension")?);
        }
        shape.reverse();
        let ggml_type = GgmlType(self.u32("tensor type")?);
        let offset = self.u64("tensor offset")?;
        Ok((name, shape, ggml_type, offset))
    }
}
