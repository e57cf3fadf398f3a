//! A 2-D convolution layer (NCHW), weight `[out, in, k, k]`, PyTorch initialisation.

use crate::error::Result;
use crate::graph::{Graph, Var};
use crate::params::{Init, ParamId, Params, ParamsBuilder};

/// `conv2d(x, W) + b` with a square kernel.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// Weight `[out, in, k, k]`.
    pub weight: ParamId,
    /// Bias `[out]`.
    pub bias: ParamId,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

impl Conv2d {
    /// Declare a trainable layer (uniform init, bound 1/sqrt(in * k * k)).
    pub fn new(
        b: &mut ParamsBuilder,
        name: &str,
        inputs: usize,
        outputs: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Conv2d {
        let bound = 1.0 / ((inputs * kernel * kernel) as f32).sqrt();
        Conv2d {
            weight: b.add(
                format!("{name}.weight"),
                &[outputs, inputs, kernel, kernel],
                Init::Uniform(bound),
                true,
            ),
            bias: b.add(
                format!("{name}.bias"),
                &[outputs],
                Init::Uniform(bound),
                true,
            ),
            stride,
            padding,
        }
    }

    /// Apply to `x` `[N, in, H, W]`.
    pub fn forward(&self, g: &mut Graph, p: &Params, x: Var) -> Result<Var> {
        let w = g.param(p, self.weight)?;
        let b = g.param(p, self.bias)?;
        g.conv2d(x, w, Some(b), self.stride, self.padding)
    }
}
