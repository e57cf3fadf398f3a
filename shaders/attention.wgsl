// Scaled dot-product attention helpers; the products themselves run on the matmul kernel.
// Shapes: scores / probs [B, H, Tq, Tk] (rows r = (b * H + h) * Tq + i), keys and values
// [B, Hkv, Tk, Dh], query heads grouped g = H / Hkv per kv head (query head h reads kv head
// h / g), padding mask [B, Tk] (1 keep, 0 masked).
//
// expand_kv:  out[b, h, t, d] = x[b, h / g, t, d]                 ([B, Hkv, ..] -> [B, H, ..])
// reduce_kv:  out[b, k, t, d] = sum_{r < g} x[b, k * g + r, t, d]  (its transpose, for dk, dv)
// softmax_fwd(_masked): out[r, j] = softmax_j(scale * x[r, j]) over visible keys j, 0 for
//   masked keys; a row with no visible key is all zeros. Causal: query i sees key j when
//   j <= i + (Tk - Tq), so the last query sees every key (decoding with a KV cache).
// softmax_bwd: out[r, j] = scale * P[r, j] * (dP[r, j] - sum_k P[r, k] dP[r, k]),
//   P = x (the saved probabilities), dP = y.

struct Params {
    n: u32, cols: u32, tq: u32, heads: u32,
    causal: u32, group: u32, inner: u32, scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;

// Marks a masked score between the passes of the softmax (finite: no Inf arithmetic).
const MASKED: f32 = -3.0e38;
const VISIBLE_ABOVE: f32 = -1.0e38;

var<workgroup> red: array<f32, 256>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// n = B * H * inner elements out, inner = T * Dh, heads = H.
@compute @workgroup_size(256)
fn expand_kv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    let e = i % p.inner;
    let bh = i / p.inner;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let kv_heads = p.heads / p.group;
    out[i] = x[(b * kv_heads + h / p.group) * p.inner + e];
}

// n = B * Hkv * inner elements out; heads = Hkv here.
@compute @workgroup_size(256)
fn reduce_kv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    let e = i % p.inner;
    let bk = i / p.inner;
    var acc = 0.0;
    for (var r = 0u; r < p.group; r = r + 1u) {
        acc = acc + x[(bk * p.group + r) * p.inner + e];
    }
    out[i] = acc;
}

fn reduce_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Whether query i may see key j under the causal rule (always, when not causal).
fn causal_visible(i: u32, j: u32) -> bool {
    return p.causal == 0u || j + p.tq <= i + p.cols;
}

// Second half of the softmax: `out` holds the row's scaled scores, MASKED where hidden; each
// thread reads back only the columns it wrote (j = lid mod 256), so no storage barrier.
fn normalize_row(start: u32, lid: u32) {
    var m = MASKED;
    for (var j = lid; j < p.cols; j = j + 256u) { m = max(m, out[start + j]); }
    m = reduce_max(m, lid);
    var s = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) {
        let v = out[start + j];
        if (v > VISIBLE_ABOVE) { s = s + exp(v - m); }
    }
    s = reduce_sum(s, lid);
    // s >= 1 when any key is visible (the maximum contributes exp(0)); 0 otherwise.
    let inv = select(0.0, 1.0 / s, s > 0.5);
    for (var j = lid; j < p.cols; j = j + 256u) {
        let v = out[start + j];
        out[start + j] = select(0.0, exp(v - m) * inv, v > VISIBLE_ABOVE);
    }
}

// One workgroup per row; n = rows = B * H * Tq, cols = Tk.
@compute @workgroup_size(256)
fn softmax_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.n) { return; }
    let i = row % p.tq;
    let start = row * p.cols;
    for (var j = lid; j < p.cols; j = j + 256u) {
        out[start + j] = select(MASKED, p.scale * x[start + j], causal_visible(i, j));
    }
    normalize_row(start, lid);
}

// As softmax_fwd, also hiding keys whose padding mask is below 0.5.
@compute @workgroup_size(256)
fn softmax_fwd_masked(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.n) { return; }
    let i = row % p.tq;
    let b = row / (p.tq * p.heads);
    let start = row * p.cols;
    for (var j = lid; j < p.cols; j = j + 256u) {
        let keep = causal_visible(i, j) && mask[b * p.cols + j] > 0.5;
        out[start + j] = select(MASKED, p.scale * x[start + j], keep);
    }
    normalize_row(start, lid);
}

// One workgroup per row; n = rows, cols = Tk.
@compute @workgroup_size(256)
fn softmax_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.n) { return; }
    let start = row * p.cols;
    var acc = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) { acc = acc + x[start + j] * y[start + j]; }
    let dot = reduce_sum(acc, lid);
    for (var j = lid; j < p.cols; j = j + 256u) {
        out[start + j] = p.scale * x[start + j] * (y[start + j] - dot);
    }
}
