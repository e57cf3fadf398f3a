//! One delta tensor of an update: its name, shape and encoded values,
//! borrowed from the message bytes and decoded without allocation.

use half::f16;

use super::{take, UpdateError, MAX_DELTA_ELEMENTS};
use crate::{DType, Shape, MAX_NAME_LEN, MAX_RANK};

/// How a delta's values are encoded. Every array is little-endian bytes
/// borrowed from the message (so it needs no alignment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding<'a> {
    /// Every element as an IEEE half float: `2 × elements` bytes.
    F16 {
        /// The f16 values.
        values: &'a [u8],
    },
    /// Every element as a signed byte times its row's f32 scale. Rows are the
    /// last dimension: a `[r, c]` tensor has `r` rows of `c` elements (a scalar
    /// is one row of one element).
    Int8 {
        /// One f32 scale per row: `4 × rows` bytes.
        scales: &'a [u8],
        /// One i8 per element: `elements` bytes.
        values: &'a [u8],
    },
    /// The `k` largest-magnitude elements; all others are zero.
    TopK {
        /// Flat element indices as u32, strictly ascending: `4 × k` bytes.
        indices: &'a [u8],
        /// Their f16 values: `2 × k` bytes.
        values: &'a [u8],
    },
}

impl Encoding<'_> {
    /// The code stored in the message.
    pub const fn code(&self) -> u32 {
        match self {
            Self::F16 { .. } => 0,
            Self::Int8 { .. } => 1,
            Self::TopK { .. } => 2,
        }
    }

    /// The lower-case name, e.g. `int8`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::F16 { .. } => "f16",
            Self::Int8 { .. } => "int8",
            Self::TopK { .. } => "top-k",
        }
    }
}

/// One changed tensor (or LoRA factor): the difference to add to the base
/// model's tensor of the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta<'a> {
    /// The tensor's name in the model, e.g. `fc1.weight`.
    pub name: &'a str,
    /// Its shape, outermost dimension first.
    pub shape: Shape,
    /// Its encoded values.
    pub encoding: Encoding<'a>,
}

/// The rows and row length of `shape` for per-row scales: the last dimension
/// is the row; a scalar is one row of one element. `None` when the row count
/// overflows 64 bits (a shape such as `[2^40, 2^40, 0]` has no elements but
/// too many rows).
pub fn rows_cols(shape: &[u64]) -> Option<(u64, u64)> {
    match shape.split_last() {
        Some((&cols, outer)) => {
            let rows = outer.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
            Some((rows, cols))
        }
        None => Some((1, 1)),
    }
}

/// The row length of `shape` for per-row scales, at least 1.
pub(super) fn row_len(shape: &[u64]) -> usize {
    let cols = shape.last().copied().unwrap_or(1);
    usize::try_from(cols).unwrap_or(usize::MAX).max(1)
}

/// The f32 at `i` of little-endian f32 bytes (0 when out of range).
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    bytes
        .get(i * 4..i * 4 + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0.0, f32::from_le_bytes)
}

/// The f16 at `i` of little-endian f16 bytes, as f32 (0 when out of range).
fn f16_at(bytes: &[u8], i: usize) -> f32 {
    bytes
        .get(i * 2..i * 2 + 2)
        .and_then(|b| b.try_into().ok())
        .map_or(0.0, |b| f16::from_le_bytes(b).to_f32())
}

/// The u32 at `i` of little-endian u32 bytes (`u32::MAX` when out of range).
fn u32_at(bytes: &[u8], i: usize) -> u32 {
    bytes
        .get(i * 4..i * 4 + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(u32::MAX, u32::from_le_bytes)
}

impl Delta<'_> {
    /// The number of elements of the full tensor.
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Calls `f(index, value)` for every element the delta stores: all of them
    /// for dense encodings, the listed ones for top-k.
    pub fn for_each_value(&self, mut f: impl FnMut(usize, f32)) {
        match self.encoding {
            Encoding::F16 { values } => {
                (0..values.len() / 2).for_each(|i| f(i, f16_at(values, i)));
            }
            Encoding::Int8 { scales, values } => {
                let cols = row_len(&self.shape);
                for (i, &q) in values.iter().enumerate() {
                    f(i, f32::from(q as i8) * f32_at(scales, i / cols));
                }
            }
            Encoding::TopK { indices, values } => {
                for j in 0..values.len() / 2 {
                    f(u32_at(indices, j) as usize, f16_at(values, j));
                }
            }
        }
    }

    /// Writes the delta's elements `start..start + out.len()` into `out` (zeros where a
    /// top-k delta stores nothing, and past the tensor's end), without decoding the rest:
    /// an aggregator reads many deltas a block at a time instead of expanding each.
    pub fn read_range(&self, start: usize, out: &mut [f32]) {
        out.fill(0.0);
        let end = start.saturating_add(out.len());
        match self.encoding {
            Encoding::F16 { values } => {
                for (i, o) in (start..end.min(values.len() / 2)).zip(out.iter_mut()) {
                    *o = f16_at(values, i);
                }
            }
            Encoding::Int8 { scales, values } => {
                let cols = row_len(&self.shape);
                for (i, o) in (start..end.min(values.len())).zip(out.iter_mut()) {
                    *o = f32::from(values[i] as i8) * f32_at(scales, i / cols);
                }
            }
            Encoding::TopK { indices, values } => {
                let k = values.len() / 2;
                // Indices are strictly ascending (checked when the update was parsed).
                let first = partition_point(k, |j| (u32_at(indices, j) as usize) < start);
                for j in first..k {
                    let i = u32_at(indices, j) as usize;
                    if i >= end {
                        break;
                    }
                    out[i - start] = f16_at(values, j);
                }
            }
        }
    }

    /// Adds `weight × delta` to `out`, which holds the whole tensor.
    pub fn add_to(&self, out: &mut [f32], weight: f32) -> Result<(), UpdateError> {
        let expected = self.elements();
        if out.len() as u64 != expected {
            return Err(UpdateError::ValueCount {
                expected,
                got: out.len() as u64,
            });
        }
        self.for_each_value(|i, v| {
            if let Some(o) = out.get_mut(i) {
                *o += weight * v;
            }
        });
        Ok(())
    }

    /// The squared L2 norm of the decoded values, summed in f64.
    pub fn squared_norm(&self) -> f64 {
        let mut sum = 0.0f64;
        self.for_each_value(|_, v| sum += f64::from(v) * f64::from(v));
        sum
    }
}

/// The first `j` in `0..n` for which `before(j)` is false, where `before` is true on a
/// prefix of `0..n`.
fn partition_point(n: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Checks that array `part` of delta `index` is `expected` bytes long.
fn check_len(index: u32, part: &'static str, got: &[u8], expected: u64) -> Result<(), UpdateError> {
    if got.len() as u64 == expected {
        return Ok(());
    }
    Err(UpdateError::DataLength {
        index,
        part,
        len: got.len() as u64,
        expected,
    })
}

/// Whether every f16 in `bytes` is finite.
fn f16_finite(bytes: &[u8]) -> bool {
    bytes
        .chunks_exact(2)
        .all(|b| f16::from_le_bytes([b[0], b[1]]).is_finite())
}

/// Decodes and checks delta `index` at the start of `bytes`: name, rank,
/// element cap, encoding, array lengths, top-k indices and finite values.
pub(super) fn decode_delta(bytes: &[u8], index: u32) -> Result<(Delta<'_>, &[u8]), UpdateError> {
    let (name, rest) = bytes_str(bytes, "delta name", MAX_NAME_LEN)?;
    let (rank, mut rest): (u64, _) = take(rest, "delta rank")?;
    if rank > MAX_RANK as u64 {
        return Err(UpdateError::RankTooLarge { index, rank });
    }
    let mut shape = Shape::new();
    for _ in 0..rank {
        let (dim, after): (u64, _) = take(rest, "delta shape")?;
        shape
            .push(dim)
            .map_err(|_| UpdateError::RankTooLarge { index, rank })?;
        rest = after;
    }
    let elements = DType::elements(&shape)
        .ok()
        .filter(|&n| n <= MAX_DELTA_ELEMENTS)
        .ok_or(UpdateError::TooManyElements { index })?;
    let (code, rest): (u32, _) = take(rest, "delta encoding")?;
    let (encoding, rest) = match code {
        0 => {
            let (values, rest): (&[u8], _) = take(rest, "delta values")?;
            check_len(index, "values", values, 2 * elements)?;
            if !f16_finite(values) {
                return Err(UpdateError::NonFinite { index });
            }
            (Encoding::F16 { values }, rest)
        }
        1 => {
            let (scales, rest): (&[u8], _) = take(rest, "delta scales")?;
            let (values, rest): (&[u8], _) = take(rest, "delta values")?;
            let scale_bytes = rows_cols(&shape)
                .and_then(|(rows, _)| rows.checked_mul(4))
                .ok_or(UpdateError::TooManyElements { index })?;
            check_len(index, "scales", scales, scale_bytes)?;
            check_len(index, "values", values, elements)?;
            let finite = scales
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
            if !finite {
                return Err(UpdateError::NonFinite { index });
            }
            (Encoding::Int8 { scales, values }, rest)
        }
        2 => {
            let (indices, rest): (&[u8], _) = take(rest, "delta indices")?;
            let (values, rest): (&[u8], _) = take(rest, "delta values")?;
            let k = values.len() as u64 / 2;
            check_len(index, "values", values, 2 * k)?;
            check_len(index, "indices", indices, 4 * k)?;
            if k > elements {
                return Err(UpdateError::TopKTooLarge { index, k, elements });
            }
            check_indices(indices, elements, index)?;
            if !f16_finite(values) {
                return Err(UpdateError::NonFinite { index });
            }
            (Encoding::TopK { indices, values }, rest)
        }
        _ => return Err(UpdateError::UnknownEncoding { index, code }),
    };
    let delta = Delta {
        name,
        shape,
        encoding,
    };
    Ok((delta, rest))
}

/// Checks that top-k `indices` are strictly ascending and below `elements`.
fn check_indices(indices: &[u8], elements: u64, index: u32) -> Result<(), UpdateError> {
    let mut prev: Option<u32> = None;
    for (position, b) in (0u64..).zip(indices.chunks_exact(4)) {
        let i = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if u64::from(i) >= elements || prev.is_some_and(|p| p >= i) {
            return Err(UpdateError::BadIndex { index, position });
        }
        prev = Some(i);
    }
    Ok(())
}

/// Decodes a length-prefixed UTF-8 string of 1 to `max` bytes.
pub(super) fn bytes_str<'a>(
    rest: &'a [u8],
    field: &'static str,
    max: usize,
) -> Result<(&'a str, &'a [u8]), UpdateError> {
    let (raw, rest): (&[u8], _) = take(rest, field)?;
    if raw.is_empty() || raw.len() > max {
        return Err(UpdateError::BadLength {
            field,
            len: raw.len() as u64,
            max,
        });
    }
    let s = core::str::from_utf8(raw).map_err(|_| UpdateError::NotUtf8 { field })?;
    Ok((s, rest))
}
