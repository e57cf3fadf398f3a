//! Pointwise activations: ReLU, GELU (exact, erf) and SiLU, forward and backward.
//!
//!   relu(x) = max(x, 0)            relu'(x) = [x > 0]
//!   gelu(x) = x Phi(x)             gelu'(x) = Phi(x) + x phi(x)
//!   silu(x) = x s(x)               silu'(x) = s(x) (1 + x (1 - s(x)))
//! with Phi the standard normal CDF, phi its density and s the logistic sigmoid.

use bytemuck::{Pod, Zeroable};

use super::{grid, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// A pointwise activation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Rectified linear unit.
    Relu,
    /// Gaussian error linear unit (erf form, as in BERT).
    Gelu,
    /// Sigmoid linear unit (swish), as in Llama's SwiGLU.
    Silu,
}

impl Activation {
    fn entries(self) -> (&'static str, &'static str) {
        match self {
            Activation::Relu => ("relu_fwd", "relu_bwd"),
            Activation::Gelu => ("gelu_fwd", "gelu_bwd"),
            Activation::Silu => ("silu_fwd", "silu_bwd"),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// `f(x)` elementwise.
pub fn activate(f: Activation, x: &Tensor) -> Result<Tensor> {
    require_f32("activation", &[x])?;
    let backend = x.backend();
    let out = Tensor::uninit(&backend, x.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => {
            for (o, v) in out.cpu_write()?.iter_mut().zip(x.cpu_read()?.iter()) {
                *o = cpu::forward(f, *v);
            }
        }
        Backend::Gpu(gpu) => {
            let params = Params {
                n: u32_len("activation", x.numel())?,
                _pad: [0; 3],
            };
            let kernel = Kernel::f32("activation", f.entries().0);
            gpu.dispatch(
                kernel,
                bytemuck::bytes_of(&params),
                &[x.bind(1)?, out.bind(3)?],
                grid(x.numel(), 256),
            )?;
        }
    }
    Ok(out)
}

/// `f'(x) * dy` elementwise.
pub fn activate_backward(f: Activation, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    require_f32("activation", &[x, dy])?;
    if x.shape() != dy.shape() {
        return Err(Error::shape(
            "activation backward",
            format!("x {:?} vs dy {:?}", x.shape(), dy.shape()),
        ));
    }
    let backend = super::common_backend("activation", &[x, dy])?;
    let out = Tensor::uninit(&backend, x.shape(), DType::F32)?;
    match &backend {
        Backend::Cpu => {
            let (xs, gs) = (x.cpu_read()?, dy.cpu_read()?);
            for ((o, v), g) in out.cpu_write()?.iter_mut().zip(xs.iter()).zip(gs.iter()) {
                *o = cpu::derivative(f, *v) * g;
            }
        }
        Backend::Gpu(gpu) => {
            let params = Params {
                n: u32_len("activation", x.numel())?,
                _pad: [0; 3],
            };
            let kernel = Kernel::f32("activation", f.entries().1);
            gpu.dispatch(
                kernel,
                bytemuck::bytes_of(&params),
                &[x.bind(1)?, dy.bind(2)?, out.bind(3)?],
                grid(x.numel(), 256),
            )?;
        }
    }
    Ok(out)
}

/// The CPU reference, in f64 internally.
pub(crate) mod cpu {
    use super::Activation;

    const INV_SQRT2: f64 = std::f64::consts::FRAC_1_SQRT_2;

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn normal_cdf(x: f64) -> f64 {
        0.5 * (1.0 + libm::erf(x * INV_SQRT2))
    }

    pub(crate) fn forward(f: Activation, x: f32) -> f32 {
        let x = x as f64;
        (match f {
            Activation::Relu => x.max(0.0),
            Activation::Gelu => x * normal_cdf(x),
            Activation::Silu => x * sigmoid(x),
        }) as f32
    }

    pub(crate) fn derivative(f: Activation, x: f32) -> f32 {
        let x = x as f64;
        (match f {
            Activation::Relu => f64::from(u8::from(x > 0.0)),
            Activation::Gelu => {
                normal_cdf(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
            }
            Activation::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
        }) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, check_gradient, pair, probe, random};

    const ALL: [Activation; 3] = [Activation::Relu, Activation::Gelu, Activation::Silu];

    #[test]
    fn gpu_matches_cpu() {
        for (i, n) in [1usize, 7, 33, 257, 70_000].iter().enumerate() {
            let (xc, xg) = pair(&[*n], i as u64);
            let xc = crate::ops::elementwise::scale(&xc, 6.0).unwrap();
            let xg = xc.to_backend(&xg.backend()).unwrap();
            let (dc, dg) = pair(&[*n], 40 + i as u64);
            for f in ALL {
                // erf approximation (1.5e-7 absolute) and f32 exp: 1e-5 relative + 1e-6 absolute.
                assert_close(
                    &format!("{f:?} n={n}"),
                    &activate(f, &xg).unwrap(),
                    &activate(f, &xc).unwrap(),
                    1e-5,
                    1e-6,
                );
                assert_close(
                    &format!("{f:?}' n={n}"),
                    &activate_backward(f, &xg, &dg).unwrap(),
                    &activate_backward(f, &xc, &dc).unwrap(),
                    1e-5,
                    1e-6,
                );
            }
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        // Keep away from ReLU's kink at 0.
        let xv: Vec<f32> = random(16, 1, 3.0)
            .iter()
            .map(|v| if v.abs() < 0.05 { v + 0.1 } else { *v })
            .collect();
        let w = random(16, 2, 1.0);
        let x = Tensor::from_slice(&cpu, &[16], &xv).unwrap();
        let dy = Tensor::from_slice(&cpu, &[16], &w).unwrap();
        for f in ALL {
            let dx = activate_backward(f, &x, &dy).unwrap().to_vec().unwrap();
            let loss = |v: &[f32]| {
                probe(
                    &activate(f, &Tensor::from_slice(&cpu, &[16], v).unwrap())
                        .unwrap()
                        .to_vec()
                        .unwrap(),
                    &w,
                )
            };
            check_gradient(&format!("{f:?}"), &xv, &dx, loss, 1e-2);
        }
    }
}
