// Products with a frozen block-quantized matrix W [rows, cols], dequantized in registers.
// W is stored as blocks of 32 consecutive elements of a row, each block `wpb` u32 words:
// word 0 holds the f16 scale d (low half) and, for Q4_1, the f16 minimum m (high half);
// then the quants, little-endian bytes as in GGML:
//   Q8_0 (format 0): 8 words, 32 signed bytes q, value d * q;
//   Q4_0 (format 1): 4 words, 16 bytes, element j < 16 in the low nibble of byte j and
//                    element j + 16 in its high nibble, value d * (q - 8);
//   Q4_1 (format 2): the same nibbles, value d * q + m.
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

// Elements 8 * part .. 8 * part + 7 of block `blk` of row `row`.
fn dequant8(row: u32, blk: u32, part: u32) -> array<f32, 8> {
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
    let w0 = w[base + 1u + 2u * (part % 2u)];
    let w1 = w[base + 2u + 2u * (part % 2u)];
    let shift = (part / 2u) * 4u;
    var offset = hdr.y;
    if (p.format == 1u) { offset = -8.0 * hdr.x; }
    for (var j = 0u; j < 4u; j = j + 1u) {
        out[j] = f32(extractBits(w0, 8u * j + shift, 4u)) * hdr.x + offset;
        out[j + 4u] = f32(extractBits(w1, 8u * j + shift, 4u)) * hdr.x + offset;
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
