//! Elementwise arithmetic with numpy broadcasting, its reverse (`sum_to`), scaling and the
//! in-place accumulation `dst += alpha * src` that gradient accumulation uses.
//!
//! Backward of `out = a op b` (dy given), each then summed back to the operand's shape:
//!   add: da = dy, db = dy;  sub: da = dy, db = -dy;  mul: da = dy b, db = dy a;
//!   div: da = dy / b, db = -dy a / b^2.

use bytemuck::{Pod, Zeroable};

use super::{common_backend, grid, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::{numel, DType, Tensor};

/// Most dimensions a broadcast op handles.
pub const MAX_RANK: usize = 8;

/// A binary arithmetic operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add = 0,
    /// a - b
    Sub = 1,
    /// a * b
    Mul = 2,
    /// a / b
    Div = 3,
}

/// The broadcast shape of two shapes (numpy rules), or a clear error.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    if rank > MAX_RANK {
        return Err(Error::shape(
            "broadcast",
            format!("rank {rank} exceeds {MAX_RANK}"),
        ));
    }
    let pad = |s: &[usize], i: usize| {
        if i + s.len() >= rank {
            s[i + s.len() - rank]
        } else {
            1
        }
    };
    (0..rank)
        .map(|i| match (pad(a, i), pad(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::shape(
                "broadcast",
                format!("{a:?} and {b:?} do not broadcast"),
            )),
        })
        .collect()
}

/// Strides of `shape` (row-major) seen through the broadcast `out` shape: 0 on broadcast axes.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; out.len()];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        let o = i + out.len() - shape.len();
        strides[o] = if shape[i] == 1 { 0 } else { stride };
        stride *= shape[i];
    }
    strides
}

fn pack(v: &[usize]) -> [[u32; 4]; 2] {
    let mut out = [[0u32; 4]; 2];
    for (i, x) in v.iter().enumerate() {
        out[i / 4][i % 4] = *x as u32;
    }
    out
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BinaryParams {
    n: u32,
    op: u32,
    rank: u32,
    alpha: f32,
    dims: [[u32; 4]; 2],
    sa: [[u32; 4]; 2],
    sb: [[u32; 4]; 2],
}

/// `a op b` with broadcasting.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    launch_binary(op as u32, 0.0, a, b)
}

/// `a + b` (broadcasting).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Add, a, b)
}

/// `a - b` (broadcasting).
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Sub, a, b)
}

/// `a * b` (broadcasting).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Mul, a, b)
}

/// `a / b` (broadcasting).
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Div, a, b)
}

/// `alpha * x`.
pub fn scale(x: &Tensor, alpha: f32) -> Result<Tensor> {
    launch_binary(5, alpha, x, x)
}

fn launch_binary(op: u32, alpha: f32, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let backend = common_backend("binary", &[a, b])?;
    require_f32("binary", &[a, b])?;
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let out = Tensor::uninit(&backend, &shape, DType::F32)?;
    let (sa, sb) = (
        broadcast_strides(a.shape(), &shape),
        broadcast_strides(b.shape(), &shape),
    );
    match &backend {
        Backend::Cpu => cpu::binary(
            op,
            alpha,
            &a.cpu_read()?,
            &b.cpu_read()?,
            &mut out.cpu_write()?,
            &shape,
            &sa,
            &sb,
        ),
        Backend::Gpu(gpu) => {
            let n = u32_len("binary", out.numel())?;
            let params = BinaryParams {
                n,
                op,
                rank: shape.len() as u32,
                alpha,
                dims: pack(&shape),
                sa: pack(&sa),
                sb: pack(&sb),
            };
            let kernel = Kernel::f32("elementwise", "binary");
            gpu.dispatch(
                kernel,
                bytemuck::bytes_of(&params),
                &[a.bind(1)?, b.bind(2)?, out.bind(3)?],
                grid(out.numel(), 256),
            )?;
        }
    }
    Ok(out)
}

/// Gradients of `a op b` with respect to a and b, each summed back to its operand's shape.
pub fn binary_backward(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (da, db) = match op {
        BinaryOp::Add => (dy.clone(), dy.clone()),
        BinaryOp::Sub => (dy.clone(), scale(dy, -1.0)?),
        BinaryOp::Mul => (mul(dy, b)?, mul(dy, a)?),
        BinaryOp::Div => {
            let da = div(dy, b)?;
            // -dy a / b^2 = -(dy / b) * (a / b)
            (da.clone(), scale(&mul(&da, &div(a, b)?)?, -1.0)?)
        }
    };
    Ok((sum_to(&da, a.shape())?, sum_to(&db, b.shape())?))
}

/// `dst += alpha * src` in place (same shapes).
pub fn axpy(dst: &Tensor, alpha: f32, src: &Tensor) -> Result<()> {
    let backend = common_backend("axpy", &[dst, src])?;
    if dst.numel() != src.numel() {
        return Err(Error::shape(
            "axpy",
            format!("{:?} += {:?}", dst.shape(), src.shape()),
        ));
    }
    match &backend {
        Backend::Cpu => {
            let s = src.cpu_read()?.to_vec();
            for (d, s) in dst.cpu_write()?.iter_mut().zip(&s) {
                *d += alpha * s;
            }
        }
        Backend::Gpu(gpu) => {
            let n = u32_len("axpy", dst.numel())?;
            let params = BinaryParams {
                n,
                op: 0,
                rank: 0,
                alpha,
                dims: [[0; 4]; 2],
                sa: [[0; 4]; 2],
                sb: [[0; 4]; 2],
            };
            gpu.dispatch(
                Kernel::f32("elementwise", "axpy"),
                bytemuck::bytes_of(&params),
                &[src.bind(2)?, dst.bind(3)?],
                grid(dst.numel(), 256),
            )?;
        }
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SumParams {
    n: u32,
    kept_rank: u32,
    red_rank: u32,
    red_count: u32,
    kept_dims: [[u32; 4]; 2],
    kept_strides: [[u32; 4]; 2],
    red_dims: [[u32; 4]; 2],
    red_strides: [[u32; 4]; 2],
}

/// Sum `x` over the axes that broadcasting expanded, giving `shape` (the reverse of
/// broadcasting `shape` to `x.shape()`).
pub fn sum_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.shape() == shape {
        return Ok(x.clone());
    }
    if numel(shape) == x.numel() {
        return x.reshape(shape);
    }
    if broadcast_shape(shape, x.shape())? != x.shape() {
        return Err(Error::shape(
            "sum_to",
            format!("{:?} does not broadcast to {:?}", shape, x.shape()),
        ));
    }
    let backend = x.backend();
    let out = Tensor::uninit(&backend, shape, DType::F32)?;
    // Split x's axes into kept (extent equal to the target's) and reduced ones.
    let full = x.shape();
    let target: Vec<usize> = broadcast_strides(shape, full)
        .iter()
        .zip(full)
        .map(|(s, d)| if *s == 0 && *d != 1 { 1 } else { *d })
        .collect();
    let mut x_strides = vec![0; full.len()];
    let mut stride = 1;
    for i in (0..full.len()).rev() {
        x_strides[i] = stride;
        stride *= full[i];
    }
    let (mut kd, mut ks, mut rd, mut rs) = (vec![], vec![], vec![], vec![]);
    for i in 0..full.len() {
        if target[i] == full[i] {
            kd.push(full[i]);
            ks.push(x_strides[i]);
        } else {
            rd.push(full[i]);
            rs.push(x_strides[i]);
        }
    }
    match &backend {
        Backend::Cpu => cpu::sum_to(&x.cpu_read()?, &mut out.cpu_write()?, &kd, &ks, &rd, &rs),
        Backend::Gpu(gpu) => {
            let params = SumParams {
                n: u32_len("sum_to", out.numel())?,
                kept_rank: kd.len() as u32,
                red_rank: rd.len() as u32,
                red_count: u32_len("sum_to", rd.iter().product())?,
                kept_dims: pack(&kd),
                kept_strides: pack(&ks),
                red_dims: pack(&rd),
                red_strides: pack(&rs),
            };
            gpu.dispatch(
                Kernel::f32("sum_to", "sum_to"),
                bytemuck::bytes_of(&params),
                &[x.bind(1)?, out.bind(2)?],
                grid(out.numel(), 256),
            )?;
        }
    }
    Ok(out)
}

/// The CPU reference.
pub(crate) mod cpu {
    /// Offset of the element at multi-index (decoded from `i` over `dims`) under `strides`.
    pub(crate) fn offset(mut i: usize, dims: &[usize], strides: &[usize]) -> usize {
        let mut off = 0;
        for d in (0..dims.len()).rev() {
            off += (i % dims[d]) * strides[d];
            i /= dims[d];
        }
        off
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn binary(
        op: u32,
        alpha: f32,
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        dims: &[usize],
        sa: &[usize],
        sb: &[usize],
    ) {
        // One monomorphised loop per op, so the op is not matched per element.
        match op {
            0 => rows(a, b, out, dims, sa, sb, |u, v| u + v),
            1 => rows(a, b, out, dims, sa, sb, |u, v| u - v),
            2 => rows(a, b, out, dims, sa, sb, |u, v| u * v),
            3 => rows(a, b, out, dims, sa, sb, |u, v| u / v),
            4 => rows(a, b, out, dims, sa, sb, |u, v| u + alpha * v),
            _ => rows(a, b, out, dims, sa, sb, |u, _| alpha * u),
        }
    }

    /// `out = f(a, b)` under broadcast strides, a row (the last axis) at a time: the offsets
    /// are decoded once per row and the row runs as a plain loop.
    fn rows(
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        dims: &[usize],
        sa: &[usize],
        sb: &[usize],
        f: impl Fn(f32, f32) -> f32,
    ) {
        let (Some((&n, outer)), Some((&ia, outer_a)), Some((&ib, outer_b))) =
            (dims.split_last(), sa.split_last(), sb.split_last())
        else {
            // Rank 0: one element.
            if let (Some(o), Some(&u), Some(&v)) = (out.first_mut(), a.first(), b.first()) {
                *o = f(u, v);
            }
            return;
        };
        if n == 0 {
            return;
        }
        for (r, row) in out.chunks_mut(n).enumerate() {
            let (oa, ob) = (offset(r, outer, outer_a), offset(r, outer, outer_b));
            match (ia, ib) {
                (1, 1) => {
                    for ((o, &u), &v) in row.iter_mut().zip(&a[oa..oa + n]).zip(&b[ob..ob + n]) {
                        *o = f(u, v);
                    }
                }
                (1, 0) => {
                    let v = b[ob];
                    for (o, &u) in row.iter_mut().zip(&a[oa..oa + n]) {
                        *o = f(u, v);
                    }
                }
                (0, 1) => {
                    let u = a[oa];
                    for (o, &v) in row.iter_mut().zip(&b[ob..ob + n]) {
                        *o = f(u, v);
                    }
                }
                _ => {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = f(a[oa + j * ia], b[ob + j * ib]);
                    }
                }
            }
        }
    }

    /// Sums over the reduced axes `rd` (strides `rs`) for every kept index; each output adds
    /// its terms in the order of the reduced index, whatever the loop order.
    pub(crate) fn sum_to(
        x: &[f32],
        out: &mut [f32],
        kd: &[usize],
        ks: &[usize],
        rd: &[usize],
        rs: &[usize],
    ) {
        let count: usize = rd.iter().product();
        let reduced: Vec<usize> = (0..count).map(|r| offset(r, rd, rs)).collect();
        let kept: Vec<usize> = (0..out.len()).map(|i| offset(i, kd, ks)).collect();
        out.fill(0.0);
        // Reduced index outermost: each pass reads x in the kept order (contiguous when the
        // kept axes are the innermost, as for bias gradients).
        for &ro in &reduced {
            for (o, &base) in out.iter_mut().zip(&kept) {
                *o += x[base + ro];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, check_gradient, pair, probe, random};

    const SHAPES: &[(&[usize], &[usize])] = &[
        (&[1], &[1]),
        (&[7], &[7]),
        (&[33, 7], &[7]),
        (&[33, 7], &[33, 1]),
        (&[5, 1, 9], &[1, 4, 1]),
        (&[257, 3], &[1]),
        (&[2, 3, 4, 5], &[3, 1, 5]),
    ];

    #[test]
    fn gpu_matches_cpu_with_broadcasting() {
        for (i, (sa, sb)) in SHAPES.iter().enumerate() {
            let (ac, ag) = pair(sa, i as u64);
            let (bc, _) = pair(sb, 50 + i as u64);
            let bc = add(&bc, &Tensor::scalar(&Backend::Cpu, 3.0).unwrap()).unwrap(); // keep division away from 0
            let bg = bc.to_backend(&ag.backend()).unwrap();
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                // Exactly rounded single operations: agreement to 1 ulp.
                assert_close(
                    &format!("{op:?} {sa:?} {sb:?}"),
                    &binary(op, &ag, &bg).unwrap(),
                    &binary(op, &ac, &bc).unwrap(),
                    1e-6,
                    1e-7,
                );
            }
            let dy = pair(&broadcast_shape(sa, sb).unwrap(), 99).0;
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                let (da, db) = binary_backward(op, &ac, &bc, &dy).unwrap();
                let dyg = dy.to_backend(&ag.backend()).unwrap();
                let (dag, dbg) = binary_backward(op, &ag, &bg, &dyg).unwrap();
                // Sums over broadcast axes: 1e-5 relative.
                assert_close("da", &dag, &da, 1e-5, 1e-6);
                assert_close("db", &dbg, &db, 1e-5, 1e-6);
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let (sa, sb): (&[usize], &[usize]) = (&[3, 4], &[4]);
        let av = random(12, 1, 1.0);
        let bv: Vec<f32> = random(4, 2, 1.0).iter().map(|x| x + 2.0).collect();
        let w = random(12, 3, 1.0);
        let a = Tensor::from_slice(&cpu, sa, &av).unwrap();
        let b = Tensor::from_slice(&cpu, sb, &bv).unwrap();
        let dy = Tensor::from_slice(&cpu, &[3, 4], &w).unwrap();
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            let (da, db) = binary_backward(op, &a, &b, &dy).unwrap();
            let fa = |x: &[f32]| {
                probe(
                    &binary(op, &Tensor::from_slice(&cpu, sa, x).unwrap(), &b)
                        .unwrap()
                        .to_vec()
                        .unwrap(),
                    &w,
                )
            };
            check_gradient(&format!("{op:?} da"), &av, &da.to_vec().unwrap(), fa, 1e-2);
            let fb = |x: &[f32]| {
                probe(
                    &binary(op, &a, &Tensor::from_slice(&cpu, sb, x).unwrap())
                        .unwrap()
                        .to_vec()
                        .unwrap(),
                    &w,
                )
            };
            check_gradient(&format!("{op:?} db"), &bv, &db.to_vec().unwrap(), fb, 1e-2);
        }
    }

    #[test]
    fn axpy_and_scale_match() {
        let (dc, dg) = pair(&[257], 1);
        let (sc, sg) = pair(&[257], 2);
        axpy(&dc, 0.5, &sc).unwrap();
        axpy(&dg, 0.5, &sg).unwrap();
        assert_close("axpy", &dg, &dc, 1e-6, 1e-7);
        assert_close(
            "scale",
            &scale(&sg, -2.0).unwrap(),
            &scale(&sc, -2.0).unwrap(),
            1e-6,
            0.0,
        );
    }

    #[test]
    fn incompatible_shapes_are_refused() {
        let (a, _) = pair(&[3, 4], 1);
        let (b, _) = pair(&[5], 2);
        assert!(matches!(add(&a, &b), Err(Error::Shape { .. })));
    }
}
