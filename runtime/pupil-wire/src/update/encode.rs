//! Building update bodies from f32 deltas (needs an allocator): f16, int8 with
//! per-row scales, and top-k with error feedback.

use alloc::string::String;
use alloc::vec::Vec;

use half::f16;
use serde::Serialize;

use super::delta::row_len;
use super::{Delta, Encoding, Metric, Update, UpdateError, UPDATE_VERSION};
use crate::{DType, Shape, MAX_NAME_LEN};

/// The owned arrays of an [`Encoding`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedEncoding {
    /// f16 values.
    F16(Vec<u8>),
    /// Per-row f32 scales and i8 values.
    Int8 {
        /// One f32 scale per row.
        scales: Vec<u8>,
        /// One i8 per element.
        values: Vec<u8>,
    },
    /// Ascending u32 indices and their f16 values.
    TopK {
        /// Flat element indices.
        indices: Vec<u8>,
        /// f16 values.
        values: Vec<u8>,
    },
}

/// A delta tensor that owns its encoded bytes; [`EncodedDelta::as_delta`]
/// borrows it for [`UpdateDraft`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedDelta {
    /// The tensor's name in the model.
    pub name: String,
    /// Its shape.
    pub shape: Shape,
    /// Its encoded values.
    pub encoding: OwnedEncoding,
}

/// A top-k delta and the error-feedback residual the device keeps for its next
/// update: everything the delta did not carry.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// The encoded delta.
    pub delta: EncodedDelta,
    /// `values + previous residual − decoded delta`, one per element.
    pub residual: Vec<f32>,
}

/// Checks the name, rank and value count of a delta to encode.
fn checked(name: &str, shape: &[u64], values: &[f32]) -> Result<(String, Shape), UpdateError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(UpdateError::BadLength {
            field: "delta name",
            len: name.len() as u64,
            max: MAX_NAME_LEN,
        });
    }
    let rank = shape.len() as u64;
    let shape =
        Shape::from_slice(shape).map_err(|()| UpdateError::RankTooLarge { index: 0, rank })?;
    let expected =
        DType::elements(&shape).map_err(|_| UpdateError::TooManyElements { index: 0 })?;
    if values.len() as u64 != expected {
        return Err(UpdateError::ValueCount {
            expected,
            got: values.len() as u64,
        });
    }
    Ok((String::from(name), shape))
}

/// `x` as little-endian f16 bytes.
fn f16_bytes(x: impl IntoIterator<Item = f32>) -> Vec<u8> {
    x.into_iter()
        .flat_map(|v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// `|x|`, without `std`.
fn abs(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & 0x7fff_ffff)
}

/// `x` rounded half away from zero and clamped to ±127.
fn round_i8(x: f32) -> i8 {
    let r = if x >= 0.0 { x + 0.5 } else { x - 0.5 };
    (r as i32).clamp(-127, 127) as i8
}

impl EncodedDelta {
    /// Encodes `values` of `shape` as f16. Values beyond f16's range (±65504)
    /// become infinite and [`UpdateDraft::encode`] rejects them; use int8.
    pub fn f16(name: &str, shape: &[u64], values: &[f32]) -> Result<Self, UpdateError> {
        let (name, shape) = checked(name, shape, values)?;
        let encoding = OwnedEncoding::F16(f16_bytes(values.iter().copied()));
        Ok(EncodedDelta {
            name,
            shape,
            encoding,
        })
    }

    /// Encodes `values` of `shape` as i8 with one f32 scale per row (the last
    /// dimension): `scale = max |row| / 127`, so each value is off by at most
    /// half its row's scale.
    pub fn int8(name: &str, shape: &[u64], values: &[f32]) -> Result<Self, UpdateError> {
        let (name, shape) = checked(name, shape, values)?;
        let cols = row_len(&shape);
        let mut scales = Vec::new();
        let mut quantized = Vec::with_capacity(values.len());
        for row in values.chunks(cols) {
            let max = row.iter().fold(0.0f32, |m, &v| m.max(abs(v)));
            let scale = max / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            scales.extend_from_slice(&scale.to_le_bytes());
            quantized.extend(row.iter().map(|&v| round_i8(v * inv) as u8));
        }
        let encoding = OwnedEncoding::Int8 {
            scales,
            values: quantized,
        };
        Ok(EncodedDelta {
            name,
            shape,
            encoding,
        })
    }

    /// Encodes the `k` largest-magnitude elements of `values + residual` as
    /// f16 (all of them when `k` is at least the element count) and returns the
    /// new residual to keep on the device and pass to the next call, so that
    /// what is not sent now is sent later (error feedback). `residual` is
    /// `None` for the first update.
    pub fn top_k(
        name: &str,
        shape: &[u64],
        values: &[f32],
        residual: Option<&[f32]>,
        k: usize,
    ) -> Result<TopK, UpdateError> {
        let (name, shape) = checked(name, shape, values)?;
        let mut acc: Vec<f32> = values.to_vec();
        if let Some(r) = residual {
            if r.len() != acc.len() {
                return Err(UpdateError::ValueCount {
                    expected: acc.len() as u64,
                    got: r.len() as u64,
                });
            }
            acc.iter_mut().zip(r).for_each(|(a, r)| *a += r);
        }
        let mut order: Vec<u32> = (0..acc.len() as u32).collect();
        let k = k.min(order.len());
        if k > 0 && k < order.len() {
            order.select_nth_unstable_by(k - 1, |&a, &b| {
                abs(acc[b as usize]).total_cmp(&abs(acc[a as usize]))
            });
        }
        order.truncate(k);
        order.sort_unstable();
        let mut indices = Vec::with_capacity(4 * k);
        let mut sent = Vec::with_capacity(2 * k);
        for &i in &order {
            let v = f16::from_f32(acc[i as usize]);
            indices.extend_from_slice(&i.to_le_bytes());
            sent.extend_from_slice(&v.to_le_bytes());
            acc[i as usize] -= v.to_f32();
        }
        let delta = EncodedDelta {
            name,
            shape,
            encoding: OwnedEncoding::TopK {
                indices,
                values: sent,
            },
        };
        Ok(TopK {
            delta,
            residual: acc,
        })
    }

    /// The delta, borrowing this one's bytes.
    pub fn as_delta(&self) -> Delta<'_> {
        let encoding = match &self.encoding {
            OwnedEncoding::F16(values) => Encoding::F16 { values },
            OwnedEncoding::Int8 { scales, values } => Encoding::Int8 { scales, values },
            OwnedEncoding::TopK { indices, values } => Encoding::TopK { indices, values },
        };
        Delta {
            name: &self.name,
            shape: self.shape.clone(),
            encoding,
        }
    }
}

/// The fields of an update to encode.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateDraft<'a> {
    /// The model refined.
    pub model_id: &'a str,
    /// The content hash of the model the deltas apply to.
    pub base_version: [u8; 32],
    /// The sending device.
    pub device_id: &'a str,
    /// The device's sequence number for this update.
    pub seq: u64,
    /// How many local examples the refinement saw.
    pub num_examples: u64,
    /// Metrics to report.
    pub metrics: &'a [Metric<'a>],
    /// The deltas, in any order.
    pub deltas: &'a [Delta<'a>],
}

/// Appends `value` in postcard to `out`.
fn put<T: Serialize + ?Sized>(out: Vec<u8>, value: &T) -> Result<Vec<u8>, UpdateError> {
    postcard::to_extend(value, out).map_err(|error| UpdateError::Encode { error })
}

impl UpdateDraft<'_> {
    /// Encodes the body (deltas sorted by name) and checks it with
    /// [`Update::parse`], so it returns only bodies a receiver accepts.
    pub fn encode(&self) -> Result<Vec<u8>, UpdateError> {
        let mut out = put(Vec::new(), &UPDATE_VERSION)?;
        out = put(out, self.model_id)?;
        out = put(out, &self.base_version)?;
        out = put(out, self.device_id)?;
        out = put(out, &self.seq)?;
        out = put(out, &self.num_examples)?;
        out = put(out, &(self.metrics.len() as u64))?;
        for m in self.metrics {
            out = put(out, m.name)?;
            out = put(out, &m.value)?;
        }
        let mut deltas: Vec<&Delta<'_>> = self.deltas.iter().collect();
        deltas.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        out = put(out, &(deltas.len() as u64))?;
        for d in deltas {
            out = put(out, d.name)?;
            out = put(out, &(d.shape.len() as u64))?;
            for dim in &d.shape {
                out = put(out, dim)?;
            }
            out = put(out, &d.encoding.code())?;
            out = match d.encoding {
                Encoding::F16 { values } => put(out, values)?,
                Encoding::Int8 { scales, values }
                | Encoding::TopK {
                    indices: scales,
                    values,
                } => put(put(out, scales)?, values)?,
            };
        }
        Update::parse(&out)?;
        Ok(out)
    }
}
