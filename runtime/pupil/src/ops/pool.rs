//! 2-D max pooling over NCHW tensors, without padding.
//!
//! Shape key: x `[N, C, H, W]`, square window `K`, stride `S`, y `[N, C, OH, OW]` with
//! `OH = (H - K) / S + 1` (floor; likewise OW).
//! Forward: `y = max over the window`; the argmax (the first maximum in row-major window order)
//! is saved per output as the flat index `h*W + w` within its plane, stored as f32.
//! Backward: `dx[n, c, h, w] = sum of dy[n, c, oh, ow] over the outputs whose argmax is (h, w)`;
//! the GPU gathers over the windows containing each pixel (at most one when `S >= K`), so no
//! atomics are needed.

use bytemuck::{Pod, Zeroable};

use super::{common_backend, grid, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::graph::{Graph, Var};
use crate::tensor::{DType, Tensor};

/// Argmax indices are f32: exact for planes below 2^24 pixels.
const MAX_PLANE: usize = 1 << 24;

/// Resolved sizes of one pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    planes: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x: &[usize], k: usize, s: usize) -> Result<Geom> {
        let &[n, c, h, w] = x else {
            return Err(Error::shape(
                "max_pool2d",
                format!("x {x:?} must be [N, C, H, W]"),
            ));
        };
        if k == 0 || s == 0 {
            return Err(Error::shape(
                "max_pool2d",
                format!("kernel {k} and stride {s} must be at least 1"),
            ));
        }
        if h < k || w < k {
            return Err(Error::shape(
                "max_pool2d",
                format!("kernel {k} exceeds the input {h}x{w}"),
            ));
        }
        if h * w >= MAX_PLANE {
            return Err(Error::NotSupported {
                op: "max_pool2d",
                detail: format!("{h}x{w} planes exceed the f32-exact argmax range"),
            });
        }
        Ok(Geom {
            planes: n * c,
            h,
            w,
            k,
            s,
            oh: (h - k) / s + 1,
            ow: (w - k) / s + 1,
        })
    }

    fn out_shape(&self, x: &[usize]) -> Vec<usize> {
        let mut shape = x.to_vec();
        shape.truncate(2);
        shape.extend([self.oh, self.ow]);
        shape
    }

    fn params(&self, count: usize) -> Result<Params> {
        let v = |n: usize| u32_len("max_pool2d", n);
        u32_len("max_pool2d", self.planes * self.h * self.w)?;
        Ok(Params {
            count: v(count)?,
            h: v(self.h)?,
            w: v(self.w)?,
            oh: v(self.oh)?,
            ow: v(self.ow)?,
            k: v(self.k)?,
            s: v(self.s)?,
            _pad: 0,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    count: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    k: u32,
    s: u32,
    _pad: u32,
}

/// Max pooling with a `kernel x kernel` window and `stride`: returns `(y, argmax)`, argmax
/// holding per output the index `h*W + w` of its maximum within the plane (as f32), for
/// [`max_pool2d_backward`].
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize) -> Result<(Tensor, Tensor)> {
    require_f32("max_pool2d", &[x])?;
    let g = Geom::new(x.shape(), kernel, stride)?;
    let backend = x.backend();
    let shape = g.out_shape(x.shape());
    let y = Tensor::uninit(&backend, &shape, DType::F32)?;
    let arg = Tensor::uninit(&backend, &shape, DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::forward(
            &x.cpu_read()?,
            &mut y.cpu_write()?,
            &mut arg.cpu_write()?,
            &g,
        ),
        Backend::Gpu(gpu) => {
            let params = g.params(y.numel())?;
            gpu.dispatch(
                Kernel::f32("pool", "max_pool_fwd"),
                bytemuck::bytes_of(&params),
                &[x.bind(1)?, y.bind(3)?, arg.bind(4)?],
                grid(y.numel(), 256),
            )?;
        }
    }
    Ok((y, arg))
}

/// Gradient of [`max_pool2d`] with respect to `x`: each `dy` goes to its window's argmax.
pub fn max_pool2d_backward(
    x: &Tensor,
    argmax: &Tensor,
    dy: &Tensor,
    kernel: usize,
    stride: usize,
) -> Result<Tensor> {
    let backend = common_backend("max_pool2d", &[x, argmax, dy])?;
    require_f32("max_pool2d", &[x, argmax, dy])?;
    let g = Geom::new(x.shape(), kernel, stride)?;
    let shape = g.out_shape(x.shape());
    if argmax.shape() != shape || dy.shape() != shape {
        return Err(Error::shape(
            "max_pool2d backward",
            format!(
                "argmax {:?} and dy {:?} must be {shape:?}",
                argmax.shape(),
                dy.shape()
            ),
        ));
    }
    let dx = Tensor::uninit(&backend, x.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::backward(
            &argmax.cpu_read()?,
            &dy.cpu_read()?,
            &mut dx.cpu_write()?,
            &g,
        ),
        Backend::Gpu(gpu) => {
            let params = g.params(dx.numel())?;
            gpu.dispatch(
                Kernel::f32("pool", "max_pool_bwd"),
                bytemuck::bytes_of(&params),
                &[dy.bind(1)?, argmax.bind(2)?, dx.bind(3)?],
                grid(dx.numel(), 256),
            )?;
        }
    }
    Ok(dx)
}

/// The CPU reference.
pub(crate) mod cpu {
    use super::Geom;

    pub(crate) fn forward(x: &[f32], y: &mut [f32], arg: &mut [f32], g: &Geom) {
        for q in 0..g.planes {
            let plane = &x[q * g.h * g.w..(q + 1) * g.h * g.w];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut best_at = oy * g.s * g.w + ox * g.s;
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let at = (oy * g.s + ky) * g.w + ox * g.s + kx;
                            if plane[at] > plane[best_at] {
                                best_at = at;
                            }
                        }
                    }
                    let o = (q * g.oh + oy) * g.ow + ox;
                    y[o] = plane[best_at];
                    arg[o] = best_at as f32;
                }
            }
        }
    }

    /// Scatter: every output gradient goes to its argmax (f64 accumulation).
    pub(crate) fn backward(arg: &[f32], dy: &[f32], dx: &mut [f32], g: &Geom) {
        let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
        let mut acc = vec![0.0f64; dx.len()];
        for (o, (&a, &d)) in arg.iter().zip(dy).enumerate() {
            let at = a as usize;
            if at < hw {
                acc[(o / ohw) * hw + at] += d as f64;
            }
        }
        for (v, a) in dx.iter_mut().zip(acc) {
            *v = a as f32;
        }
    }
}

impl Graph {
    /// Max pooling of `x` `[N, C, H, W]` with a `kernel x kernel` window and `stride`, no
    /// padding (see [`max_pool2d`]); the argmax is kept for the backward pass.
    pub fn max_pool2d(&mut self, x: Var, kernel: usize, stride: usize) -> Result<Var> {
        let (y, argmax) = max_pool2d(self.value(x), kernel, stride)?;
        Ok(self.record(y, &[x], move |i, _, dy| {
            Ok(vec![Some(max_pool2d_backward(
                i[0], &argmax, dy, kernel, stride,
            )?)])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, check_gradient, gpu, pair, probe, random};

    /// `(N, C, H, W, K, S)`: non-overlapping, overlapping, gapped and ragged windows.
    const CASES: &[(usize, usize, usize, usize, usize, usize)] = &[
        (1, 1, 7, 7, 2, 2),
        (2, 3, 7, 9, 3, 1),
        (3, 1, 28, 28, 2, 2),
        (2, 32, 28, 28, 2, 2),
        (1, 3, 33, 33, 3, 2),
        (3, 3, 33, 28, 5, 3),
        (2, 1, 7, 7, 7, 1),
        (1, 2, 17, 300, 3, 1),
        (2, 3, 9, 11, 2, 3),
    ];

    #[test]
    fn gpu_matches_cpu_on_awkward_shapes() {
        for (i, &(n, c, h, w, k, s)) in CASES.iter().enumerate() {
            let name = format!("max_pool N{n} C{c} {h}x{w} K{k} S{s}");
            let (xc, xg) = pair(&[n, c, h, w], i as u64);
            let (yc, ac) = max_pool2d(&xc, k, s).unwrap();
            let (yg, ag) = max_pool2d(&xg, k, s).unwrap();
            // A maximum and its position are exact.
            assert_close(&name, &yg, &yc, 0.0, 0.0);
            assert_close(&format!("{name} argmax"), &ag, &ac, 0.0, 0.0);
            let (dyc, dyg) = pair(yc.shape(), 100 + i as u64);
            // Sums of at most ceil(K/S)^2 = 25 gradients, in different orders: 1e-6.
            let dxc = max_pool2d_backward(&xc, &ac, &dyc, k, s).unwrap();
            let dxg = max_pool2d_backward(&xg, &ag, &dyg, k, s).unwrap();
            assert_close(&format!("{name} dx"), &dxg, &dxc, 1e-6, 1e-6);
        }
    }

    /// Ties go to the first maximum in row-major window order on both backends.
    #[test]
    fn ties_pick_the_first_maximum() {
        let v: Vec<f32> = (0..36).map(|i| [1.0, 3.0, 3.0][i % 3]).collect();
        for backend in [Backend::Cpu, gpu()] {
            let x = Tensor::from_slice(&backend, &[1, 1, 6, 6], &v).unwrap();
            let (_, arg) = max_pool2d(&x, 3, 3).unwrap();
            assert_eq!(arg.to_vec().unwrap(), vec![1.0, 4.0, 19.0, 22.0]);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        for &(k, s) in &[(2, 2), (3, 1), (3, 2)] {
            let shape = [2, 2, 7, 6];
            let n: usize = shape.iter().product();
            // Distinct values 0.01 apart, shuffled: no ties within the 1e-3 perturbation.
            let order = random(n, 1, 1.0);
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| order[a].total_cmp(&order[b]));
            let mut xv = vec![0.0; n];
            for (rank, &i) in idx.iter().enumerate() {
                xv[i] = rank as f32 * 0.01 - 1.0;
            }
            let x = Tensor::from_slice(&cpu, &shape, &xv).unwrap();
            let (y, arg) = max_pool2d(&x, k, s).unwrap();
            let w = random(y.numel(), 2, 1.0);
            let dy = Tensor::from_slice(&cpu, y.shape(), &w).unwrap();
            let dx = max_pool2d_backward(&x, &arg, &dy, k, s)
                .unwrap()
                .to_vec()
                .unwrap();
            let loss = |v: &[f32]| {
                probe(
                    &max_pool2d(&Tensor::from_slice(&cpu, &shape, v).unwrap(), k, s)
                        .unwrap()
                        .0
                        .to_vec()
                        .unwrap(),
                    &w,
                )
            };
            check_gradient(&format!("max_pool K{k} S{s}"), &xv, &dx, loss, 1e-2);
        }
    }

    /// `sum(max_pool(x) * probe)` through the tape: the input gradient is the probe routed to
    /// the argmax positions, and both backends agree.
    #[test]
    fn graph_method_on_both_backends() {
        let xv = random(2 * 3 * 6 * 6, 1, 1.0);
        let pv = random(2 * 3 * 3 * 3, 2, 1.0);
        let mut grads = vec![];
        for backend in [Backend::Cpu, gpu()] {
            let mut g = Graph::new(&backend);
            let x = g.input_with_grad(Tensor::from_slice(&backend, &[2, 3, 6, 6], &xv).unwrap());
            let pr = g.input(Tensor::from_slice(&backend, &[2, 3, 3, 3], &pv).unwrap());
            let y = g.max_pool2d(x, 2, 2).unwrap();
            let y = g.mul(y, pr).unwrap();
            let l = g.sum_all(y).unwrap();
            let dx = g.backward(l).unwrap().get(x).unwrap().to_vec().unwrap();
            grads.push(Tensor::from_slice(&Backend::Cpu, &[dx.len()], &dx).unwrap());
        }
        // Each pixel receives at most one probe value: exact.
        assert_close("graph dx", &grads[1], &grads[0], 0.0, 0.0);
        let dx = grads[0].to_vec().unwrap();
        let mut routed: Vec<f32> = dx.iter().copied().filter(|v| *v != 0.0).collect();
        let mut want = pv.clone();
        routed.sort_by(f32::total_cmp);
        want.sort_by(f32::total_cmp);
        assert_eq!(
            routed, want,
            "every output gradient lands on exactly one input"
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        let cpu = Backend::Cpu;
        let z = |shape: &[usize]| Tensor::zeros(&cpu, shape).unwrap();
        let shape_err = |r: Result<(Tensor, Tensor)>| matches!(r, Err(Error::Shape { .. }));
        assert!(shape_err(max_pool2d(&z(&[2, 8, 8]), 2, 2)), "rank 3");
        assert!(shape_err(max_pool2d(&z(&[1, 1, 8, 8]), 0, 2)), "kernel 0");
        assert!(shape_err(max_pool2d(&z(&[1, 1, 8, 8]), 2, 0)), "stride 0");
        assert!(
            shape_err(max_pool2d(&z(&[1, 1, 8, 3]), 4, 1)),
            "kernel wider than input"
        );
        let r = max_pool2d_backward(
            &z(&[1, 1, 8, 8]),
            &z(&[1, 1, 4, 4]),
            &z(&[1, 1, 3, 4]),
            2,
            2,
        );
        assert!(matches!(r, Err(Error::Shape { .. })), "dy shape");
        let r = max_pool2d_backward(
            &z(&[1, 1, 8, 8]),
            &z(&[1, 1, 4, 4]),
            &z(&[1, 1, 4, 4]),
            3,
            2,
        );
        assert!(
            matches!(r, Err(Error::Shape { .. })),
            "argmax from another window"
        );
        assert!(
            shape_err(max_pool2d(
                &Tensor::zeros(&gpu(), &[2, 8, 8]).unwrap(),
                2,
                2
            )),
            "rank 3 on the GPU"
        );
    }
}
