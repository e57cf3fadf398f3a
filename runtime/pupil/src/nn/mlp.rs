//! A multilayer perceptron: Linear layers with ReLU between them (none after the last).

use crate::error::Result;
use crate::graph::{Graph, Var};
use crate::nn::Linear;
use crate::params::{Params, ParamsBuilder};

/// Layers `dims[0] -> dims[1] -> ... -> dims[n]`.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// The layers, named `{name}.{i}`.
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// Declare the layers.
    pub fn new(b: &mut ParamsBuilder, name: &str, dims: &[usize]) -> Mlp {
        Mlp {
            layers: dims
                .windows(2)
                .enumerate()
                .map(|(i, d)| Linear::new(b, &format!("{name}.{i}"), d[0], d[1]))
                .collect(),
        }
    }

    /// Declare frozen layers, each with a trainable LoRA adapter of `rank` and `alpha`.
    pub fn with_lora(
        b: &mut ParamsBuilder,
        name: &str,
        dims: &[usize],
        rank: usize,
        alpha: f32,
    ) -> Mlp {
        Mlp {
            layers: dims
                .windows(2)
                .enumerate()
                .map(|(i, d)| {
                    Linear::with_lora(b, &format!("{name}.{i}"), d[0], d[1], true, rank, alpha)
                })
                .collect(),
        }
    }

    /// Apply to `x` of shape `[.., dims[0]]`.
    pub fn forward(&self, g: &mut Graph, p: &Params, mut x: Var) -> Result<Var> {
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(g, p, x)?;
            if i + 1 < self.layers.len() {
                x = g.relu(x)?;
            }
        }
        Ok(x)
    }
}
