// Batched tiled matmul: C[b] = op(A[b]) * op(B[b]), op = identity or transpose.
// Shapes: op(A) is M x K, op(B) is K x N, C is M x N, all row-major.
// A is K x M when ta = 1; B is N x K when tb = 1. A batch stride of 0 broadcasts.
// Tiles: 64 x 64 of C per workgroup of 16 x 16 threads, each thread 4 x 4 outputs, K step 16.
// `T` (f32 or f16) is the storage type of A and B, prepended by the runtime; C is f32.

struct Params {
    m: u32, n: u32, k: u32, ta: u32,
    tb: u32, stride_a: u32, stride_b: u32, stride_c: u32,
    _p0: u32, _p1: u32, _p2: u32, _p3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>; // [BK][BM]
var<workgroup> tile_b: array<f32, 1024>; // [BK][BN]

fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) { return 0.0; }
    if (p.ta == 1u) { return f32(a[base + kk * p.m + row]); }
    return f32(a[base + row * p.k + kk]);
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if (kk >= p.k || col >= p.n) { return 0.0; }
    if (p.tb == 1u) { return f32(b[base + col * p.k + kk]); }
    return f32(b[base + kk * p.n + col]);
}

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let batch = wg.z;
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let tid = lid.y * 16u + lid.x;
    let base_a = batch * p.stride_a;
    let base_b = batch * p.stride_b;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 = k0 + BK) {
        for (var i = 0u; i < 4u; i = i + 1u) {
            let e = tid + i * 256u;
            // Consecutive threads read consecutive addresses in either layout.
            var mm = e / BK;
            var ka = e % BK;
            if (p.ta == 1u) { mm = e % BM; ka = e / BM; }
            tile_a[ka * BM + mm] = load_a(base_a, row0 + mm, k0 + ka);
            var nn = e % BN;
            var kb = e / BN;
            if (p.tb == 1u) { nn = e / BK; kb = e % BK; }
            tile_b[kb * BN + nn] = load_b(base_b, k0 + kb, col0 + nn);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk = kk + 1u) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i = i + 1u) {
                av[i] = tile_a[kk * BM + lid.y + i * 16u];
                bv[i] = tile_b[kk * BN + lid.x + i * 16u];
            }
            for (var i = 0u; i < 4u; i = i + 1u) {
                for (var j = 0u; j < 4u; j = j + 1u) {
                    acc[i * 4u + j] = fma(av[i], bv[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    let base_c = batch * p.stride_c;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = row0 + lid.y + i * 16u;
        if (row >= p.m) { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + lid.x + j * 16u;
            if (col >= p.n) { continue; }
            let at = base_c + row * p.n + col;
            c[at] = acc[i * 4u + j];
        }
    }
}

// The large-tile configuration: 128 x 128 of C per workgroup of 256 threads, each thread
// 8 x 8 outputs (rows ty*4.. and 64+ty*4.., the same for columns, so the vec4 reads of
// workgroup memory do not collide in banks), K step 8, two workgroup buffers so the next
// tile's global loads overlap this tile's arithmetic with one barrier per step.

const WM: u32 = 128u;
const WN: u32 = 128u;
const WK: u32 = 8u;

var<workgroup> wide_a: array<array<vec4<f32>, 32>, 16>; // [buffer * WK + k][m / 4]
var<workgroup> wide_b: array<array<vec4<f32>, 32>, 16>; // [buffer * WK + k][n / 4]

// The 4 values of A this thread moves into workgroup memory for the K step at k0.
fn wide_load_a(base: u32, row0: u32, k0: u32, tid: u32) -> vec4<f32> {
    if (p.ta == 1u) {
        let kk = k0 + tid / 32u;
        let m = row0 + (tid % 32u) * 4u;
        return vec4<f32>(load_a(base, m, kk), load_a(base, m + 1u, kk),
                         load_a(base, m + 2u, kk), load_a(base, m + 3u, kk));
    }
    let m = row0 + tid / 2u;
    let kk = k0 + (tid % 2u) * 4u;
    return vec4<f32>(load_a(base, m, kk), load_a(base, m, kk + 1u),
                     load_a(base, m, kk + 2u), load_a(base, m, kk + 3u));
}

fn wide_load_b(base: u32, col0: u32, k0: u32, tid: u32) -> vec4<f32> {
    if (p.tb == 1u) {
        let n = col0 + tid / 2u;
        let kk = k0 + (tid % 2u) * 4u;
        return vec4<f32>(load_b(base, kk, n), load_b(base, kk + 1u, n),
                         load_b(base, kk + 2u, n), load_b(base, kk + 3u, n));
    }
    let kk = k0 + tid / 32u;
    let n = col0 + (tid % 32u) * 4u;
    return vec4<f32>(load_b(base, kk, n), load_b(base, kk, n + 1u),
                     load_b(base, kk, n + 2u), load_b(base, kk, n + 3u));
}

// Stores the loaded values k-major: along m (or n) when they run along it, else one
// component in each of 4 k rows.
fn wide_store(buffer: u32, tid: u32, va: vec4<f32>, vb: vec4<f32>) {
    let at = buffer * WK;
    if (p.ta == 1u) {
        wide_a[at + tid / 32u][tid % 32u] = va;
    } else {
        let m = tid / 2u;
        let kk = at + (tid % 2u) * 4u;
        for (var j = 0u; j < 4u; j = j + 1u) { wide_a[kk + j][m / 4u][m % 4u] = va[j]; }
    }
    if (p.tb == 1u) {
        let n = tid / 2u;
        let kk = at + (tid % 2u) * 4u;
        for (var j = 0u; j < 4u; j = j + 1u) { wide_b[kk + j][n / 4u][n % 4u] = vb[j]; }
    } else {
        wide_b[at + tid / 32u][tid % 32u] = vb;
    }
}

@compute @workgroup_size(256, 1, 1)
fn matmul_wide(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let batch = wg.z;
    let row0 = wg.y * WM;
    let col0 = wg.x * WN;
    let tx = tid % 16u;
    let ty = tid / 16u;
    let base_a = batch * p.stride_a;
    let base_b = batch * p.stride_b;
    var acc: array<vec4<f32>, 16>; // [row i of 8][column half h] -> acc[i * 2 + h]
    let steps = (p.k + WK - 1u) / WK;
    var va = wide_load_a(base_a, row0, 0u, tid);
    var vb = wide_load_b(base_b, col0, 0u, tid);
    wide_store(0u, tid, va, vb);
    workgroupBarrier();
    for (var s = 0u; s < steps; s = s + 1u) {
        let more = s + 1u < steps;
        if (more) {
            va = wide_load_a(base_a, row0, (s + 1u) * WK, tid);
            vb = wide_load_b(base_b, col0, (s + 1u) * WK, tid);
        }
        let at = (s % 2u) * WK;
        for (var kk = 0u; kk < WK; kk = kk + 1u) {
            let a0 = wide_a[at + kk][ty];
            let a1 = wide_a[at + kk][16u + ty];
            let b0 = wide_b[at + kk][tx];
            let b1 = wide_b[at + kk][16u + tx];
            for (var i = 0u; i < 4u; i = i + 1u) {
                acc[i * 2u] = fma(vec4<f32>(a0[i]), b0, acc[i * 2u]);
                acc[i * 2u + 1u] = fma(vec4<f32>(a0[i]), b1, acc[i * 2u + 1u]);
                acc[8u + i * 2u] = fma(vec4<f32>(a1[i]), b0, acc[8u + i * 2u]);
                acc[8u + i * 2u + 1u] = fma(vec4<f32>(a1[i]), b1, acc[8u + i * 2u + 1u]);
            }
        }
        if (more) {
            wide_store((s + 1u) % 2u, tid, va, vb);
        }
        workgroupBarrier();
    }
    let base_c = batch * p.stride_c;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let row = row0 + (i / 4u) * 64u + ty * 4u + i % 4u;
        if (row >= p.m) { continue; }
        for (var h = 0u; h < 2u; h = h + 1u) {
            let v = acc[i * 2u + h];
            for (var j = 0u; j < 4u; j = j + 1u) {
                let col = col0 + h * 64u + tx * 4u + j;
                if (col < p.n) { c[base_c + row * p.n + col] = v[j]; }
            }
        }
    }
}
