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
