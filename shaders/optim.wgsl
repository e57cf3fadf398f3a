// Fused optimizer steps over one flat parameter buffer, and global-norm gradient clipping.
// clip[0] = global gradient norm, clip[1] = scale applied to every gradient (<= 1).
// A non-finite norm skips the step entirely (weights and moments unchanged).

struct Params {
    n: u32, _p0: u32, _p1: u32, _p2: u32,
    lr: f32, beta1: f32, beta2: f32, eps: f32,
    weight_decay: f32, bias1: f32, bias2: f32, momentum: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read> clip: array<f32>;

fn not_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// AdamW (Loshchilov & Hutter): decoupled weight decay, bias-corrected moments.
@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n || not_finite(clip[0])) { return; }
    let grad = g[i] * clip[1];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * grad;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * grad * grad;
    m[i] = mi;
    v[i] = vi;
    let update = (mi / p.bias1) / (sqrt(vi / p.bias2) + p.eps);
    w[i] = w[i] - p.lr * (update + p.weight_decay * w[i]);
}

// SGD with momentum (PyTorch convention: buf = momentum * buf + grad; w -= lr * buf),
// with decoupled weight decay.
@compute @workgroup_size(256)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.n || not_finite(clip[0])) { return; }
    let grad = g[i] * clip[1];
    let buf = p.momentum * m[i] + grad;
    m[i] = buf;
    w[i] = w[i] - p.lr * (buf + p.weight_decay * w[i]);
}

// clip = [norm, min(1, max_norm / (norm + 1e-6))] from the sum of squares in g[0];
// max_norm <= 0 disables clipping (scale 1). Uses lr as max_norm.
@compute @workgroup_size(1)
fn clip_scale() {
    let norm = sqrt(g[0]);
    w[0] = norm;
    w[1] = select(1.0, min(1.0, p.lr / (norm + 1e-6)), p.lr > 0.0);
}
