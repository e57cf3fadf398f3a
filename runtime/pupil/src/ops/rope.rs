//! Rotary position embedding (RoPE), "rotate half" convention of Llama / HF transformers.
//!
//! Shape key: x `[B, H, T, Dh]` with Dh even; position of step t is `offset + t` (the offset
//! is the number of tokens already in a KV cache). Pair `(i, i + Dh/2)` of position `pos`
//! is rotated by angle `a = pos * theta_i`:
//!   `y[i] = x[i] cos a - x[i + Dh/2] sin a`,  `y[i + Dh/2] = x[i + Dh/2] cos a + x[i] sin a`.
//! Frequencies: `theta_i = 2^(-i c)` with `c = f32(2 log2(base) / Dh)`, which is
//! `base^(-2i / Dh)` to within a few f32 ulps (HF's `inv_freq`). Both backends compute theta
//! and the angle in f32 exactly as written here; the GPU computes cos/sin in f32 in the
//! kernel (no table), the CPU reference in f64 from the same f32 angle.
//! Backward: the rotation is orthogonal, so `dx` is `dy` rotated by `-a` (x is not needed).

use bytemuck::{Pod, Zeroable};

use super::{grid, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Positions must be exact in f32.
const MAX_POSITION: usize = 1 << 24;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    pairs: u32,
    half: u32,
    seq: u32,
    offset: u32,
    c: f32,
    dir: f32,
    _pad: [u32; 2],
}

/// The exponent step `c = 2 log2(base) / Dh` of `theta_i = 2^(-i c)`.
fn exponent_step(base: f32, dh: usize) -> Result<f32> {
    if !(base.is_finite() && base > 0.0) {
        return Err(Error::Invalid(format!(
            "rope: base must be a positive finite number (1e4 for most models), got {base}"
        )));
    }
    Ok((2.0 * (base as f64).log2() / dh as f64) as f32)
}

/// Rotate `x` (`[B, H, T, Dh]`) by `dir` (+1 forward, -1 backward).
fn rotate(op: &'static str, x: &Tensor, base: f32, offset: usize, dir: f32) -> Result<Tensor> {
    require_f32(op, &[x])?;
    let (t, dh) = match x.shape() {
        &[_, _, t, dh] if dh > 0 && dh % 2 == 0 => (t, dh),
        s => {
            return Err(Error::shape(
                op,
                format!("x must be [B, H, T, Dh] with Dh even and positive, got {s:?}"),
            ))
        }
    };
    if offset + t > MAX_POSITION {
        return Err(Error::NotSupported {
            op,
            detail: format!(
                "positions up to {} exceed f32's exact integers (2^24)",
                offset + t
            ),
        });
    }
    let c = exponent_step(base, dh)?;
    let backend = x.backend();
    let out = Tensor::uninit(&backend, x.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::rotate(&x.cpu_read()?, &mut out.cpu_write()?, t, dh, offset, c, dir),
        Backend::Gpu(gpu) => {
            let params = Params {
                pairs: u32_len(op, x.numel())? / 2,
                half: u32_len(op, dh / 2)?,
                seq: u32_len(op, t)?,
                offset: u32_len(op, offset)?,
                c,
                dir,
                _pad: [0; 2],
            };
            gpu.dispatch(
                Kernel::f32("rope", "rope"),
                bytemuck::bytes_of(&params),
                &[x.bind(1)?, out.bind(2)?],
                grid(x.numel() / 2, 256),
            )?;
        }
    }
    Ok(out)
}

/// RoPE of `x` (`[B, H, T, Dh]`, Dh even) at positions `offset..offset + T` with frequency
/// base `base` (1e4 for most models, 1e5 for SmolLM2).
pub fn rope(x: &Tensor, base: f32, offset: usize) -> Result<Tensor> {
    rotate("rope", x, base, offset, 1.0)
}

/// Gradient of [`rope`] with respect to x: `dy` rotated back (RoPE is linear and orthogonal,
/// so the forward's input is not needed).
pub fn rope_backward(dy: &Tensor, base: f32, offset: usize) -> Result<Tensor> {
    rotate("rope backward", dy, base, offset, -1.0)
}

/// The CPU reference: f32 frequencies and angles as the kernel forms them, cos/sin and the
/// rotation in f64.
pub(crate) mod cpu {
    pub(crate) fn rotate(
        x: &[f32],
        out: &mut [f32],
        t: usize,
        dh: usize,
        offset: usize,
        c: f32,
        dir: f32,
    ) {
        let half = dh / 2;
        for (row, (xr, yr)) in x.chunks_exact(dh).zip(out.chunks_exact_mut(dh)).enumerate() {
            let pos = (offset + row % t) as f32;
            for i in 0..half {
                let theta = (-(i as f32) * c).exp2();
                let a = (pos * theta) as f64;
                let (sn, cs) = a.sin_cos();
                let sn = dir as f64 * sn;
                let (lo, hi) = (xr[i] as f64, xr[i + half] as f64);
                yr[i] = (lo * cs - hi * sn) as f32;
                yr[i + half] = (hi * cs + lo * sn) as f32;
            }
        }
    }
}

mod tape {
    use super::*;
    use crate::graph::{Graph, Var};

    impl Graph {
        /// Rotary position embedding of `x` (`[B, H, T, Dh]`, Dh even), "rotate half"
        /// convention, frequency base `base`, positions `offset..offset + T` (the offset is
        /// the KV cache length when decoding). See [`rope`].
        pub fn rope(&mut self, x: Var, base: f32, offset: usize) -> Result<Var> {
            let y = rope(self.value(x), base, offset)?;
            Ok(self.record(y, &[x], move |_, _, dy| {
                Ok(vec![Some(rope_backward(dy, base, offset)?)])
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::ops::testing::{assert_close, check_gradient, gpu, pair, probe, random};

    #[test]
    fn gpu_matches_cpu() {
        let cases: &[(&[usize], f32, usize)] = &[
            (&[1, 1, 1, 2], 1e4, 0),
            (&[2, 3, 7, 8], 1e4, 0),
            (&[1, 2, 33, 64], 1e5, 5),
            (&[1, 1, 257, 32], 1e4, 0),
            (&[2, 9, 3, 64], 1e5, 300),
        ];
        for (i, &(shape, base, offset)) in cases.iter().enumerate() {
            let (xc, xg) = pair(shape, i as u64);
            let what = format!("{shape:?} base {base} offset {offset}");
            // Angles up to 303 rad. The GPU's exp2 may miss theta by an ulp or two (6e-8
            // relative each), which moves the angle by up to 2e-5 rad per ulp (measured 2e-5 on
            // lavapipe); range reduction and f32 sin/cos add ~1e-6: 1e-5 relative, 1e-4 absolute.
            assert_close(
                &what,
                &rope(&xg, base, offset).unwrap(),
                &rope(&xc, base, offset).unwrap(),
                1e-5,
                1e-4,
            );
            assert_close(
                &format!("d {what}"),
                &rope_backward(&xg, base, offset).unwrap(),
                &rope_backward(&xc, base, offset).unwrap(),
                1e-5,
                1e-4,
            );
        }
    }

    /// Positions deep into a long context (angles near 1e4 rad) stay accurate on the GPU.
    #[test]
    fn long_context_positions() {
        let (xc, xg) = pair(&[1, 2, 4, 64], 9);
        // Angles near 8200 rad: an ulp of the GPU's exp2 in theta moves the angle by up to
        // 5e-4 rad (measured 4.4e-4 on lavapipe), as large as the f32 rounding of the angle
        // itself (ulp 1e-3, which HF's f32 computation has too); the reduction into [-pi, pi]
        // adds ~1e-6. Allowing up to 4 ulps: 1e-5 relative, 2e-3 absolute.
        assert_close(
            "offset 8192",
            &rope(&xg, 1e4, 8192).unwrap(),
            &rope(&xc, 1e4, 8192).unwrap(),
            1e-5,
            2e-3,
        );
    }

    #[test]
    fn known_values_and_inverse() {
        let cpu = Backend::Cpu;
        for backend in [cpu.clone(), gpu()] {
            // Dh = 4, position 1, base 1e4: theta = (1, 1e-2).
            let x = Tensor::from_slice(
                &backend,
                &[1, 1, 2, 4],
                &[1.0, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 0.0],
            )
            .unwrap();
            let y = rope(&x, 1e4, 0).unwrap().to_vec().unwrap();
            // Position 0 is the identity.
            for (a, b) in y[..4].iter().zip([1.0, 2.0, 3.0, 4.0]) {
                assert!((a - b).abs() < 1e-6, "{y:?}");
            }
            // Position 1: pair (0, 2) turns by 1 rad, pair (1, 3) by 0.01 rad.
            let want = [1f32.cos(), 0.0, 1f32.sin(), 0.0];
            for (a, b) in y[4..].iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{y:?}");
            }
            let back = rope_backward(&rope(&x, 1e4, 3).unwrap(), 1e4, 3).unwrap();
            assert_close("inverse", &back, &x, 1e-6, 1e-6);
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let shape = [1, 2, 3, 4];
        let xv = random(24, 1, 1.0);
        let w = random(24, 2, 1.0);
        let dy = Tensor::from_slice(&cpu, &shape, &w).unwrap();
        let dx = rope_backward(&dy, 1e4, 2).unwrap().to_vec().unwrap();
        let loss = |v: &[f32]| {
            probe(
                &rope(&Tensor::from_slice(&cpu, &shape, v).unwrap(), 1e4, 2)
                    .unwrap()
                    .to_vec()
                    .unwrap(),
                &w,
            )
        };
        check_gradient("rope", &xv, &dx, loss, 1e-2);
    }

    /// `sum(rope(x) * w)` on the tape: the same value and input gradient on both backends.
    #[test]
    fn graph_method_on_both_backends() {
        let shape = [1, 3, 5, 8];
        let xv = random(120, 3, 1.0);
        let wv = random(120, 4, 1.0);
        let mut results = vec![];
        for backend in [Backend::Cpu, gpu()] {
            let mut g = Graph::new(&backend);
            let x = g.input_with_grad(Tensor::from_slice(&backend, &shape, &xv).unwrap());
            let w = g.input(Tensor::from_slice(&backend, &shape, &wv).unwrap());
            let r = g.rope(x, 1e5, 7).unwrap();
            let y = g.mul(r, w).unwrap();
            let l = g.sum_all(y).unwrap();
            let dx = g
                .backward(l)
                .unwrap()
                .get(x)
                .unwrap()
                .to_backend(&Backend::Cpu)
                .unwrap();
            results.push((g.value(l).to_backend(&Backend::Cpu).unwrap(), dx));
        }
        // Sums of 120 products: 1e-5 relative, 1e-5 absolute.
        assert_close("loss", &results[1].0, &results[0].0, 1e-5, 1e-5);
        assert_close("dx", &results[1].1, &results[0].1, 1e-5, 1e-5);
        let want = rope_backward(
            &Tensor::from_slice(&Backend::Cpu, &shape, &wv).unwrap(),
            1e5,
            7,
        )
        .unwrap();
        assert_close("dx is w rotated back", &results[0].1, &want, 0.0, 0.0);
    }

    #[test]
    fn bad_arguments_are_refused() {
        for backend in [Backend::Cpu, gpu()] {
            let odd = Tensor::zeros(&backend, &[1, 1, 2, 3]).unwrap();
            assert!(matches!(rope(&odd, 1e4, 0), Err(Error::Shape { .. })));
            let rank3 = Tensor::zeros(&backend, &[1, 2, 4]).unwrap();
            assert!(matches!(rope(&rank3, 1e4, 0), Err(Error::Shape { .. })));
            assert!(matches!(
                rope_backward(&rank3, 1e4, 0),
                Err(Error::Shape { .. })
            ));
            let x = Tensor::zeros(&backend, &[1, 1, 2, 4]).unwrap();
            assert!(matches!(rope(&x, 0.0, 0), Err(Error::Invalid(_))));
            assert!(matches!(
                rope(&x, 1e4, MAX_POSITION),
                Err(Error::NotSupported { .. })
            ));
        }
    }
}
