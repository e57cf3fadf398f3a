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

// The same product without workgroup memory or barriers, for CPU-emulated adapters
// (lavapipe, SwiftShader, WARP), where "shared" memory is ordinary memory and every barrier
// splits the kernel: each invocation computes a 4 x 4 block straight from the operands.
@compute @workgroup_size(8, 8, 1)
fn matmul_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let batch = gid.z;
    let row0 = gid.y * 8u;
    let col0 = gid.x * 4u;
    if (row0 >= p.m || col0 >= p.n) { return; }
    // Element strides of rows/k in A and of k/columns in B, whichever way they are stored.
    var a_row = p.k;
    var a_k = 1u;
    if (p.ta == 1u) { a_row = 1u; a_k = p.m; }
    var b_k = p.n;
    var b_col = 1u;
    if (p.tb == 1u) { b_k = 1u; b_col = p.k; }
    // Edge blocks re-read the last row/column instead of branching in the loop.
    let last = p.m - 1u;
    let base_a = batch * p.stride_a;
    let ra0 = vec4<u32>(min(row0, last), min(row0 + 1u, last), min(row0 + 2u, last), min(row0 + 3u, last)) * a_row + base_a;
    let ra1 = vec4<u32>(min(row0 + 4u, last), min(row0 + 5u, last), min(row0 + 6u, last), min(row0 + 7u, last)) * a_row + base_a;
    let cb = vec4<u32>(min(col0, p.n - 1u), min(col0 + 1u, p.n - 1u), min(col0 + 2u, p.n - 1u), min(col0 + 3u, p.n - 1u)) * b_col + batch * p.stride_b;
    var acc: array<vec4<f32>, 8>;
    for (var kk = 0u; kk < p.k; kk = kk + 1u) {
        let ka = kk * a_k;
        let kb = kk * b_k;
        let bv = vec4<f32>(f32(b[cb.x + kb]), f32(b[cb.y + kb]), f32(b[cb.z + kb]), f32(b[cb.w + kb]));
        acc[0] = acc[0] + vec4<f32>(f32(a[ra0.x + ka])) * bv;
        acc[1] = acc[1] + vec4<f32>(f32(a[ra0.y + ka])) * bv;
        acc[2] = acc[2] + vec4<f32>(f32(a[ra0.z + ka])) * bv;
        acc[3] = acc[3] + vec4<f32>(f32(a[ra0.w + ka])) * bv;
        acc[4] = acc[4] + vec4<f32>(f32(a[ra1.x + ka])) * bv;
        acc[5] = acc[5] + vec4<f32>(f32(a[ra1.y + ka])) * bv;
        acc[6] = acc[6] + vec4<f32>(f32(a[ra1.z + ka])) * bv;
        acc[7] = acc[7] + vec4<f32>(f32(a[ra1.w + ka])) * bv;
    }
    let base_c = batch * p.stride_c;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let row = row0 + i;
        if (row >= p.m) { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + j;
            if (col >= p.n) { continue; }
            let at = base_c + row * p.n + col;
            c[at] = acc[i][j];
        }
    }
}
