//! 2-D convolution over NCHW tensors, on the GPU by im2col and the tiled matmul.
//!
//! Shape key: x `[N, C, H, W]`, weight `[OC, C, KH, KW]`, bias `[OC]`, y `[N, OC, OH, OW]` with
//! `OH = (H + 2P - KH) / S + 1` (floor; likewise OW), `K = C*KH*KW`, rows `R = N*OH*OW`.
//! Forward (GPU): cols `[R, K]` = im2col(x); `Y_rows [R, OC] = cols W^T`; y = NCHW(Y_rows) + b.
//! Backward, with `dY_rows [R, OC]` the rows layout of dy:
//!   `dW = dY_rows^T cols`,  `db[oc] = sum over n, oh, ow of dy`,  `dcols = dY_rows W`,
//!   `dx = col2im(dcols)`: each input pixel gathers the cols entries that read it (no atomics).
//! The GPU path works through the batch in chunks of images so that one chunk's cols stays
//! within a byte budget (and the adapter's binding limit). The CPU reference is a direct
//! convolution and its direct backward, independent of im2col.

use bytemuck::{Pod, Zeroable};

use super::matmul::matmul_t;
use super::{common_backend, grid, groups_for, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::{Gpu, Kernel};
use crate::error::{Error, Result};
use crate::graph::{Graph, Var};
use crate::tensor::{DType, Tensor};

/// Bytes of im2col columns one GPU chunk may hold (capped by the adapter's binding limit).
const COLS_BUDGET: usize = 64 << 20;

/// Resolved sizes of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oc: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Geom> {
        let (&[n, c, h, wd], &[oc, wc, kh, kw]) = (x, w) else {
            return Err(Error::shape(
                "conv2d",
                format!("x {x:?} must be [N, C, H, W] and weight {w:?} [OC, C, KH, KW]"),
            ));
        };
        if wc != c {
            return Err(Error::shape(
                "conv2d",
                format!("x {x:?} has {c} channels, weight {w:?} expects {wc}"),
            ));
        }
        if stride == 0 || kh == 0 || kw == 0 {
            return Err(Error::shape(
                "conv2d",
                format!("stride {stride} and kernel {kh}x{kw} must be at least 1"),
            ));
        }
        let padded = |e: usize| {
            pad.checked_mul(2)
                .and_then(|p2| e.checked_add(p2))
                .unwrap_or(usize::MAX)
        };
        let (ph, pw) = (padded(h), padded(wd));
        if ph < kh || pw < kw || ph == usize::MAX || pw == usize::MAX {
            return Err(Error::shape(
                "conv2d",
                format!("kernel {kh}x{kw} does not fit the padded input {h}x{wd} + 2*{pad}"),
            ));
        }
        let (oh, ow) = ((ph - kh) / stride + 1, (pw - kw) / stride + 1);
        let product = |dims: &[usize]| dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if product(&[n, oc, oh, ow]).is_none() || product(&[oh, ow, c, kh, kw, 4]).is_none() {
            return Err(Error::shape(
                "conv2d",
                format!("a {oh}x{ow} output (padding {pad}) is too large to address"),
            ));
        }
        Ok(Geom {
            n,
            c,
            h,
            w: wd,
            oc,
            kh,
            kw,
            stride,
            pad,
            oh,
            ow,
        })
    }

    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    fn out_shape(&self) -> [usize; 4] {
        [self.n, self.oc, self.oh, self.ow]
    }

    /// Images per GPU chunk so that `images * OH*OW * K` f32 fit `budget` bytes (at least one).
    fn images_per_chunk(&self, budget: usize) -> usize {
        let per_image = (self.oh * self.ow * self.k() * 4).max(1);
        (budget / per_image).clamp(1, self.n.max(1))
    }

    fn params(&self, count: usize, n0: usize) -> Result<Params> {
        let v = |n: usize| u32_len("conv2d", n);
        Ok(Params {
            count: v(count)?,
            n0: v(n0)?,
            n: v(self.n)?,
            c: v(self.c)?,
            h: v(self.h)?,
            w: v(self.w)?,
            oc: v(self.oc)?,
            oh: v(self.oh)?,
            ow: v(self.ow)?,
            kh: v(self.kh)?,
            kw: v(self.kw)?,
            stride: v(self.stride)?,
            pad: v(self.pad)?,
            _pad: [0; 3],
        })
    }

    /// Every tensor the kernels index must be addressable with u32.
    fn check_u32(&self, budget: usize) -> Result<()> {
        let chunk = self.images_per_chunk(budget) * self.oh * self.ow;
        for n in [
            self.n * self.c * self.h * self.w,
            self.n * self.oc * self.oh * self.ow,
            chunk * self.k(),
            chunk * self.oc,
        ] {
            u32_len("conv2d", n)?;
        }
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    count: u32,
    n0: u32,
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    oc: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    _pad: [u32; 3],
}

fn check_bias(b: Option<&Tensor>, oc: usize) -> Result<()> {
    match b {
        Some(b) if b.shape() != [oc] => Err(Error::shape(
            "conv2d",
            format!("bias {:?} must be [{oc}]", b.shape()),
        )),
        _ => Ok(()),
    }
}

fn check_dy(dy: &Tensor, g: &Geom) -> Result<()> {
    if dy.shape() != g.out_shape() {
        return Err(Error::shape(
            "conv2d backward",
            format!("dy {:?} must be {:?}", dy.shape(), g.out_shape()),
        ));
    }
    Ok(())
}

fn budget(gpu: &Gpu) -> usize {
    COLS_BUDGET.min(usize::try_from(gpu.capabilities().max_binding).unwrap_or(usize::MAX))
}

/// `y = conv(x, w) + b` with the given stride and zero padding on every side.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let mut operands = vec![x, w];
    operands.extend(b);
    let backend = common_backend("conv2d", &operands)?;
    require_f32("conv2d", &operands)?;
    let g = Geom::new(x.shape(), w.shape(), stride, padding)?;
    check_bias(b, g.oc)?;
    match &backend {
        Backend::Cpu => {
            let y = Tensor::uninit(&backend, &g.out_shape(), DType::F32)?;
            let bias = b.map(|b| b.cpu_read()).transpose()?;
            cpu::forward(
                &x.cpu_read()?,
                &w.cpu_read()?,
                bias.as_deref(),
                &mut y.cpu_write()?,
                &g,
            );
            Ok(y)
        }
        Backend::Gpu(gpu) => gpu_forward(gpu, x, w, b, &g, budget(gpu)),
    }
}

/// Gradients of [`conv2d`] with respect to `(x, w, b)`; `wanted` says which to compute (the
/// others come back `None`). The bias gradient depends on `dy` only.
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    stride: usize,
    padding: usize,
    wanted: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    let backend = common_backend("conv2d", &[x, w, dy])?;
    require_f32("conv2d", &[x, w, dy])?;
    let g = Geom::new(x.shape(), w.shape(), stride, padding)?;
    check_dy(dy, &g)?;
    match &backend {
        Backend::Cpu => {
            let (xs, ws, gs) = (x.cpu_read()?, w.cpu_read()?, dy.cpu_read()?);
            let (dx, dw, db) = cpu::backward(&xs, &ws, &gs, &g);
            let make = |want: bool, shape: &[usize], v: Vec<f32>| {
                want.then(|| Tensor::from_slice(&backend, shape, &v))
                    .transpose()
            };
            Ok([
                make(wanted[0], x.shape(), dx)?,
                make(wanted[1], w.shape(), dw)?,
                make(wanted[2], &[g.oc], db)?,
            ])
        }
        Backend::Gpu(gpu) => gpu_backward(gpu, x, w, dy, &g, wanted, budget(gpu)),
    }
}

/// One chunk's im2col columns `[nb*OH*OW, K]` for images `n0 .. n0 + nb`.
fn im2col(gpu: &Gpu, x: &Tensor, g: &Geom, n0: usize, nb: usize) -> Result<Tensor> {
    let rows = nb * g.oh * g.ow;
    let cols = Tensor::uninit(&x.backend(), &[rows, g.k()], DType::F32)?;
    // One thread per (row, channel).
    let threads = rows * g.c;
    let params = g.params(threads, n0)?;
    gpu.dispatch(
        Kernel::f32("conv", "im2col"),
        bytemuck::bytes_of(&params),
        &[x.bind(1)?, cols.bind(3)?],
        grid(threads, 256),
    )?;
    Ok(cols)
}

/// One chunk of dy in rows layout `[nb*OH*OW, OC]`.
fn dy_rows(gpu: &Gpu, dy: &Tensor, g: &Geom, n0: usize, nb: usize) -> Result<Tensor> {
    let rows = Tensor::uninit(&dy.backend(), &[nb * g.oh * g.ow, g.oc], DType::F32)?;
    let params = g.params(rows.numel(), n0)?;
    gpu.dispatch(
        Kernel::f32("conv", "nchw_to_rows"),
        bytemuck::bytes_of(&params),
        &[dy.bind(1)?, rows.bind(3)?],
        grid(rows.numel(), 256),
    )?;
    Ok(rows)
}

fn gpu_forward(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    g: &Geom,
    budget: usize,
) -> Result<Tensor> {
    g.check_u32(budget)?;
    let y = Tensor::uninit(&x.backend(), &g.out_shape(), DType::F32)?;
    let wm = w.reshape(&[g.oc, g.k()])?;
    let per = g.images_per_chunk(budget);
    for n0 in (0..g.n).step_by(per) {
        let nb = per.min(g.n - n0);
        let rows = matmul_t(&im2col(gpu, x, g, n0, nb)?, &wm, false, true)?;
        let count = rows.numel();
        let params = g.params(count, n0)?;
        match b {
            Some(b) => gpu.dispatch(
                Kernel::f32("conv", "rows_to_nchw_bias"),
                bytemuck::bytes_of(&params),
                &[rows.bind(1)?, b.bind(2)?, y.bind(3)?],
                grid(count, 256),
            )?,
            None => gpu.dispatch(
                Kernel::f32("conv", "rows_to_nchw"),
                bytemuck::bytes_of(&params),
                &[rows.bind(1)?, y.bind(3)?],
                grid(count, 256),
            )?,
        }
    }
    Ok(y)
}

fn gpu_backward(
    gpu: &Gpu,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &Geom,
    wanted: [bool; 3],
    budget: usize,
) -> Result<[Option<Tensor>; 3]> {
    g.check_u32(budget)?;
    let backend = x.backend();
    let dx = if wanted[0] {
        Some(Tensor::uninit(&backend, x.shape(), DType::F32)?)
    } else {
        None
    };
    let mut dw: Option<Tensor> = None;
    let wm = w.reshape(&[g.oc, g.k()])?;
    let per = g.images_per_chunk(budget);
    if wanted[0] || wanted[1] {
        for n0 in (0..g.n).step_by(per) {
            let nb = per.min(g.n - n0);
            let rows = dy_rows(gpu, dy, g, n0, nb)?;
            if let Some(dx) = &dx {
                let dcols = matmul_t(&rows, &wm, false, false)?;
                let count = nb * g.c * g.h * g.w;
                let params = g.params(count, n0)?;
                gpu.dispatch(
                    Kernel::f32("conv", "col2im"),
                    bytemuck::bytes_of(&params),
                    &[dcols.bind(1)?, dx.bind(3)?],
                    grid(count, 256),
                )?;
            }
            if wanted[1] {
                let part = matmul_t(&rows, &im2col(gpu, x, g, n0, nb)?, true, false)?;
                match &dw {
                    Some(acc) => super::elementwise::axpy(acc, 1.0, &part)?,
                    None => dw = Some(part),
                }
            }
        }
        if let (None, true) = (&dw, wanted[1]) {
            dw = Some(Tensor::zeros(&backend, &[g.oc, g.k()])?);
        }
    }
    let db = if wanted[2] {
        let db = Tensor::uninit(&backend, &[g.oc], DType::F32)?;
        let params = g.params(g.oc, 0)?;
        gpu.dispatch(
            Kernel::f32("conv", "bias_grad"),
            bytemuck::bytes_of(&params),
            &[dy.bind(1)?, db.bind(3)?],
            groups_for(g.oc),
        )?;
        Some(db)
    } else {
        None
    };
    Ok([dx, dw.map(|t| t.reshape(w.shape())).transpose()?, db])
}

/// The CPU reference: direct loops, f64 accumulation.
pub(crate) mod cpu {
    use super::Geom;

    /// The input coordinate that output `o` reads through tap `k`, if inside the image.
    fn tap(o: usize, k: usize, g: &Geom, extent: usize) -> Option<usize> {
        (o * g.stride + k)
            .checked_sub(g.pad)
            .filter(|&i| i < extent)
    }

    pub(crate) fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32], g: &Geom) {
        for n in 0..g.n {
            for o in 0..g.oc {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = b.map_or(0.0, |b| b[o] as f64);
                        for c in 0..g.c {
                            for ky in 0..g.kh {
                                let Some(iy) = tap(oy, ky, g, g.h) else {
                                    continue;
                                };
                                for kx in 0..g.kw {
                                    let Some(ix) = tap(ox, kx, g, g.w) else {
                                        continue;
                                    };
                                    let xv = x[((n * g.c + c) * g.h + iy) * g.w + ix] as f64;
                                    acc += xv * w[((o * g.c + c) * g.kh + ky) * g.kw + kx] as f64;
                                }
                            }
                        }
                        y[((n * g.oc + o) * g.oh + oy) * g.ow + ox] = acc as f32;
                    }
                }
            }
        }
    }

    /// `(dx, dw, db)` by scattering every output gradient to the inputs and weights it used.
    pub(crate) fn backward(
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        g: &Geom,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        let mut db = vec![0.0f64; g.oc];
        for n in 0..g.n {
            for o in 0..g.oc {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let d = dy[((n * g.oc + o) * g.oh + oy) * g.ow + ox] as f64;
                        db[o] += d;
                        for c in 0..g.c {
                            for ky in 0..g.kh {
                                let Some(iy) = tap(oy, ky, g, g.h) else {
                                    continue;
                                };
                                for kx in 0..g.kw {
                                    let Some(ix) = tap(ox, kx, g, g.w) else {
                                        continue;
                                    };
                                    let xi = ((n * g.c + c) * g.h + iy) * g.w + ix;
                                    let wi = ((o * g.c + c) * g.kh + ky) * g.kw + kx;
                                    dx[xi] += d * w[wi] as f64;
                                    dw[wi] += d * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        let f32s = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
        (f32s(dx), f32s(dw), f32s(db))
    }
}

impl Graph {
    /// 2-D convolution of `x` `[N, C, H, W]` with `w` `[OC, C, KH, KW]`, plus the optional
    /// bias `b` `[OC]`, with the given stride and zero padding (see [`conv2d`]). Only the
    /// gradients some input needs are computed in the backward pass.
    pub fn conv2d(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        stride: usize,
        padding: usize,
    ) -> Result<Var> {
        let bias = b.map(|b| self.value(b));
        let y = conv2d(self.value(x), self.value(w), bias, stride, padding)?;
        let wanted = [
            self.requires_grad(x),
            self.requires_grad(w),
            b.is_some_and(|b| self.requires_grad(b)),
        ];
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let arity = inputs.len();
        Ok(self.record(y, &inputs, move |i, _, dy| {
            let grads = conv2d_backward(i[0], i[1], dy, stride, padding, wanted)?;
            Ok(grads.into_iter().take(arity).collect())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, check_gradient, gpu, pair, probe, random};

    /// `(N, C, H, W, OC, K, stride, padding)`.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

    const CASES: &[Case] = &[
        (1, 1, 7, 7, 1, 3, 1, 0),
        (2, 3, 7, 9, 5, 3, 2, 1),
        (3, 1, 28, 28, 32, 5, 1, 2),
        (1, 3, 33, 33, 5, 5, 2, 1),
        (2, 3, 33, 28, 32, 3, 3, 2),
        (3, 1, 7, 7, 5, 5, 2, 2),
        (2, 32, 14, 14, 64, 5, 1, 2),
        (1, 1, 5, 5, 3, 7, 1, 1),
    ];

    fn run_case(i: usize, &(n, c, h, w, oc, k, s, p): &Case, budget: Option<usize>) {
        let seed = 10 * i as u64;
        let (xc, xg) = pair(&[n, c, h, w], seed);
        let (wc, wg) = pair(&[oc, c, k, k], seed + 1);
        let (bc, bg) = pair(&[oc], seed + 2);
        let with_bias = i.is_multiple_of(2);
        let (bc, bg) = (with_bias.then_some(&bc), with_bias.then_some(&bg));
        let name = format!("conv N{n} C{c} {h}x{w} OC{oc} K{k} S{s} P{p}");
        let want = conv2d(&xc, &wc, bc, s, p).unwrap();
        let dyc = pair(want.shape(), seed + 3).0;
        let dyg = dyc.to_backend(&gpu()).unwrap();
        let gpu_backend = gpu();
        let gpu = gpu_backend.gpu().unwrap();
        let g = Geom::new(xc.shape(), wc.shape(), s, p).unwrap();
        let budget = budget.unwrap_or(super::budget(gpu));
        // Sums of up to K = 800 products of values in [-1, 1], f32 (GPU, tiled order) against
        // f64 (CPU): worst-case rounding K * 2^-24 * sum|terms| stays below 1e-4.
        assert_close(
            &name,
            &gpu_forward(gpu, &xg, &wg, bg, &g, budget).unwrap(),
            &want,
            1e-4,
            1e-4,
        );
        let [dxc, dwc, dbc] = conv2d_backward(&xc, &wc, &dyc, s, p, [true; 3])
            .unwrap()
            .map(Option::unwrap);
        let [dxg, dwg, dbg] = gpu_backward(gpu, &xg, &wg, &dyg, &g, [true; 3], budget)
            .unwrap()
            .map(Option::unwrap);
        // dx sums at most OC*KH*KW = 1600 products: 1e-4 relative, 2e-4 absolute.
        assert_close(&format!("{name} dx"), &dxg, &dxc, 1e-4, 2e-4);
        // dw and db sum over N*OH*OW (up to ~3300) terms per element: 1e-4 relative and 5e-4
        // absolute (f32 accumulation error ~ terms * 2^-24 * sum|terms|).
        assert_close(&format!("{name} dw"), &dwg, &dwc, 1e-4, 5e-4);
        assert_close(&format!("{name} db"), &dbg, &dbc, 1e-4, 5e-4);
    }

    #[test]
    fn gpu_matches_cpu_on_awkward_shapes() {
        for (i, case) in CASES.iter().enumerate() {
            run_case(i, case, None);
        }
    }

    /// A tiny budget forces one image per chunk: chunk offsets and dW accumulation.
    #[test]
    fn gpu_chunks_match_cpu() {
        run_case(1, &(3, 3, 9, 8, 5, 3, 2, 1), Some(1));
        run_case(2, &(3, 2, 12, 12, 4, 5, 1, 2), Some(3 * 12 * 12 * 50 * 4));
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        for (i, &(s, p)) in [(2, 1), (1, 2), (3, 0)].iter().enumerate() {
            let (n, c, h, w, oc, k) = (2, 2, 5, 6, 3, 3);
            let (xs, ws, bs) = ([n, c, h, w], [oc, c, k, k], [oc]);
            let seed = 10 * i as u64;
            let xv = random(n * c * h * w, seed + 1, 1.0);
            let wv = random(oc * c * k * k, seed + 2, 1.0);
            let bv = random(oc, seed + 3, 1.0);
            let t = |shape: &[usize], v: &[f32]| Tensor::from_slice(&cpu, shape, v).unwrap();
            let (x, wt, b) = (t(&xs, &xv), t(&ws, &wv), t(&bs, &bv));
            let y = conv2d(&x, &wt, Some(&b), s, p).unwrap();
            let probe_w = random(y.numel(), seed + 4, 1.0);
            let dy = t(y.shape(), &probe_w);
            let [dx, dw, db] = conv2d_backward(&x, &wt, &dy, s, p, [true; 3])
                .unwrap()
                .map(|g| g.unwrap().to_vec().unwrap());
            let loss = |x: &Tensor, w: &Tensor, b: &Tensor| {
                probe(
                    &conv2d(x, w, Some(b), s, p).unwrap().to_vec().unwrap(),
                    &probe_w,
                )
            };
            let name = format!("conv S{s} P{p}");
            check_gradient(
                &format!("{name} dx"),
                &xv,
                &dx,
                |v| loss(&t(&xs, v), &wt, &b),
                1e-2,
            );
            check_gradient(
                &format!("{name} dw"),
                &wv,
                &dw,
                |v| loss(&x, &t(&ws, v), &b),
                1e-2,
            );
            check_gradient(
                &format!("{name} db"),
                &bv,
                &db,
                |v| loss(&x, &wt, &t(&bs, v)),
                1e-2,
            );
        }
    }

    /// `mean(relu(conv(x, w, b)) * probe)` through the tape: both backends agree, and the
    /// input gradient matches finite differences of the tape's own loss.
    #[test]
    fn graph_method_on_both_backends() {
        let (xs, ws) = ([2, 3, 6, 5], [4, 3, 3, 3]);
        let xv = random(180, 1, 1.0);
        let wv = random(108, 2, 1.0);
        let bv = random(4, 3, 1.0);
        let pv = random(2 * 4 * 3 * 3, 4, 1.0);
        let run = |backend: &Backend, x: &[f32], with_grads: bool| {
            let mut g = Graph::new(backend);
            let t = |shape: &[usize], v: &[f32]| Tensor::from_slice(backend, shape, v).unwrap();
            let xv = g.input_with_grad(t(&xs, x));
            let wv = g.input_with_grad(t(&ws, &wv));
            let bvar = g.input_with_grad(t(&[4], &bv));
            let pr = g.input(t(&[2, 4, 3, 3], &pv));
            let y = g.conv2d(xv, wv, Some(bvar), 2, 1).unwrap();
            let y = g.relu(y).unwrap();
            let y = g.mul(y, pr).unwrap();
            let l = g.mean_all(y).unwrap();
            let loss = g.value(l).item().unwrap() as f64;
            let grads = with_grads.then(|| {
                let gr = g.backward(l).unwrap();
                [xv, wv, bvar].map(|v| gr.get(v).unwrap().to_vec().unwrap())
            });
            (loss, grads)
        };
        let (_, cpu_grads) = run(&Backend::Cpu, &xv, true);
        let (_, gpu_grads) = run(&gpu(), &xv, true);
        let (cpu_grads, gpu_grads) = (cpu_grads.unwrap(), gpu_grads.unwrap());
        for (name, (c, g)) in ["dx", "dw", "db"]
            .iter()
            .zip(cpu_grads.iter().zip(&gpu_grads))
        {
            let t = |v: &[f32]| Tensor::from_slice(&Backend::Cpu, &[v.len()], v).unwrap();
            // f32 sums of at most 27 products (against f64), then a mean over 72 outputs.
            assert_close(&format!("graph {name}"), &t(g), &t(c), 1e-4, 1e-6);
        }
        check_gradient(
            "graph conv dx",
            &xv,
            &cpu_grads[0],
            |x| run(&Backend::Cpu, x, false).0,
            1e-2,
        );
    }

    /// With a constant input, the tape asks for the weight and bias gradients only.
    #[test]
    fn graph_skips_unneeded_gradients() {
        let b = gpu();
        let mut g = Graph::new(&b);
        let x = g.input(pair(&[1, 1, 4, 4], 1).1);
        let w = g.input_with_grad(pair(&[2, 1, 3, 3], 2).1);
        let y = g.conv2d(x, w, None, 1, 0).unwrap();
        let l = g.sum_all(y).unwrap();
        let grads = g.backward(l).unwrap();
        assert!(grads.get(x).is_none());
        let want = conv2d_backward(
            &pair(&[1, 1, 4, 4], 1).0,
            &pair(&[2, 1, 3, 3], 2).0,
            &Tensor::from_slice(&Backend::Cpu, &[1, 2, 2, 2], &[1.0; 8]).unwrap(),
            1,
            0,
            [false, true, false],
        )
        .unwrap();
        let [None, Some(dw), None] = want else {
            panic!("only dw was asked for")
        };
        // Sums of 4 products.
        assert_close("dw", grads.get(w).unwrap(), &dw, 1e-5, 1e-6);
    }

    #[test]
    fn bad_shapes_are_refused() {
        let cpu = Backend::Cpu;
        let z = |shape: &[usize]| Tensor::zeros(&cpu, shape).unwrap();
        let shape_err = |r: Result<Tensor>| matches!(r, Err(Error::Shape { .. }));
        assert!(
            shape_err(conv2d(&z(&[1, 3, 8]), &z(&[2, 3, 3, 3]), None, 1, 0)),
            "rank-3 input"
        );
        assert!(
            shape_err(conv2d(&z(&[1, 3, 8, 8]), &z(&[2, 2, 3, 3]), None, 1, 0)),
            "channel mismatch"
        );
        assert!(
            shape_err(conv2d(
                &z(&[1, 3, 8, 8]),
                &z(&[2, 3, 3, 3]),
                Some(&z(&[3])),
                1,
                0
            )),
            "bias length"
        );
        assert!(
            shape_err(conv2d(&z(&[1, 3, 8, 8]), &z(&[2, 3, 3, 3]), None, 0, 0)),
            "stride 0"
        );
        assert!(
            shape_err(conv2d(&z(&[1, 3, 4, 8]), &z(&[2, 3, 7, 3]), None, 1, 1)),
            "kernel taller than padded input"
        );
        assert!(
            shape_err(conv2d(
                &z(&[1, 3, 8, 8]),
                &z(&[2, 3, 3, 3]),
                None,
                1,
                usize::MAX / 4
            )),
            "padding too large to address"
        );
        let r = conv2d_backward(
            &z(&[1, 3, 8, 8]),
            &z(&[2, 3, 3, 3]),
            &z(&[1, 2, 5, 6]),
            1,
            0,
            [true; 3],
        );
        assert!(matches!(r, Err(Error::Shape { .. })), "dy shape");
        let g = gpu();
        let zg = |shape: &[usize]| Tensor::zeros(&g, shape).unwrap();
        assert!(
            shape_err(conv2d(&zg(&[1, 3, 8, 8]), &zg(&[2, 2, 3, 3]), None, 1, 0)),
            "channel mismatch on the GPU"
        );
    }
}
