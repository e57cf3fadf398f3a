// Pointwise activations, forward and backward, side by side.
// Forward:  out = f(x).          Backward: out = f'(x) * dy  (dy at binding 2).
// GELU is the exact (erf) form; erf uses Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).

struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const INV_SQRT2: f32 = 0.70710678118654752;
const INV_SQRT_2PI: f32 = 0.39894228040143268;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

fn erf(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(256)
fn relu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = max(x[i], 0.0);
}

@compute @workgroup_size(256)
fn relu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    out[i] = select(0.0, dy[i], x[i] > 0.0);
}

@compute @workgroup_size(256)
fn gelu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    let v = x[i];
    out[i] = 0.5 * v * (1.0 + erf(v * INV_SQRT2));
}

// d/dx [x Phi(x)] = Phi(x) + x phi(x), Phi the normal CDF and phi its density.
@compute @workgroup_size(256)
fn gelu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    let v = x[i];
    let cdf = 0.5 * (1.0 + erf(v * INV_SQRT2));
    let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
    out[i] = dy[i] * (cdf + v * pdf);
}

@compute @workgroup_size(256)
fn silu_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    let v = x[i];
    out[i] = v * sigmoid(v);
}

// d/dx [x s(x)] = s(x) (1 + x (1 - s(x))).
@compute @workgroup_size(256)
fn silu_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n) { return; }
    let v = x[i];
    let s = sigmoid(v);
    out[i] = dy[i] * s * (1.0 + v * (1.0 - s));
}
