// Axis permutation (a gather): out[i] = x[offset of i's coordinates under the permuted
// strides]. Output dims and the input strides of each output axis are packed in vec4s.

struct Params {
    n: u32, rank: u32, _p0: u32, _p1: u32,
    dims: array<vec4<u32>, 2>,
    strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn at(v: array<vec4<u32>, 2>, i: u32) -> u32 {
    return v[i / 4u][i % 4u];
}

@compute @workgroup_size(256)
fn permute(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.n) { return; }
    var rest = i;
    var src = 0u;
    for (var d = 0u; d < p.rank; d = d + 1u) {
        let axis = p.rank - 1u - d;
        let size = at(p.dims, axis);
        src = src + (rest % size) * at(p.strides, axis);
        rest = rest / size;
    }
    out[i] = x[src];
}
