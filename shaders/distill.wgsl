// Distillation losses. Row kernels use one workgroup of 256 threads per row of `cols`
// elements (rows in x then y of the grid); the scalar output gradient dy[0] is read here,
// on the device.
// KL with temperature (a = student logits, b = teacher logits, it = 1/T):
//   q = softmax(a it), p = softmax(b it)
//   kl_rows:  out[r] = scale * sum_j p_j (log p_j - log q_j)           (scale = T^2)
//   kl_bwd:   out[r, j] = dy[0] * scale * (q_j - p_j)                  (scale = T / N)
// MSE over n elements:
//   sq_diff_rows: out[r] = scale * sum of (a - b)^2 over elements [r cols, (r + 1) cols) < n
//   mse_bwd:      da = dy[0] * scale * (a - b), db = -da               (scale = 2 / n)
// Cosine embedding, na = max(|a_r|, eps), nb = max(|b_r|, eps), c = a_r . b_r / (na nb):
//   cos_rows: out[r] = 1 - c
//   cos_bwd:  da = -dy[0] * scale * (b / (na nb) - [|a| > eps] c a / na^2), db likewise
//             (scale = 1 / N; a clamped norm is a constant, hence the indicator)

struct Params { rows: u32, cols: u32, n: u32, _p0: u32, scale: f32, inv_t: f32, eps: f32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> out_b: array<f32>;

var<workgroup> red: array<vec4<f32>, 256>;

fn reduce_sum(v: vec4<f32>, lid: u32) -> vec4<f32> {
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

fn reduce_max(v: vec4<f32>, lid: u32) -> vec4<f32> {
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

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// log-normalisers of the tempered student (x) and teacher (y) rows: m + log(sum exp(z - m)).
fn kl_log_norms(start: u32, lid: u32) -> vec2<f32> {
    var m = vec4<f32>(-3.4e38, -3.4e38, 0.0, 0.0);
    for (var j = lid; j < p.cols; j = j + 256u) {
        m = max(m, vec4<f32>(a[start + j] * p.inv_t, b[start + j] * p.inv_t, 0.0, 0.0));
    }
    let mx = reduce_max(m, lid);
    var e = vec4<f32>(0.0);
    for (var j = lid; j < p.cols; j = j + 256u) {
        e = e + vec4<f32>(exp(a[start + j] * p.inv_t - mx.x), exp(b[start + j] * p.inv_t - mx.y), 0.0, 0.0);
    }
    let s = reduce_sum(e, lid);
    return mx.xy + log(s.xy);
}

@compute @workgroup_size(256)
fn kl_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let ln = kl_log_norms(start, lid);
    var acc = vec4<f32>(0.0);
    for (var j = lid; j < p.cols; j = j + 256u) {
        let lq = a[start + j] * p.inv_t - ln.x;
        let lp = b[start + j] * p.inv_t - ln.y;
        acc.x = acc.x + exp(lp) * (lp - lq);
    }
    let kl = reduce_sum(acc, lid).x;
    if (lid == 0u) { out[row] = p.scale * kl; }
}

@compute @workgroup_size(256)
fn kl_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let ln = kl_log_norms(start, lid);
    let g = dy[0] * p.scale;
    for (var j = lid; j < p.cols; j = j + 256u) {
        let q = exp(a[start + j] * p.inv_t - ln.x);
        let pt = exp(b[start + j] * p.inv_t - ln.y);
        out[start + j] = g * (q - pt);
    }
}

@compute @workgroup_size(256)
fn sq_diff_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    var acc = vec4<f32>(0.0);
    for (var j = lid; j < p.cols; j = j + 256u) {
        let i = start + j;
        if (i < p.n) {
            let d = a[i] - b[i];
            acc.x = acc.x + d * d;
        }
    }
    let total = reduce_sum(acc, lid).x;
    if (lid == 0u) { out[row] = p.scale * total; }
}

@compute @workgroup_size(256)
fn mse_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    let d = dy[0] * p.scale * (a[i] - b[i]);
    out[i] = d;
    out_b[i] = -d;
}

// (a . b, |a|^2, |b|^2) of the row starting at `start`.
fn cos_sums(start: u32, lid: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    for (var j = lid; j < p.cols; j = j + 256u) {
        let u = a[start + j];
        let v = b[start + j];
        acc = acc + vec4<f32>(u * v, u * u, v * v, 0.0);
    }
    return reduce_sum(acc, lid);
}

@compute @workgroup_size(256)
fn cos_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let s = cos_sums(row * p.cols, lid);
    let na = max(sqrt(s.y), p.eps);
    let nb = max(sqrt(s.z), p.eps);
    if (lid == 0u) { out[row] = 1.0 - s.x / (na * nb); }
}

@compute @workgroup_size(256)
fn cos_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let s = cos_sums(start, lid);
    let ra = sqrt(s.y);
    let rb = sqrt(s.z);
    let na = max(ra, p.eps);
    let nb = max(rb, p.eps);
    let inv = 1.0 / (na * nb);
    let c = s.x * inv;
    let ka = select(0.0, c / (na * na), ra > p.eps);
    let kb = select(0.0, c / (nb * nb), rb > p.eps);
    let g = -dy[0] * p.scale;
    for (var j = lid; j < p.cols; j = j + 256u) {
        let u = a[start + j];
        let v = b[start + j];
        out[start + j] = g * (v * inv - ka * u);
        out_b[start + j] = g * (u * inv - kb * v);
    }
}
