//! Normalisation layers over the last axis: LayerNorm (BERT) and RMSNorm (Llama).

use crate::error::Result;
use crate::graph::{Graph, Var};
use crate::params::{Init, ParamId, Params, ParamsBuilder};

/// `(x - mean) / sqrt(var + eps) * gamma + beta`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Scale `[dim]`.
    pub gamma: ParamId,
    /// Shift `[dim]`.
    pub beta: ParamId,
    /// Variance epsilon.
    pub eps: f32,
}

impl LayerNorm {
    /// Declare `name.weight` (ones) and `name.bias` (zeros).
    pub fn new(
        b: &mut ParamsBuilder,
        name: &str,
        dim: usize,
        eps: f32,
        trainable: bool,
    ) -> LayerNorm {
        LayerNorm {
            gamma: b.add(format!("{name}.weight"), &[dim], Init::Ones, trainable),
            beta: b.add(format!("{name}.bias"), &[dim], Init::Zeros, trainable),
            eps,
        }
    }

    /// Normalise `x` of shape `[.., dim]`.
    pub fn forward(&self, g: &mut Graph, p: &Params, x: Var) -> Result<Var> {
        let gamma = g.param(p, self.gamma)?;
        let beta = g.param(p, self.beta)?;
        g.layer_norm(x, gamma, beta, self.eps)
    }
}

/// `x / sqrt(mean(x^2) + eps) * gamma`.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// Scale `[dim]`.
    pub gamma: ParamId,
    /// Epsilon.
    pub eps: f32,
}

impl RmsNorm {
    /// Declare `name.weight` (ones).
    pub fn new(
        b: &mut ParamsBuilder,
        name: &str,
        dim: usize,
        eps: f32,
        trainable: bool,
    ) -> RmsNorm {
        RmsNorm {
            gamma: b.add(format!("{name}.weight"), &[dim], Init::Ones, trainable),
            eps,
        }
    }

    /// Normalise `x` of shape `[.., dim]`.
    pub fn forward(&self, g: &mut Graph, p: &Params, x: Var) -> Result<Var> {
        let gamma = g.param(p, self.gamma)?;
        g.rms_norm(x, gamma, self.eps)
    }
}
