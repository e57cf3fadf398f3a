//! NumPy's `.npy` format (version 1.0), which Flower uses for the bytes of every array:
//! written exactly as `numpy.save` writes a C-ordered little-endian array (so the object
//! ids match Python's), and read for the element types models exchange.

use crate::objects::ObjectError;

/// The magic string and version 1.0.
const MAGIC: &[u8] = b"\x93NUMPY\x01\x00";
/// numpy pads the header so the data starts on a multiple of this.
const ALIGN: usize = 64;

/// An array's element type, by NumPy's name for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `float32` (`<f4`).
    F32,
    /// `float64` (`<f8`).
    F64,
    /// `int32` (`<i4`).
    I32,
    /// `int64` (`<i8`).
    I64,
}

impl Dtype {
    /// NumPy's name (`Array.dtype` in Flower's record).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
        }
    }

    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
            Dtype::I32 => "<i4",
            Dtype::I64 => "<i8",
        }
    }

    fn width(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }

    fn from_descr(descr: &str) -> Option<Dtype> {
        [Dtype::F32, Dtype::F64, Dtype::I32, Dtype::I64]
            .into_iter()
            .find(|d| d.descr() == descr)
    }
}

/// The `.npy` bytes of an f32 array of `shape` holding `values` (row-major).
pub fn write_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}",
        Dtype::F32.descr()
    );
    let used = MAGIC.len() + 2 + header.len() + 1;
    header.push_str(&" ".repeat(used.next_multiple_of(ALIGN) - used));
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// The element type, shape and values (as f32) of `.npy` bytes; fails on anything but a
/// C-ordered little-endian array of a [`Dtype`] whose data length matches its shape.
pub fn read_f32(bytes: &[u8]) -> Result<(Dtype, Vec<usize>, Vec<f32>), ObjectError> {
    let bad = |why: &str| ObjectError::Array(why.to_owned());
    if bytes.len() < MAGIC.len() + 2 || bytes[..6] != MAGIC[..6] {
        return Err(bad("not .npy bytes"));
    }
    let (len_bytes, start) = match bytes[6] {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(bad(&format!(".npy version {v} is not supported"))),
    };
    let mut len = [0u8; 4];
    len[..len_bytes].copy_from_slice(&bytes[8..8 + len_bytes]);
    let end = start + u32::from_le_bytes(len) as usize;
    let header = bytes
        .get(start..end)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("the .npy header is cut short or not text"))?;
    let field = |key: &str| {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr")
        .and_then(|v| v.strip_prefix('\'')?.split('\'').next())
        .and_then(Dtype::from_descr)
        .ok_or_else(|| bad("the element type is not one of <f4, <f8, <i4, <i8"))?;
    if !field("fortran_order").is_some_and(|v| v.starts_with("False")) {
        return Err(bad("Fortran-ordered arrays are not supported"));
    }
    let dims = field("shape")
        .and_then(|v| v.strip_prefix('(')?.split(')').next())
        .ok_or_else(|| bad("the header has no shape"))?;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<usize>()
                .map_err(|_| bad("the shape is not integers"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad("the shape overflows"))?;
    let data = &bytes[end..];
    if Some(data.len()) != count.checked_mul(descr.width()) {
        return Err(bad(&format!(
            "{} data bytes for shape {shape:?} of {}",
            data.len(),
            descr.name()
        )));
    }
    let values = match descr {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()) as f32)
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()) as f32)
            .collect(),
    };
    Ok((descr, shape, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `numpy.save` writes for `np.ones((2, 3), np.float32)` (header padded to 128).
    #[test]
    fn writes_what_numpy_writes() {
        let bytes = write_f32(&[2, 3], &[1.0; 6]);
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        assert_eq!(&bytes[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert_eq!(&bytes[10..10 + header.len()], header.as_bytes());
        assert_eq!(bytes.len(), 128 + 24);
        assert_eq!(bytes[127], b'\n');
        assert_eq!(&bytes[128..132], &1.0f32.to_le_bytes());
        assert!(write_f32(&[5], &[0.0; 5])[10..]
            .starts_with(b"{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }"));
    }

    #[test]
    fn reads_back_and_refuses_what_it_cannot_hold() {
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let (dtype, shape, got) = read_f32(&write_f32(&[3, 4], &values)).unwrap();
        assert_eq!((dtype, shape, got), (Dtype::F32, vec![3, 4], values));
        let (_, shape, got) = read_f32(&write_f32(&[], &[7.0])).unwrap();
        assert_eq!((shape, got), (vec![], vec![7.0]));
        let mut short = write_f32(&[2, 2], &[1.0; 4]);
        short.pop();
        assert!(read_f32(&short).is_err());
        assert!(read_f32(b"PK\x03\x04 not npy").is_err());
        let mut fortran = write_f32(&[2], &[1.0; 2]);
        let at = fortran.windows(5).position(|w| w == b"False").unwrap();
        fortran[at..at + 5].copy_from_slice(b"True ");
        assert!(read_f32(&fortran).is_err());
    }
}
