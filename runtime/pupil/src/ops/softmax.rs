//! Softmax and log-softmax over the last axis, numerically stable: the row max `m` is
//! subtracted before exponentiating, so `s = sum_j exp(x_j - m) >= 1`.
//!
//! Shape key: `x` is `[.., C]`; the leading dims fold into N rows of C (C >= 1).
//!   softmax:      y_j = exp(x_j - m) / s
//!   log-softmax:  y_j = x_j - m - log(s)
//! Backward from the saved output `y` (dy given), per row:
//!   softmax:      dx_j = y_j (dy_j - sum_k dy_k y_k)
//!   log-softmax:  dx_j = dy_j - exp(y_j) sum_k dy_k

use bytemuck::{Pod, Zeroable};

use super::{common_backend, groups_for, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

/// Which of the two normalisations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Softmax,
    LogSoftmax,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Softmax => "softmax",
            Kind::LogSoftmax => "log_softmax",
        }
    }

    /// Forward and backward entry points.
    fn entries(self) -> (&'static str, &'static str) {
        match self {
            Kind::Softmax => ("softmax_fwd", "softmax_bwd"),
            Kind::LogSoftmax => ("log_softmax_fwd", "log_softmax_bwd"),
        }
    }
}

/// `(rows, cols)` of a `[.., C]` shape, refusing rank 0 and an empty last axis.
fn rows_cols(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    let c = *shape
        .last()
        .ok_or_else(|| Error::shape(op, "rank-0 tensor has no last axis"))?;
    if c == 0 {
        return Err(Error::shape(
            op,
            format!("{shape:?} has an empty last axis"),
        ));
    }
    Ok((shape.iter().product::<usize>() / c, c))
}

fn params(op: &'static str, x: &Tensor, rows: usize, cols: usize) -> Result<Params> {
    u32_len(op, x.numel())?;
    Ok(Params {
        rows: u32_len(op, rows)?,
        cols: u32_len(op, cols)?,
        _pad: [0; 2],
    })
}

fn forward(kind: Kind, x: &Tensor) -> Result<Tensor> {
    let op = kind.name();
    require_f32(op, &[x])?;
    let (rows, cols) = rows_cols(op, x.shape())?;
    let backend = x.backend();
    let out = Tensor::uninit(&backend, x.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::forward(
            kind == Kind::LogSoftmax,
            &x.cpu_read()?,
            &mut out.cpu_write()?,
            cols,
        ),
        Backend::Gpu(gpu) => {
            let params = params(op, x, rows, cols)?;
            gpu.dispatch(
                Kernel::f32("softmax", kind.entries().0),
                bytemuck::bytes_of(&params),
                &[x.bind(1)?, out.bind(3)?],
                groups_for(rows),
            )?;
        }
    }
    Ok(out)
}

fn backward(kind: Kind, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let op = kind.name();
    require_f32(op, &[y, dy])?;
    if y.shape() != dy.shape() {
        return Err(Error::shape(
            op,
            format!("backward: y {:?} vs dy {:?}", y.shape(), dy.shape()),
        ));
    }
    let (rows, cols) = rows_cols(op, y.shape())?;
    let backend = common_backend(op, &[y, dy])?;
    let out = Tensor::uninit(&backend, y.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::backward(
            kind == Kind::LogSoftmax,
            &y.cpu_read()?,
            &dy.cpu_read()?,
            &mut out.cpu_write()?,
            cols,
        ),
        Backend::Gpu(gpu) => {
            let params = params(op, y, rows, cols)?;
            gpu.dispatch(
                Kernel::f32("softmax", kind.entries().1),
                bytemuck::bytes_of(&params),
                &[y.bind(1)?, dy.bind(2)?, out.bind(3)?],
                groups_for(rows),
            )?;
        }
    }
    Ok(out)
}

/// Softmax over the last axis of `x` (`[.., C]`, C >= 1).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    forward(Kind::Softmax, x)
}

/// Gradient of [`softmax`] with respect to its input, from its saved output `y` and `dy`.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    backward(Kind::Softmax, y, dy)
}

/// Log-softmax over the last axis of `x` (`[.., C]`, C >= 1).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    forward(Kind::LogSoftmax, x)
}

/// Gradient of [`log_softmax`] with respect to its input, from its saved output `y` and `dy`.
pub fn log_softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    backward(Kind::LogSoftmax, y, dy)
}

/// The CPU reference (f64 internally). Slices hold whole rows of `cols > 0` elements.
pub(crate) mod cpu {
    pub(crate) fn forward(log: bool, x: &[f32], out: &mut [f32], cols: usize) {
        for (row, o) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            for (o, &v) in o.iter_mut().zip(row) {
                *o = if log {
                    (v as f64 - m - s.ln()) as f32
                } else {
                    ((v as f64 - m).exp() / s) as f32
                };
            }
        }
    }

    pub(crate) fn backward(log: bool, y: &[f32], dy: &[f32], out: &mut [f32], cols: usize) {
        let rows = y.chunks_exact(cols).zip(dy.chunks_exact(cols));
        for ((y, g), o) in rows.zip(out.chunks_exact_mut(cols)) {
            if log {
                let total: f64 = g.iter().map(|&v| v as f64).sum();
                for ((o, &yv), &gv) in o.iter_mut().zip(y).zip(g) {
                    *o = (gv as f64 - (yv as f64).exp() * total) as f32;
                }
            } else {
                let dot: f64 = y.iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum();
                for ((o, &yv), &gv) in o.iter_mut().zip(y).zip(g) {
                    *o = (yv as f64 * (gv as f64 - dot)) as f32;
                }
            }
        }
    }
}

mod tape {
    use super::*;
    use crate::graph::{Graph, Var};

    impl Graph {
        /// Softmax over the last axis (see [`softmax`]); the backward uses the saved output.
        pub fn softmax(&mut self, x: Var) -> Result<Var> {
            let y = softmax(self.value(x))?;
            Ok(self.record(y, &[x], |_, y, dy| Ok(vec![Some(softmax_backward(y, dy)?)])))
        }

        /// Log-softmax over the last axis (see [`log_softmax`]); the backward uses the saved
        /// output.
        pub fn log_softmax(&mut self, x: Var) -> Result<Var> {
            let y = log_softmax(self.value(x))?;
            Ok(self.record(y, &[x], |_, y, dy| {
                Ok(vec![Some(log_softmax_backward(y, dy)?)])
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::ops::elementwise;
    use crate::ops::testing::{assert_close, check_gradient, gpu, pair, probe, random};

    /// Rows x columns: single elements, columns below, at and above one workgroup (256
    /// threads, so columns split across threads), and more rows than one grid axis holds.
    const SHAPES: [(usize, usize); 7] = [
        (1, 1),
        (7, 1),
        (1, 7),
        (33, 257),
        (5, 1000),
        (300, 3),
        (70_000, 2),
    ];

    #[test]
    fn gpu_matches_cpu() {
        for (i, &(n, c)) in SHAPES.iter().enumerate() {
            let (xc, xg) = pair(&[n, c], i as u64);
            let xc = elementwise::scale(&xc, 8.0).unwrap();
            let xg = xc.to_backend(&xg.backend()).unwrap();
            let (dc, dg) = pair(&[n, c], 50 + i as u64);
            let what = format!("[{n}, {c}]");

            let (yc, yg) = (softmax(&xc).unwrap(), softmax(&xg).unwrap());
            // Probabilities in [0, 1]: f32 exp (a few ulp) and an f32 tree sum over up to
            // 1000 terms give ~1e-6 relative; 1e-5 relative + 1e-7 absolute for tiny ones.
            assert_close(&format!("softmax {what}"), &yg, &yc, 1e-5, 1e-7);
            // The backward takes the same y on both sides so only the kernel is compared;
            // dy - sum(dy y) cancels, so the bound is absolute at the scale of dy: 1e-6.
            let yg = yc.to_backend(&xg.backend()).unwrap();
            let dxc = softmax_backward(&yc, &dc).unwrap();
            assert_close(
                &format!("softmax' {what}"),
                &softmax_backward(&yg, &dg).unwrap(),
                &dxc,
                1e-5,
                1e-6,
            );

            let (lc, lg) = (log_softmax(&xc).unwrap(), log_softmax(&xg).unwrap());
            // Log-probabilities down to about -16 - log(C): x - m is exact in f32, log(s)
            // carries ~1e-7 relative error of s: 1e-6 relative + 1e-6 absolute.
            assert_close(&format!("log_softmax {what}"), &lg, &lc, 1e-6, 1e-6);
            let lg = lc.to_backend(&xg.backend()).unwrap();
            let dlc = log_softmax_backward(&lc, &dc).unwrap();
            // exp(y) times a sum of up to 1000 dy: 1e-5 relative + 1e-5 absolute.
            assert_close(
                &format!("log_softmax' {what}"),
                &log_softmax_backward(&lg, &dg).unwrap(),
                &dlc,
                1e-5,
                1e-5,
            );
        }
    }

    #[test]
    fn large_logits_stay_finite() {
        let x = [1000.0f32, 999.0, -1000.0, 0.0];
        for b in [Backend::Cpu, gpu()] {
            let xt = Tensor::from_slice(&b, &[1, 4], &x).unwrap();
            let y = softmax(&xt).unwrap().to_vec().unwrap();
            let l = log_softmax(&xt).unwrap().to_vec().unwrap();
            assert!(y.iter().chain(&l).all(|v| v.is_finite()), "{y:?} {l:?}");
            assert!((y.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!((l[0] + (1.0f32 + (-1.0f32).exp()).ln()).abs() < 1e-5);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let shape = [3, 5];
        let xv = random(15, 1, 3.0);
        let w = random(15, 2, 1.0);
        let x = Tensor::from_slice(&cpu, &shape, &xv).unwrap();
        let dy = Tensor::from_slice(&cpu, &shape, &w).unwrap();
        let dx = softmax_backward(&softmax(&x).unwrap(), &dy).unwrap();
        let f = |v: &[f32]| {
            probe(
                &softmax(&Tensor::from_slice(&cpu, &shape, v).unwrap())
                    .unwrap()
                    .to_vec()
                    .unwrap(),
                &w,
            )
        };
        check_gradient("softmax", &xv, &dx.to_vec().unwrap(), f, 1e-2);
        let dx = log_softmax_backward(&log_softmax(&x).unwrap(), &dy).unwrap();
        let f = |v: &[f32]| {
            probe(
                &log_softmax(&Tensor::from_slice(&cpu, &shape, v).unwrap())
                    .unwrap()
                    .to_vec()
                    .unwrap(),
                &w,
            )
        };
        check_gradient("log_softmax", &xv, &dx.to_vec().unwrap(), f, 1e-2);
    }

    /// `sum(w * softmax(x)) + sum(v * log_softmax(x))` on the tape: the input gradient
    /// matches finite differences on the CPU, and the GPU tape agrees with the CPU tape.
    #[test]
    fn graph_methods_on_both_backends() {
        let shape = [4, 6];
        let xv = random(24, 3, 2.0);
        let wv = random(24, 4, 1.0);
        let vv = random(24, 5, 1.0);
        let run = |b: &Backend, x: &[f32], want_grad: bool| {
            let mut g = Graph::new(b);
            let xt = Tensor::from_slice(b, &shape, x).unwrap();
            let x = if want_grad {
                g.input_with_grad(xt)
            } else {
                g.input(xt)
            };
            let w = g.input(Tensor::from_slice(b, &shape, &wv).unwrap());
            let v = g.input(Tensor::from_slice(b, &shape, &vv).unwrap());
            let s = g.softmax(x).unwrap();
            let s = g.mul(s, w).unwrap();
            let l = g.log_softmax(x).unwrap();
            let l = g.mul(l, v).unwrap();
            let t = g.add(s, l).unwrap();
            let loss = g.sum_all(t).unwrap();
            let value = g.value(loss).item().unwrap();
            let grad = want_grad.then(|| g.backward(loss).unwrap().get(x).unwrap().clone());
            (value, grad)
        };
        let (vc, gc) = run(&Backend::Cpu, &xv, true);
        let (vg, gg) = run(&gpu(), &xv, true);
        let gc = gc.unwrap();
        // Sums of 24 terms of order 1: 1e-5 relative + 1e-5 absolute.
        assert!((vc - vg).abs() <= 1e-5 + 1e-5 * vc.abs(), "{vc} vs {vg}");
        assert_close("tape grad", &gg.unwrap(), &gc, 1e-5, 1e-5);
        check_gradient(
            "tape",
            &xv,
            &gc.to_vec().unwrap(),
            |x| run(&Backend::Cpu, x, false).0 as f64,
            1e-2,
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        let cpu = Backend::Cpu;
        let rank0 = Tensor::from_slice(&cpu, &[], &[1.0]).unwrap();
        assert!(matches!(softmax(&rank0), Err(Error::Shape { .. })));
        assert!(matches!(log_softmax(&rank0), Err(Error::Shape { .. })));
        let empty = Tensor::zeros(&cpu, &[3, 0]).unwrap();
        assert!(matches!(softmax(&empty), Err(Error::Shape { .. })));
        for b in [cpu, gpu()] {
            let y = Tensor::zeros(&b, &[2, 3]).unwrap();
            let dy = Tensor::zeros(&b, &[3, 2]).unwrap();
            assert!(matches!(
                softmax_backward(&y, &dy),
                Err(Error::Shape { .. })
            ));
            assert!(matches!(
                log_softmax_backward(&y, &dy),
                Err(Error::Shape { .. })
            ));
        }
    }
}
