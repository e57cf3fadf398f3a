// Elementwise arithmetic with numpy broadcasting over up to 8 dimensions, and its reverse:
// summing a broadcast gradient back to an operand's shape.
// Index math: dims and strides are packed in two vec4s each, outermost first.

struct Params {
    n: u32, op: u32, rank: u32, alpha: f32,
    dims: array<vec4<u32>, 2>,
    sa: array<vec4<u32>, 2>,
    sb: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn at(v: array<vec4<u32>, 2>, i: u32) -> u32 {
    return v[i / 4u][i % 4u];
}

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// Offsets into x and y of output element `i`.
fn offsets(i: u32) -> vec2<u32> {
    var rest = i;
    var oa = 0u;
    var ob = 0u;
    for (var d = 0u; d < p.rank; d = d + 1u) {
        let axis = p.rank - 1u - d;
        let size = at(p.dims, axis);
        let c = rest % size;
        rest = rest / size;
        oa = oa + c * at(p.sa, axis);
        ob = ob + c * at(p.sb, axis);
    }
    return vec2<u32>(oa, ob);
}

// op: 0 add, 1 sub, 2 mul, 3 div, 4 x + alpha * y, 5 alpha * x
@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    let o = offsets(i);
    let u = x[o.x];
    let v = y[o.y];
    var r: f32;
    switch p.op {
        case 0u: { r = u + v; }
        case 1u: { r = u - v; }
        case 2u: { r = u * v; }
        case 3u: { r = u / v; }
        case 4u: { r = u + p.alpha * v; }
        default: { r = p.alpha * u; }
    }
    out[i] = r;
}

// In-place accumulation: out[i] = out[i] + alpha * y[i]  (gradients accumulate with +=).
@compute @workgroup_size(256)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = out[i] + p.alpha * y[i];
}
