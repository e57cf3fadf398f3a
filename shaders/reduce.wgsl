// Row sums: out[r] = alpha * sum_j f(x[r * cols + j]) for j < cols and r * cols + j < n,
// f = identity or square. One workgroup of 256 threads per row (rows in x then y of the grid).
// A full sum is two passes: rows of 4096 to partial sums, then one row over the partials.

struct Params { rows: u32, cols: u32, n: u32, square: u32, alpha: f32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn sum_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.rows) { return; }
    let start = row * p.cols;
    var acc = 0.0;
    for (var j = lid; j < p.cols; j = j + 256u) {
        let i = start + j;
        if (i < p.n) {
            let v = x[i];
            acc = acc + select(v, v * v, p.square == 1u);
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { partial[lid] = partial[lid] + partial[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u) { out[row] = p.alpha * partial[0]; }
}

// Broadcast a scalar gradient: out[i] = alpha * x[i / cols] (x holds one value per row).
@compute @workgroup_size(256)
fn expand_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) { return; }
    out[i] = p.alpha * x[i / p.cols];
}
