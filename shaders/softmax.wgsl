// Softmax and log-softmax over the last axis: one workgroup of 256 threads per row of
// `cols` elements (rows in x then y of the grid).
// Forward:  softmax y = exp(x - m) / s,  log-softmax y = (x - m) - log(s),
//           with m the row max and s = sum_j exp(x_j - m) (so s >= 1: no overflow, no log 0).
// Backward from the saved output y (binding 1) and dy (binding 2):
//   softmax:      dx = y * (dy - sum_j dy_j y_j)
//   log-softmax:  dx = dy - exp(y) * sum_j dy_j

struct Params { rows: u32, cols: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 256>;

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

// The row max m and s = sum_j exp(x_j - m) of the row starting at `start`.
fn max_and_sum(start: u32, lid: u32) -> vec2<f32> {
    var m = -3.4e38;
    for (var j = lid; j < p.cols; j = j + 256u) { m = max(m, x[start + j]); }
    let mx = reduce_max(m, lid);
    var acc = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) { acc = acc + exp(x[start + j] - mx); }
    return vec2<f32>(mx, reduce_sum(acc, lid));
}

@compute @workgroup_size(256)
fn softmax_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let ms = max_and_sum(start, lid);
    let inv = 1.0 / ms.y;
    for (var j = lid; j < p.cols; j = j + 256u) { out[start + j] = exp(x[start + j] - ms.x) * inv; }
}

@compute @workgroup_size(256)
fn log_softmax_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let ms = max_and_sum(start, lid);
    // (x - m) first: exact for x near m, so large logits keep their small log-probabilities.
    let ls = log(ms.y);
    for (var j = lid; j < p.cols; j = j + 256u) { out[start + j] = (x[start + j] - ms.x) - ls; }
}

@compute @workgroup_size(256)
fn softmax_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    var acc = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) { acc = acc + dy[start + j] * x[start + j]; }
    let dot = reduce_sum(acc, lid);
    for (var j = lid; j < p.cols; j = j + 256u) { out[start + j] = x[start + j] * (dy[start + j] - dot); }
}

@compute @workgroup_size(256)
fn log_softmax_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    var acc = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) { acc = acc + dy[start + j]; }
    let total = reduce_sum(acc, lid);
    for (var j = lid; j < p.cols; j = j + 256u) { out[start + j] = dy[start + j] - exp(x[start + j]) * total; }
}
