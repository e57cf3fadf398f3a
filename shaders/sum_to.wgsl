// The reverse of broadcasting: out[i] = sum of src over the positions that broadcast to
// output element i. Kept axes (those of the output) and reduced axes are described by their
// extents and their strides in src, outermost first, packed in vec4s.

fn at(v: array<vec4<u32>, 2>, i: u32) -> u32 {
    return v[i / 4u][i % 4u];
}

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

struct SumParams {
    n: u32, kept_rank: u32, red_rank: u32, red_count: u32,
    kept_dims: array<vec4<u32>, 2>,
    kept_strides: array<vec4<u32>, 2>,
    red_dims: array<vec4<u32>, 2>,
    red_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> q: SumParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn sum_to(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= q.n) { return; }
    var rest = i;
    var base = 0u;
    for (var d = 0u; d < q.kept_rank; d = d + 1u) {
        let axis = q.kept_rank - 1u - d;
        let size = at(q.kept_dims, axis);
        base = base + (rest % size) * at(q.kept_strides, axis);
        rest = rest / size;
    }
    var acc = 0.0;
    for (var r = 0u; r < q.red_count; r = r + 1u) {
        var rr = r;
        var off = base;
        for (var d = 0u; d < q.red_rank; d = d + 1u) {
            let axis = q.red_rank - 1u - d;
            let size = at(q.red_dims, axis);
            off = off + (rr % size) * at(q.red_strides, axis);
            rr = rr / size;
        }
        acc = acc + src[off];
    }
    dst[i] = acc;
}
