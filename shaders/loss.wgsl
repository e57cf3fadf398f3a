// Cross-entropy from logits, one workgroup per row (N rows of C classes).
// Forward:  loss[r] = logsumexp(z[r]) - z[r, y[r]]   (0 where y[r] is outside [0, C): ignored)
// Backward: dz[r, c] = dy[0] * scale * (softmax(z[r])[c] - [c == y[r]])   (0 for ignored rows)
// Labels arrive as f32 (exact integers).

struct Params { rows: u32, cols: u32, scale: f32, _p0: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;

var<workgroup> red: array<f32, 256>;

fn row_max(start: u32, lid: u32) -> f32 {
    var m = -3.4e38;
    for (var j = lid; j < p.cols; j = j + 256u) { m = max(m, z[start + j]); }
    red[lid] = m;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn row_sum_exp(start: u32, lid: u32, m: f32) -> f32 {
    var acc = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) { acc = acc + exp(z[start + j] - m); }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn label_of(row: u32) -> i32 {
    let y = labels[row];
    if (y < 0.0 || y >= f32(p.cols)) { return -1; }
    return i32(y);
}

@compute @workgroup_size(256)
fn cross_entropy_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let m = row_max(start, lid);
    let s = row_sum_exp(start, lid, m);
    if (lid == 0u) {
        let y = label_of(row);
        if (y < 0) { out[row] = 0.0; } else { out[row] = log(s) + m - z[start + u32(y)]; }
    }
}

@compute @workgroup_size(256)
fn cross_entropy_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    let m = row_max(start, lid);
    let s = row_sum_exp(start, lid, m);
    let y = label_of(row);
    let g = dy[0] * p.scale;
    for (var j = lid; j < p.cols; j = j + 256u) {
        if (y < 0) {
            out[start + j] = 0.0;
        } else {
            let sm = exp(z[start + j] - m) / s;
            out[start + j] = g * (sm - select(0.0, 1.0, j == u32(y)));
        }
    }
}
