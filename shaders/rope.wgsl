// Rotary position embedding, "rotate half" convention (Llama / HF transformers): on x of shape
// [B, H, T, Dh], element pair (i, i + Dh/2) of position t is rotated by angle a = pos * theta_i:
//   out[i]        = x[i] cos a - dir * x[i + Dh/2] sin a
//   out[i + Dh/2] = x[i + Dh/2] cos a + dir * x[i] sin a
// with pos = offset + t, theta_i = 2^(-i * c) where c = 2 log2(base) / Dh (from the host), and
// dir = +1 forward, -1 backward (the inverse rotation). cos/sin are computed here in f32 from
// the f32 angle, after reducing it into [-pi, pi] (long contexts give angles in the thousands,
// where WGSL's sin/cos carry no accuracy guarantee). One thread per pair.

struct Params { pairs: u32, half: u32, seq: u32, offset: u32, c: f32, dir: f32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// 2 pi = A + B + C (Cody-Waite): A has 8 significant bits, so k * A is exact
// for k < 2^16 (angles below about 4e5).
const INV_TWO_PI: f32 = 0.15915494309189535;
const TWO_PI_A: f32 = 6.28125;
const TWO_PI_B: f32 = 0.0019353071693331003;
const TWO_PI_C: f32 = 1.0253376e-11;

fn reduce_angle(a: f32) -> f32 {
    let k = round(a * INV_TWO_PI);
    var r = a - k * TWO_PI_A;
    r = r - k * TWO_PI_B;
    return r - k * TWO_PI_C;
}

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= p.pairs) { return; }
    let i = idx % p.half;
    let row = idx / p.half;
    let pos = f32(p.offset + row % p.seq);
    let theta = exp2(-f32(i) * p.c);
    let r = reduce_angle(pos * theta);
    let cs = cos(r);
    let sn = p.dir * sin(r);
    let lo = row * 2u * p.half + i;
    let hi = lo + p.half;
    let a = x[lo];
    let b = x[hi];
    out[lo] = a * cs - b * sn;
    out[hi] = b * cs + a * sn;
}
