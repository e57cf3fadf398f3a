// Embedding lookup: a gather of table rows by token id, and its scatter-add backward without
// float atomics. Table `[V, D]`, ids `[N]` as f32 integers, out / dy `[N, D]`.
// Ids outside [0, V) cannot be reported from a kernel: both entry points clamp them into
// [0, V - 1] (the same row in forward and backward), so a bad id reads and trains a real row.

struct Params { n: u32, dim: u32, vocab: u32, tokens: u32, blocks: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;

// Columns one workgroup of the backward accumulates: 256 threads x 4 accumulators.
const BLOCK: u32 = 1024u;

var<workgroup> hit: array<u32, 256>;

// The row of position `n`: the id truncated, then clamped into [0, V - 1].
fn row_of(n: u32) -> u32 {
    return min(u32(max(ids[n], 0.0)), p.vocab - 1u);
}

// out[n, c] = table[id(n), c], one thread per output element (n = N * D).
@compute @workgroup_size(256)
fn embedding_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) { return; }
    let n = i / p.dim;
    let c = i % p.dim;
    out[i] = table[row_of(n) * p.dim + c];
}

// dtable[v, c] = sum over positions n with id(n) == v of dy[n, c], in increasing n (so the
// result is deterministic). One workgroup per (row v, block of 1024 columns): the workgroup
// scans the ids 256 at a time into `hit`, then every thread adds the matching dy rows into
// its 4 columns. Rows no id names get zeros. Rows are indexed r = v * blocks + block.
@compute @workgroup_size(256)
fn embedding_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = wg.x + wg.y * nwg.x;
    if (r >= p.vocab * p.blocks) { return; }
    let v = r / p.blocks;
    let c0 = (r % p.blocks) * BLOCK + lid;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var start = 0u; start < p.tokens; start = start + 256u) {
        let n = start + lid;
        hit[lid] = select(0u, 1u, n < p.tokens && row_of(min(n, p.tokens - 1u)) == v);
        workgroupBarrier();
        let count = min(256u, p.tokens - start);
        for (var k = 0u; k < count; k = k + 1u) {
            if (hit[k] == 1u) {
                let base = (start + k) * p.dim;
                for (var j = 0u; j < 4u; j = j + 1u) {
                    let c = c0 + j * 256u;
                    if (c < p.dim) { acc[j] = acc[j] + dy[base + c]; }
                }
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j = j + 1u) {
        let c = c0 + j * 256u;
        if (c < p.dim) { out[v * p.dim + c] = acc[j]; }
    }
}
