//! Converting tensor bytes to and from f32, including the block formats.

use half::{bf16, f16};
use pupil_wire::{DType, QK};

mod kquant;
pub use kquant::QK_K;

/// Elements per block, as a `usize`.
const BLOCK: usize = QK as usize;
/// Bytes of packed nibbles in a 4-bit block.
const NIBBLES: usize = BLOCK / 2;

/// Reads the little-endian f16 at the start of `b` (0 if `b` is too short).
fn f16_at(b: &[u8]) -> f32 {
    match b {
        [lo, hi, ..] => f16::from_le_bytes([*lo, *hi]).to_f32(),
        _ => 0.0,
    }
}

/// Decodes `bytes` of `dtype` to f32 values; integers convert by value and
/// block formats dequantize. A trailing partial element or block is ignored.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => bytes.chunks_exact(2).map(f16_at).collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::I8 => bytes.iter().map(|&b| f32::from(b as i8)).collect(),
        DType::U8 => bytes.iter().map(|&b| f32::from(b)).collect(),
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        DType::Q8_0 => blocks(bytes, 34, |b, out| {
            let d = f16_at(b);
            for (o, &q) in out.iter_mut().zip(&b[2..]) {
                *o = d * f32::from(q as i8);
            }
        }),
        DType::Q4_0 => blocks(bytes, 18, |b, out| {
            let d = f16_at(b);
            unpack_quants(&b[2..], 0, out, |q| (f32::from(q) - 8.0) * d);
        }),
        DType::Q4_1 => blocks(bytes, 20, |b, out| {
            let (d, m) = (f16_at(b), f16_at(&b[2..]));
            unpack_quants(&b[4..], 0, out, |q| f32::from(q) * d + m);
        }),
        DType::Q5_0 => blocks(bytes, 22, |b, out| {
            let d = f16_at(b);
            unpack_fives(&b[2..], out, |q| (f32::from(q) - 16.0) * d);
        }),
        DType::Q5_1 => blocks(bytes, 24, |b, out| {
            let (d, m) = (f16_at(b), f16_at(&b[2..]));
            unpack_fives(&b[4..], out, |q| f32::from(q) * d + m);
        }),
        DType::Q4_K | DType::Q5_K | DType::Q6_K => {
            let size = dtype.block_bytes() as usize;
            let mut out = vec![0.0; bytes.len() / size * QK_K];
            for (b, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(QK_K)) {
                decode_k_block(dtype, b, o);
            }
            out
        }
    }
}

/// Decodes one k-quant super-block of `dtype` (its GGML bytes) into 256 values; other
/// dtypes leave `out` as it is.
pub fn decode_k_block(dtype: DType, block: &[u8], out: &mut [f32]) {
    match dtype {
        DType::Q4_K => kquant::decode_q45_k(block, false, out),
        DType::Q5_K => kquant::decode_q45_k(block, true, out),
        DType::Q6_K => kquant::decode_q6_k(block, out),
        _ => {}
    }
}

/// Decodes each `size`-byte block of `bytes` into [`BLOCK`] values with `decode`.
fn blocks(bytes: &[u8], size: usize, decode: impl Fn(&[u8], &mut [f32])) -> Vec<f32> {
    let mut out = vec![0.0; bytes.len() / size * BLOCK];
    for (b, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(BLOCK)) {
        decode(b, o);
    }
    out
}

/// Decodes a 32-element block's quants: element `j < 16` is the low nibble of byte `j` of
/// `qs`, element `j + 16` its high nibble, and bit `j` of `qh` is element `j`'s fifth bit
/// (`qh` 0 for 4-bit formats); `value` turns each quant into `out`'s element.
pub fn unpack_quants(qs: &[u8], qh: u32, out: &mut [f32], value: impl Fn(u8) -> f32) {
    let fifth = |j: usize| (((qh >> j) & 1) as u8) << 4;
    let (lo, hi) = out.split_at_mut(NIBBLES.min(out.len()));
    for (j, ((&q, l), h)) in qs.iter().zip(lo).zip(hi).enumerate() {
        *l = value((q & 0x0f) | fifth(j));
        *h = value((q >> 4) | fifth(j + NIBBLES));
    }
}

/// A 5-bit block after its scale header: 4 bytes `qh`, then the nibbles.
fn unpack_fives(b: &[u8], out: &mut [f32], value: impl Fn(u8) -> f32) {
    let qh = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    unpack_quants(&b[4..], qh, out, value);
}

/// Encodes f32 `values` as `dtype`; `None` for integer dtypes. The value count
/// must be a multiple of the dtype's block for block formats (the caller checks shapes).
pub fn from_f32(dtype: DType, values: &[f32]) -> Option<Vec<u8>> {
    let bytes = match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        DType::Q8_0 => values.chunks(BLOCK).flat_map(quantize_q8_0).collect(),
        DType::Q4_0 => blocks_of(values, |x| quantize_symmetric(x, 8.0, pack_nibbles)),
        DType::Q4_1 => blocks_of(values, |x| quantize_affine(x, 15.0, pack_nibbles)),
        DType::Q5_0 => blocks_of(values, |x| quantize_symmetric(x, 16.0, pack_fives)),
        DType::Q5_1 => blocks_of(values, |x| quantize_affine(x, 31.0, pack_fives)),
        DType::Q4_K => values
            .chunks(QK_K)
            .flat_map(|x| kquant::encode_q45_k(x, 15))
            .collect(),
        DType::Q5_K => values
            .chunks(QK_K)
            .flat_map(|x| kquant::encode_q45_k(x, 31))
            .collect(),
        DType::Q6_K => values.chunks(QK_K).flat_map(kquant::encode_q6_k).collect(),
        DType::I8 | DType::I32 | DType::U8 => return None,
    };
    Some(bytes)
}

/// Each [`BLOCK`]-value chunk of `values` encoded by `encode`, end to end.
fn blocks_of(values: &[f32], encode: impl Fn(&[f32]) -> Vec<u8>) -> Vec<u8> {
    values.chunks(BLOCK).flat_map(encode).collect()
}

/// `1 / d`, or 0 for a zero scale.
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// One Q8_0 block: scale = max |x| / 127, values rounded to i8.
fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
    out
}

/// A block with one scale: scale = (value of largest magnitude) / -`half`, quants q with
/// x ≈ (q - `half`) × scale, packed by `pack` (`half` 8 for Q4_0, 16 for Q5_0).
fn quantize_symmetric(x: &[f32], half: f32, pack: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let max = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -half;
    let id = inverse(d);
    let top = 2.0 * half - 1.0;
    let q: Vec<u8> = x
        .iter()
        .map(|v| (v * id + half + 0.5).clamp(0.0, top) as u8)
        .collect();
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(pack(&q));
    out
}

/// A block with a scale and a minimum: scale = (max - min) / `levels`, quants q with
/// x ≈ q × scale + min, packed by `pack` (`levels` 15 for Q4_1, 31 for Q5_1).
fn quantize_affine(x: &[f32], levels: f32, pack: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / levels;
    let id = inverse(d);
    let q: Vec<u8> = x
        .iter()
        .map(|v| ((v - min) * id + 0.5).clamp(0.0, levels) as u8)
        .collect();
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(f16::from_f32(min).to_le_bytes());
    out.extend(pack(&q));
    out
}

/// Packs a 5-bit block's quants: the fifth bits as a little-endian u32, then the nibbles.
fn pack_fives(q: &[u8]) -> Vec<u8> {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (j, &v)| h | (u32::from(v >> 4) << j));
    let mut out = qh.to_le_bytes().to_vec();
    out.extend(pack_nibbles(q));
    out
}

/// Packs a block's quants (their low nibbles): byte `j` holds element `j` low and `j + 16`
/// high; elements past the end are 0.
fn pack_nibbles(q: &[u8]) -> Vec<u8> {
    let at = |j: usize| q.get(j).map_or(0, |v| v & 0x0f);
    (0..NIBBLES)
        .map(|j| at(j) | (at(j + NIBBLES) << 4))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element 17 of a Q5_0 block is the high nibble of byte 1 with bit 17 of `qh` on top.
    #[test]
    fn q5_0_decodes_ggml_layout() {
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((1u32 << 17).to_le_bytes());
        let mut qs = [0u8; NIBBLES];
        qs[1] = 0x30;
        b.extend(qs);
        let out = to_f32(DType::Q5_0, &b);
        assert_eq!(out[17], 0.5 * (19.0 - 16.0));
        assert_eq!(out[1], 0.5 * -16.0);
    }

    #[test]
    fn five_bit_blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 30.0) / 10.0)
            .collect();
        for (dtype, step) in [(DType::Q5_0, 3.3 / 16.0), (DType::Q5_1, 6.3 / 31.0)] {
            let bytes = from_f32(dtype, &x).unwrap();
            assert_eq!(bytes.len() as u64, 2 * dtype.block_bytes());
            let back = to_f32(dtype, &bytes);
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() <= step * 0.5 + 1e-3, "{dtype}: {a} -> {b}");
            }
        }
    }
}
