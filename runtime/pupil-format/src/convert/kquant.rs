//! GGML's k-quants: super-blocks of 256 elements with 6- or 8-bit sub-block scales,
//! decoded exactly as `ggml-quants.c` decodes them, and a plain encoder (per sub-block
//! min/max, not llama.cpp's error search) for tests and `pupil convert`.
//!
//! Layouts (little-endian bytes):
//! - `Q4_K` (144): f16 d, f16 dmin, 12 bytes of 6-bit scales and minima for 8 sub-blocks of
//!   32, 128 bytes of nibbles; element `64c + l` is the low nibble of `qs[32c + l]` (sub-block
//!   `2c`), element `64c + 32 + l` its high nibble (sub-block `2c + 1`); value `d * sc * q - dmin * m`.
//! - `Q5_K` (176): as `Q4_K` with 32 bytes `qh` after the scales: bit `s` of `qh[l]` is the
//!   fifth bit of element `l` of sub-block `s`.
//! - `Q6_K` (210): 128 bytes `ql` (low 4 bits), 64 bytes `qh` (high 2 bits), 16 i8 scales
//!   for sub-blocks of 16, f16 d last; value `d * sc * (q - 32)`.

use half::f16;

/// Elements per super-block.
pub const QK_K: usize = 256;

/// The f16 at bytes `at`, `at + 1`.
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Scale and minimum of sub-block `j` (0..8) from the 12 packed bytes (`get_scale_min_k4`).
pub fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs eight 6-bit scales and minima the way [`scale_min`] reads them.
fn pack_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4);
    }
    q
}

/// Decodes one `Q4_K` (`fifth_bits` false) or `Q5_K` super-block into 256 values.
pub fn decode_q45_k(b: &[u8], fifth_bits: bool, out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let (qh, qs) = if fifth_bits {
        (&b[16..48], &b[48..176])
    } else {
        (&b[16..16], &b[16..144])
    };
    for (s, o) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min(s, scales);
        let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
        let bytes = &qs[32 * (s / 2)..][..32];
        for (l, v) in o.iter_mut().enumerate() {
            let mut q = (bytes[l] >> (4 * (s % 2))) & 0x0f;
            if fifth_bits {
                q |= ((qh[l] >> s) & 1) << 4;
            }
            *v = scale * f32::from(q) - min;
        }
    }
}

/// Decodes one `Q6_K` super-block into 256 values.
pub fn decode_q6_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 208);
    for h in 0..2 {
        let ql = &b[64 * h..][..64];
        let qh = &b[128 + 32 * h..][..32];
        let sc = &b[192 + 8 * h..][..8];
        let out = &mut out[128 * h..][..128];
        for l in 0..32 {
            // Quarter g: nibbles of ql[l] (g 0, 2) or ql[l + 32] (g 1, 3), 2 bits of qh[l].
            let value = |g: usize, nibble: u8| {
                let q = i32::from(nibble | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
                d * f32::from(sc[l / 16 + 2 * g] as i8) * q as f32
            };
            out[l] = value(0, ql[l] & 0x0f);
            out[l + 32] = value(1, ql[l + 32] & 0x0f);
            out[l + 64] = value(2, ql[l] >> 4);
            out[l + 96] = value(3, ql[l + 32] >> 4);
        }
    }
}

/// `value / step`, or 0 for a zero step.
fn ratio(value: f32, step: f32) -> f32 {
    if step == 0.0 {
        0.0
    } else {
        value / step
    }
}

/// Encodes 256 values as one `Q4_K` (`levels` 15) or `Q5_K` (`levels` 31) super-block:
/// per sub-block an affine range from min(0, min x) to max x, its scale and minimum
/// quantized to 6 bits against the super-block's largest.
pub fn encode_q45_k(x: &[f32], levels: u8) -> Vec<u8> {
    let mut scale = [0f32; 8];
    let mut min = [0f32; 8];
    for (s, sub) in x.chunks(32).enumerate() {
        let lo = sub.iter().copied().fold(0.0f32, f32::min);
        let hi = sub.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scale[s] = (hi - lo).max(0.0) / f32::from(levels);
        min[s] = -lo;
    }
    let d = f16::from_f32(scale.iter().fold(0.0f32, |a, &v| a.max(v)) / 63.0);
    let dmin = f16::from_f32(min.iter().fold(0.0f32, |a, &v| a.max(v)) / 63.0);
    let six = |v: f32, step: f16| ratio(v, step.to_f32()).round().clamp(0.0, 63.0) as u8;
    let sc: [u8; 8] = std::array::from_fn(|s| six(scale[s], d));
    let m: [u8; 8] = std::array::from_fn(|s| six(min[s], dmin));
    let mut q = [0u8; QK_K];
    for (s, sub) in x.chunks(32).enumerate() {
        let step = d.to_f32() * f32::from(sc[s]);
        let offset = dmin.to_f32() * f32::from(m[s]);
        for (l, &v) in sub.iter().enumerate() {
            q[32 * s + l] = ratio(v + offset, step)
                .round()
                .clamp(0.0, f32::from(levels)) as u8;
        }
    }
    let mut out = d.to_le_bytes().to_vec();
    out.extend(dmin.to_le_bytes());
    out.extend(pack_scales(&sc, &m));
    if levels > 15 {
        let mut qh = [0u8; 32];
        for (e, &v) in q.iter().enumerate() {
            qh[e % 32] |= (v >> 4) << (e / 32);
        }
        out.extend(qh);
    }
    for c in 0..4 {
        out.extend((0..32).map(|l| (q[64 * c + l] & 0x0f) | ((q[64 * c + 32 + l] & 0x0f) << 4)));
    }
    out
}

/// Encodes 256 values as one `Q6_K` super-block: per sub-block of 16 a signed scale from
/// its value of largest magnitude, quantized to i8 against the super-block's largest.
pub fn encode_q6_k(x: &[f32]) -> Vec<u8> {
    let mut scale = [0f32; 16];
    for (s, sub) in x.chunks(16).enumerate() {
        let max = sub
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        scale[s] = max / -32.0;
    }
    let amax = scale.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let d = f16::from_f32(amax / 127.0);
    let sc: [i8; 16] =
        std::array::from_fn(|s| ratio(scale[s], d.to_f32()).round().clamp(-128.0, 127.0) as i8);
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for (e, &v) in x.iter().enumerate().take(QK_K) {
        let step = d.to_f32() * f32::from(sc[e / 16]);
        let q = (ratio(v, step).round().clamp(-32.0, 31.0) as i32 + 32) as u8;
        let (h, g, l) = (e / 128, (e % 128) / 32, e % 32);
        ql[h * 64 + (g & 1) * 32 + l] |= (q & 0x0f) << (4 * (g / 2));
        qh[h * 32 + l] |= (q >> 4) << (2 * g);
    }
    let mut out = ql.to_vec();
    out.extend(qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend(d.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u32) -> Vec<f32> {
        (0..QK_K as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2001;
                (h as f32 - 1000.0) / 700.0
            })
            .collect()
    }

    #[test]
    fn packed_scales_unpack_to_themselves() {
        let sc = [0, 1, 17, 63, 32, 5, 48, 60];
        let m = [63, 2, 0, 31, 16, 47, 33, 9];
        let q = pack_scales(&sc, &m);
        for j in 0..8 {
            assert_eq!(scale_min(j, &q), (sc[j], m[j]), "sub-block {j}");
        }
    }

    #[test]
    fn encoded_super_blocks_decode_near_the_values() {
        let x = values(3);
        let mut out = [0f32; QK_K];
        // Bounds: half a step of the coarsest sub-block plus the 6-bit scale rounding.
        for (bytes, fifth, bound) in [
            (encode_q45_k(&x, 15), Some(false), 0.14),
            (encode_q45_k(&x, 31), Some(true), 0.08),
            (encode_q6_k(&x), None, 0.04),
        ] {
            match fifth {
                Some(f) => decode_q45_k(&bytes, f, &mut out),
                None => decode_q6_k(&bytes, &mut out),
            }
            let err = x
                .iter()
                .zip(&out)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < bound, "{} bytes: max error {err}", bytes.len());
        }
        assert_eq!(encode_q45_k(&x, 15).len(), 144);
        assert_eq!(encode_q45_k(&x, 31).len(), 176);
        assert_eq!(encode_q6_k(&x).len(), 210);
    }

    /// A hand-built Q6_K super-block: element 200 (half 1, quarter 2, l 8) is the high
    /// nibble of ql[64 + 8] and bits 4..6 of qh[32 + 8], scaled by scale 12.
    #[test]
    fn q6_k_decodes_ggml_layout() {
        let mut b = vec![0u8; 210];
        b[72] = 0x50; // high nibble 5
        b[128 + 40] = 0b10 << 4; // high bits 2
        b[192 + 12] = (-3i8) as u8;
        b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        let mut out = [0f32; QK_K];
        decode_q6_k(&b, &mut out);
        // q = 5 | 2 << 4 = 37; value 0.5 * -3 * (37 - 32).
        assert_eq!(out[200], -7.5);
        // Every other element of sub-block 12 has q 0: 0.5 * -3 * -32.
        assert_eq!(out[199], 48.0);
        assert_eq!(out[0], 0.0);
    }
}
