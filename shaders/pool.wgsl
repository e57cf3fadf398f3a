// Max pooling over NCHW planes (no padding), forward and backward.
// Shape key: x [N, C, H, W] as P = N*C planes of H x W, window K x K, stride S, y [N, C, OH, OW].
// Forward:  y[q, oh, ow] = max of the window at (oh*S, ow*S); arg[q, oh, ow] = h*W + w of the
//           first maximum in row-major window order (strict >), stored as f32 (exact < 2^24).
// Backward: dx[q, h, w] = sum of dy[q, oh, ow] over the windows that contain (h, w) and whose
//           arg is (h, w): a gather, so no atomics (at most one window when S >= K).
// 256 threads per workgroup, i = gid.x + gid.y * nwg.x * 256; `count` bounds i.

struct Params { count: u32, h: u32, w: u32, oh: u32, ow: u32, k: u32, s: u32, _p0: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> arg_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<storage, read_write> arg_out: array<f32>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn max_pool_fwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.count) { return; }
    let ohw = p.oh * p.ow;
    let base = (i / ohw) * p.h * p.w;
    let y0 = ((i % ohw) / p.ow) * p.s;
    let x0 = ((i % ohw) % p.ow) * p.s;
    var best_at = y0 * p.w + x0;
    var best = src[base + best_at];
    for (var ky = 0u; ky < p.k; ky = ky + 1u) {
        for (var kx = 0u; kx < p.k; kx = kx + 1u) {
            let at = (y0 + ky) * p.w + x0 + kx;
            let v = src[base + at];
            if (v > best) {
                best = v;
                best_at = at;
            }
        }
    }
    dst[i] = best;
    arg_out[i] = f32(best_at);
}

@compute @workgroup_size(256)
fn max_pool_bwd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.count) { return; }
    let hw = p.h * p.w;
    let at = i % hw;
    let yy = at / p.w;
    let xx = at % p.w;
    // Windows oh with oh*S <= yy < oh*S + K, i.e. ceil((yy + 1 - K) / S) <= oh <= yy / S.
    var y_lo = 0u;
    if (yy + 1u > p.k) { y_lo = (yy + 1u - p.k + p.s - 1u) / p.s; }
    var x_lo = 0u;
    if (xx + 1u > p.k) { x_lo = (xx + 1u - p.k + p.s - 1u) / p.s; }
    let y_hi = min(yy / p.s + 1u, p.oh);
    let x_hi = min(xx / p.s + 1u, p.ow);
    let out_base = (i / hw) * p.oh * p.ow;
    let mine = f32(at);
    var acc = 0.0;
    for (var oy = y_lo; oy < y_hi; oy = oy + 1u) {
        for (var ox = x_lo; ox < x_hi; ox = ox + 1u) {
            let o = out_base + oy * p.ow + ox;
            if (arg_in[o] == mine) { acc = acc + src[o]; }
        }
    }
    dst[i] = acc;
}
