// 2-D convolution helpers around the tiled matmul (NCHW layout).
// Shape key: x [N, C, H, W], weight [OC, C, KH, KW], y [N, OC, OH, OW], K = C*KH*KW.
// Rows r = (n, oh, ow) and columns k = (c, kh, kw); n counts from the chunk's first image n0.
//   im2col:           cols[r, k] = x[n0 + n, c, oh*S - P + kh, ow*S - P + kw]   (0 in the padding)
//                     (count = rows * C: one thread per row and channel)
//   rows_to_nchw(_bias): y[n0 + n, oc, oh, ow] = rows[r, oc] (+ bias[oc])
//   nchw_to_rows:     rows[r, oc] = dy[n0 + n, oc, oh, ow]
//   col2im:           dx[n0 + n, c, h, w] = sum of dcols[r, k] over the (r, k) that read (h, w)
//   bias_grad:        db[oc] = sum over n, oh, ow of dy[n, oc, oh, ow] (one workgroup per oc)
// Flat kernels use 256 threads and i = gid.x + gid.y * nwg.x * 256; `count` bounds i (one
// thread per output element, except im2col).

struct Params {
    count: u32, n0: u32, n: u32, c: u32,
    h: u32, w: u32, oc: u32, oh: u32,
    ow: u32, kh: u32, kw: u32, stride: u32,
    pad: u32, _p0: u32, _p1: u32, _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

var<workgroup> red: array<f32, 256>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// One thread per (row, channel): writes that channel's KH*KW taps of the row.
@compute @workgroup_size(256)
fn im2col(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.count) { return; }
    let r = i / p.c;
    let ci = i % p.c;
    let ohw = p.oh * p.ow;
    let n = r / ohw;
    let s = r % ohw;
    // Padded coordinates of the window's corner: input pixel (yy - P, xx - P) when inside.
    let y0 = (s / p.ow) * p.stride;
    let x0 = (s % p.ow) * p.stride;
    let plane = ((p.n0 + n) * p.c + ci) * p.h;
    var out = (r * p.c + ci) * p.kh * p.kw;
    for (var ky = 0u; ky < p.kh; ky = ky + 1u) {
        let yy = y0 + ky;
        let row_in = yy >= p.pad && yy - p.pad < p.h;
        for (var kx = 0u; kx < p.kw; kx = kx + 1u) {
            let xx = x0 + kx;
            var v = 0.0;
            if (row_in && xx >= p.pad && xx - p.pad < p.w) {
                v = src[(plane + yy - p.pad) * p.w + xx - p.pad];
            }
            dst[out] = v;
            out = out + 1u;
        }
    }
}

@compute @workgroup_size(256)
fn rows_to_nchw_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.count) { return; }
    let ohw = p.oh * p.ow;
    let n = i / (p.oc * ohw);
    let o = (i / ohw) % p.oc;
    let s = i % ohw;
    dst[p.n0 * p.oc * ohw + i] = src[(n * ohw + s) * p.oc + o] + bias[o];
}

@compute @workgroup_size(256)
fn rows_to_nchw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.count) { return; }
    let ohw = p.oh * p.ow;
    let n = i / (p.oc * ohw);
    let o = (i / ohw) % p.oc;
    let s = i % ohw;
    dst[p.n0 * p.oc * ohw + i] = src[(n * ohw + s) * p.oc + o];
}

@compute @workgroup_size(256)
fn nchw_to_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.count) { return; }
    let ohw = p.oh * p.ow;
    let r = i / p.oc;
    let o = i % p.oc;
    dst[i] = src[((p.n0 + r / ohw) * p.oc + o) * ohw + r % ohw];
}

// Gather: output (oh, ow) reads padded (yy, xx) through tap (kh, kw) when oh*S + kh = yy,
// i.e. for ceil((yy + 1 - KH) / S) <= oh <= yy / S with kh = yy - oh*S (likewise ow).
@compute @workgroup_size(256)
fn col2im(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg);
    if (i >= p.count) { return; }
    let hw = p.h * p.w;
    let n = i / (p.c * hw);
    let ci = (i / hw) % p.c;
    let yy = (i % hw) / p.w + p.pad;
    let xx = (i % hw) % p.w + p.pad;
    var y_lo = 0u;
    if (yy + 1u > p.kh) { y_lo = (yy + 1u - p.kh + p.stride - 1u) / p.stride; }
    var x_lo = 0u;
    if (xx + 1u > p.kw) { x_lo = (xx + 1u - p.kw + p.stride - 1u) / p.stride; }
    let y_hi = min(yy / p.stride + 1u, p.oh);
    let x_hi = min(xx / p.stride + 1u, p.ow);
    let kk = p.c * p.kh * p.kw;
    let tap0 = ci * p.kh * p.kw;
    var acc = 0.0;
    for (var oy = y_lo; oy < y_hi; oy = oy + 1u) {
        let tap_row = tap0 + (yy - oy * p.stride) * p.kw;
        let row0 = (n * p.oh + oy) * p.ow;
        for (var ox = x_lo; ox < x_hi; ox = ox + 1u) {
            acc = acc + src[(row0 + ox) * kk + tap_row + xx - ox * p.stride];
        }
    }
    dst[p.n0 * p.c * hw + i] = acc;
}

@compute @workgroup_size(256)
fn bias_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = wg.x + wg.y * nwg.x;
    if (o >= p.count) { return; }
    let ohw = p.oh * p.ow;
    var acc = 0.0;
    for (var j = lid; j < p.n * ohw; j = j + 256u) {
        acc = acc + src[((j / ohw) * p.oc + o) * ohw + j % ohw];
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u) { dst[o] = red[0]; }
}
