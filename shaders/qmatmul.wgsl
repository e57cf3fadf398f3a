// Products with a frozen block-quantized matrix W [rows, cols], dequantized in registers.
// W is stored as blocks of consecutive elements of a row, each block `wpb` u32 words.
// 32-element blocks (formats 0..4): word 0 holds the f16 scale d (low half) and, for Q4_1
// and Q5_1, the f16 minimum m (high half); then the quants, little-endian bytes as in GGML:
//   Q8_0 (format 0): 8 words, 32 signed bytes q, value d * q;
//   Q4_0 (format 1): 4 words, 16 bytes, element j < 16 in the low nibble of byte j and
//                    element j + 16 in its high nibble, value d * (q - 8);
//   Q4_1 (format 2): the same nibbles, value d * q + m;
//   Q5_0 (format 3): 1 word qh (bit j: the fifth bit of element j), then the nibbles,
//                    value d * (q - 16);
//   Q5_1 (format 4): the same, value d * q + m.
// k-quant super-blocks of 256 elements (formats 5..7) are GGML's bytes padded to words:
//   Q4_K (format 5): word 0 d | dmin << 16, words 1..3 the 6-bit sub-scales and minima of 8
//                    sub-blocks of 32, words 4..35 nibbles: sub-block s in the low (s even)
//                    or high (s odd) nibbles of bytes 32 (s / 2) ..; value d sc q - dmin m;
//   Q5_K (format 6): as Q4_K, then words 4..11 qh (bit s of byte l: element l of sub-block
//                    s), words 12..43 the nibbles;
//   Q6_K (format 7): words 0..31 ql, 32..47 qh, 48..51 16 i8 scales (sub-blocks of 16),
//                    word 52 d; value d * sc * (q - 32).
// Entry points:
//   qmatmul_nt  y[M, N] = x[M, K] W^T      (N = rows, K = cols: a linear layer's forward)
//   qmatmul_nn  y[M, N] = x[M, K] W        (K = rows, N = cols: its input gradient)
//   qmatvec_nt  the forward for M <= 4 (decoding): one workgroup per output column
//   qembedding  y[i, :] = W[ids[i], :]     (rows gathered by f32 ids; out of range: zeros)

struct Params {
    m: u32, n: u32, k: u32, format: u32,
    rows: u32, cols: u32, wpb: u32, _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// Byte `i` (0-based, within the block at word `base`) as an unsigned value.
fn byte_at(base: u32, i: u32) -> u32 {
    return extractBits(w[base + i / 4u], 8u * (i % 4u), 8u);
}

// Scale and minimum of k-quant sub-block j (0..7) from the 12 bytes at word base + 1.
fn scale_min_k4(base: u32, j: u32) -> vec2<f32> {
    let b = base * 4u + 4u; // byte offset of the scales, counted from word 0 of W
    if (j < 4u) {
        return vec2<f32>(f32(byte_at(0u, b + j) & 63u), f32(byte_at(0u, b + j + 4u) & 63u));
    }
    let hi = byte_at(0u, b + j + 4u);
    let sc = (hi & 15u) | ((byte_at(0u, b + j - 4u) >> 6u) << 4u);
    let m = (hi >> 4u) | ((byte_at(0u, b + j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

// Elements 8 * part .. 8 * part + 7 of sub-block s of the Q4_K / Q5_K super-block at base.
fn dequant8_q45k(base: u32, s: u32, part: u32) -> array<f32, 8> {
    let hdr = unpack2x16float(w[base]);
    let sm = scale_min_k4(base, s);
    let scale = hdr.x * sm.x;
    let minimum = hdr.y * sm.y;
    var qs = base + 4u;
    if (p.format == 6u) { qs = base + 12u; }
    let w0 = w[qs + 8u * (s / 2u) + 2u * part];
    let w1 = w[qs + 8u * (s / 2u) + 2u * part + 1u];
    let shift = (s % 2u) * 4u;
    var h0 = 0u;
    var h1 = 0u;
    if (p.format == 6u) {
        h0 = w[base + 4u + 2u * part];
        h1 = w[base + 5u + 2u * part];
    }
    var out: array<f32, 8>;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let q0 = extractBits(w0, 8u * j + shift, 4u) | (extractBits(h0, 8u * j + s, 1u) << 4u);
        let q1 = extractBits(w1, 8u * j + shift, 4u) | (extractBits(h1, 8u * j + s, 1u) << 4u);
        out[j] = scale * f32(q0) - minimum;
        out[j + 4u] = scale * f32(q1) - minimum;
    }
    return out;
}

// Elements 8 * part .. 8 * part + 7 of sub-block s (of 32) of the Q6_K super-block at base.
fn dequant8_q6k(base: u32, s: u32, part: u32) -> array<f32, 8> {
    let d = unpack2x16float(w[base + 52u]).x;
    let h = s / 4u;
    let g = s % 4u;
    let lo = base + h * 16u + (g % 2u) * 8u + 2u * part;
    let hi = base + 32u + h * 8u + 2u * part;
    let sc = f32(bitcast<i32>(byte_at(base + 48u, h * 8u + part / 2u + 2u * g) << 24u) >> 24u);
    let scale = d * sc;
    var out: array<f32, 8>;
    for (var i = 0u; i < 2u; i = i + 1u) {
        let l = w[lo + i];
        let hb = w[hi + i];
        for (var j = 0u; j < 4u; j = j + 1u) {
            let q = extractBits(l, 8u * j + 4u * (g / 2u), 4u) | (extractBits(hb, 8u * j + 2u * g, 2u) << 4u);
            out[4u * i + j] = scale * (f32(q) - 32.0);
        }
    }
    return out;
}

// Elements 8 * part .. 8 * part + 7 of block `blk` (of 32 elements) of row `row`.
fn dequant8(row: u32, blk: u32, part: u32) -> array<f32, 8> {
    if (p.format >= 5u) {
        let base = (row * (p.cols / 256u) + blk / 8u) * p.wpb;
        if (p.format == 7u) { return dequant8_q6k(base, blk % 8u, part); }
        return dequant8_q45k(base, blk % 8u, part);
    }
    let base = (row * (p.cols / 32u) + blk) * p.wpb;
    let hdr = unpack2x16float(w[base]);
    var out: array<f32, 8>;
    if (p.format == 0u) {
        let w0 = bitcast<i32>(w[base + 1u + 2u * part]);
        let w1 = bitcast<i32>(w[base + 2u + 2u * part]);
        for (var j = 0u; j < 4u; j = j + 1u) {
            out[j] = hdr.x * f32(extractBits(w0, 8u * j, 8u));
            out[j + 4u] = hdr.x * f32(extractBits(w1, 8u * j, 8u));
        }
        return out;
    }
    // 4- and 5-bit blocks: nibbles after the header (and qh for Q5_0 / Q5_1).
    var qs = base + 1u;
    var qh = 0u;
    if (p.format >= 3u) {
        qs = base + 2u;
        qh = w[base + 1u];
    }
    let w0 = w[qs + 2u * (part % 2u)];
    let w1 = w[qs + 1u + 2u * (part % 2u)];
    let shift = (part / 2u) * 4u;
    var offset = hdr.y;
    if (p.format == 1u) { offset = -8.0 * hdr.x; }
    if (p.format == 3u) { offset = -16.0 * hdr.x; }
    for (var j = 0u; j < 4u; j = j + 1u) {
        let q0 = extractBits(w0, 8u * j + shift, 4u) | (extractBits(qh, 8u * part + j, 1u) << 4u);
        let q1 = extractBits(w1, 8u * j + shift, 4u) | (extractBits(qh, 8u * part + j + 4u, 1u) << 4u);
        out[j] = f32(q0) * hdr.x + offset;
        out[j + 4u] = f32(q1) * hdr.x + offset;
    }
    return out;
}

// Tiles: 64 x 64 outputs per workgroup of 16 x 16 threads (4 x 4 each), K step 32 (a block).
var<workgroup> tile_x: array<f32, 2048>; // [32][64]
var<workgroup> tile_w: array<f32, 2048>; // [32][64]

// Loads x rows row0.. and k columns k0.. into tile_x (k-major), zeros outside.
fn load_x(tid: u32, row0: u32, k0: u32) {
    for (var i = 0u; i < 8u; i = i + 1u) {
        let e = tid + i * 256u;
        let mm = e / 32u;
        let kk = e % 32u;
        var v = 0.0;
        if (row0 + mm < p.m && k0 + kk < p.k) { v = x[(row0 + mm) * p.k + k0 + kk]; }
        tile_x[kk * 64u + mm] = v;
    }
}

// Multiplies the two tiles into the thread's 4 x 4 accumulators.
fn tile_product(lid: vec2<u32>, acc: ptr<function, array<f32, 16>>) {
    for (var kk = 0u; kk < 32u; kk = kk + 1u) {
        var av: array<f32, 4>;
        var bv: array<f32, 4>;
        for (var i = 0u; i < 4u; i = i + 1u) {
            av[i] = tile_x[kk * 64u + lid.y + i * 16u];
            bv[i] = tile_w[kk * 64u + lid.x + i * 16u];
        }
        for (var i = 0u; i < 4u; i = i + 1u) {
            for (var j = 0u; j < 4u; j = j + 1u) {
                (*acc)[i * 4u + j] = fma(av[i], bv[j], (*acc)[i * 4u + j]);
            }
        }
    }
}

fn store_y(lid: vec2<u32>, row0: u32, col0: u32, acc: ptr<function, array<f32, 16>>) {
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + lid.y + i * 16u;
        if (row >= p.m) { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + lid.x + j * 16u;
            if (col >= p.n) { continue; }
            y[row * p.n + col] = (*acc)[i * 4u + j];
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn qmatmul_nt(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * 64u;
    let col0 = wg.x * 64u;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 = k0 + 32u) {
        load_x(tid, row0, k0);
        // Thread tid dequantizes 8 elements of W row col0 + tid / 4 (output column).
        let nn = tid / 4u;
        let part = tid % 4u;
        var v: array<f32, 8>;
        if (col0 + nn < p.n) { v = dequant8(col0 + nn, k0 / 32u, part); }
        for (var j = 0u; j < 8u; j = j + 1u) {
            tile_w[(part * 8u + j) * 64u + nn] = v[j];
        }
        workgroupBarrier();
        tile_product(lid.xy, &acc);
        workgroupBarrier();
    }
    store_y(lid.xy, row0, col0, &acc);
}

@compute @workgroup_size(16, 16, 1)
fn qmatmul_nn(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * 64u;
    let col0 = wg.x * 64u;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 = k0 + 32u) {
        load_x(tid, row0, k0);
        // Thread tid dequantizes 8 elements of W row k0 + tid / 8: two blocks span 64 columns.
        let rr = tid / 8u;
        let q = tid % 8u;
        let col = col0 + q * 8u;
        var v: array<f32, 8>;
        if (k0 + rr < p.k && col < p.n) { v = dequant8(k0 + rr, col / 32u, q % 4u); }
        for (var j = 0u; j < 8u; j = j + 1u) {
            tile_w[rr * 64u + q * 8u + j] = v[j];
        }
        workgroupBarrier();
        tile_product(lid.xy, &acc);
        workgroupBarrier();
    }
    store_y(lid.xy, row0, col0, &acc);
}

var<workgroup> partial: array<f32, 256>; // [4 rows of x][64 threads]

@compute @workgroup_size(64, 1, 1)
fn qmatvec_nt(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) t: u32) {
    let n = wg.x + wg.y * nwg.x;
    var acc = vec4<f32>(0.0);
    if (n < p.n) {
        let pieces = (p.k / 32u) * 4u;
        for (var e = t; e < pieces; e = e + 64u) {
            let v = dequant8(n, e / 4u, e % 4u);
            let lo = vec4<f32>(v[0], v[1], v[2], v[3]);
            let hi = vec4<f32>(v[4], v[5], v[6], v[7]);
            let k = e * 8u;
            for (var r = 0u; r < p.m; r = r + 1u) {
                let at = r * p.k + k;
                let xl = vec4<f32>(x[at], x[at + 1u], x[at + 2u], x[at + 3u]);
                let xh = vec4<f32>(x[at + 4u], x[at + 5u], x[at + 6u], x[at + 7u]);
                acc[r] = acc[r] + dot(lo, xl) + dot(hi, xh);
            }
        }
    }
    for (var r = 0u; r < 4u; r = r + 1u) { partial[r * 64u + t] = acc[r]; }
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s / 2u) {
        if (t < s) {
            for (var r = 0u; r < 4u; r = r + 1u) {
                partial[r * 64u + t] = partial[r * 64u + t] + partial[r * 64u + t + s];
            }
        }
        workgroupBarrier();
    }
    if (t < p.m && n < p.n) { y[t * p.n + n] = partial[t * 64u]; }
}

// One thread per 8 output elements; p.m is the number of ids.
@compute @workgroup_size(64, 1, 1)
fn qembedding(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = gid.x + gid.y * nwg.x * 64u;
    let per_row = p.cols / 8u;
    if (e >= p.m * per_row) { return; }
    let i = e / per_row;
    let piece = e % per_row;
    let id = x[i];
    var v: array<f32, 8>;
    if (id >= 0.0 && id < f32(p.rows) && id == floor(id)) {
        v = dequant8(u32(id), piece / 4u, piece % 4u);
    }
    for (var j = 0u; j < 8u; j = j + 1u) {
        y[i * p.cols + piece * 8u + j] = v[j];
    }
}
