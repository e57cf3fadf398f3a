// LayerNorm and RMSNorm over the last axis (rows of `cols` elements), forward and backward.
// Row kernels use one workgroup of 256 threads per row (rows in x then y of the grid).
//   LayerNorm: xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps), y = xhat * gamma + beta
//   RMSNorm:   rstd = 1 / sqrt(mean(x^2) + eps), y = x * rstd * gamma
// Backward, with g = gamma * dy:
//   LayerNorm: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   RMSNorm:   dx = rstd * (g - x * rstd^2 * mean(g * x))
// dgamma (and dbeta) are column sums over rows, without float atomics: the *_params kernels
// write per-chunk partial sums [chunks, cols] over `span` rows each, and col_sum adds the
// chunks up (skipped by the host when there is one chunk).

struct Params { rows: u32, cols: u32, eps: f32, span: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read> mean: array<f32>;
@group(0) @binding(6) var<storage, read> rstd: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(9) var<storage, read_write> rstd_out: array<f32>;
@group(0) @binding(10) var<storage, read_write> part_gamma: array<f32>;
@group(0) @binding(11) var<storage, read_write> part_beta: array<f32>;
@group(0) @binding(12) var<storage, read> parts: array<f32>;

var<workgroup> red: array<vec2<f32>, 256>;

fn reduce_sum(v: vec2<f32>, lid: u32) -> vec2<f32> {
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

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn ln_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let inv_c = 1.0 / f32(p.cols);
    var acc = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) { acc = acc + x[start + j]; }
    let mu = reduce_sum(vec2<f32>(acc, 0.0), lid).x * inv_c;
    // Two passes: the variance from centred values, never E[x^2] - E[x]^2.
    var sq = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) {
        let d = x[start + j] - mu;
        sq = sq + d * d;
    }
    let r = inverseSqrt(reduce_sum(vec2<f32>(sq, 0.0), lid).x * inv_c + p.eps);
    for (var j = lid; j < p.cols; j = j + 256u) {
        out[start + j] = (x[start + j] - mu) * r * gamma[j] + beta[j];
    }
    if (lid == 0u) {
        mean_out[row] = mu;
        rstd_out[row] = r;
    }
}

@compute @workgroup_size(256)
fn rms_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    var sq = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) {
        let v = x[start + j];
        sq = sq + v * v;
    }
    let r = inverseSqrt(reduce_sum(vec2<f32>(sq, 0.0), lid).x / f32(p.cols) + p.eps);
    for (var j = lid; j < p.cols; j = j + 256u) { out[start + j] = x[start + j] * r * gamma[j]; }
    if (lid == 0u) { rstd_out[row] = r; }
}

@compute @workgroup_size(256)
fn ln_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let mu = mean[row];
    let r = rstd[row];
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < p.cols; j = j + 256u) {
        let g = gamma[j] * dy[start + j];
        acc = acc + vec2<f32>(g, g * (x[start + j] - mu) * r);
    }
    let m = reduce_sum(acc, lid) / f32(p.cols);
    for (var j = lid; j < p.cols; j = j + 256u) {
        let xhat = (x[start + j] - mu) * r;
        out[start + j] = r * (gamma[j] * dy[start + j] - m.x - xhat * m.y);
    }
}

@compute @workgroup_size(256)
fn rms_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let r = rstd[row];
    var acc = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) { acc = acc + gamma[j] * dy[start + j] * x[start + j]; }
    let k = reduce_sum(vec2<f32>(acc, 0.0), lid).x / f32(p.cols) * r * r;
    for (var j = lid; j < p.cols; j = j + 256u) {
        out[start + j] = r * (gamma[j] * dy[start + j] - x[start + j] * k);
    }
}

// Thread i = chunk * cols + c sums rows [chunk * span, min(rows, (chunk + 1) * span)) of
// column c: dy * xhat into part_gamma[i] and dy into part_beta[i].
@compute @workgroup_size(256)
fn ln_params(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let chunk = i / p.cols;
    let c = i % p.cols;
    let r0 = chunk * p.span;
    if (r0 >= max(p.rows, 1u)) { return; }
    let r1 = min(p.rows, r0 + p.span);
    var acc = vec2<f32>(0.0, 0.0);
    for (var r = r0; r < r1; r = r + 1u) {
        let g = dy[r * p.cols + c];
        acc = acc + vec2<f32>(g * (x[r * p.cols + c] - mean[r]) * rstd[r], g);
    }
    part_gamma[i] = acc.x;
    part_beta[i] = acc.y;
}

// As ln_params for RMSNorm: dy * x * rstd into part_gamma[i].
@compute @workgroup_size(256)
fn rms_params(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    let chunk = i / p.cols;
    let c = i % p.cols;
    let r0 = chunk * p.span;
    if (r0 >= max(p.rows, 1u)) { return; }
    let r1 = min(p.rows, r0 + p.span);
    var acc = 0.0;
    for (var r = r0; r < r1; r = r + 1u) {
        acc = acc + dy[r * p.cols + c] * x[r * p.cols + c] * rstd[r];
    }
    part_gamma[i] = acc;
}

// out[c] = sum over the `rows` chunks of parts[k * cols + c].
@compute @workgroup_size(256)
fn col_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = flat_index(gid, nwg);
    if (c >= p.cols) { return; }
    var acc = 0.0;
    for (var k = 0u; k < p.rows; k = k + 1u) { acc = acc + parts[k * p.cols + c]; }
    out[c] = acc;
}
