//! Image classifiers for 28 x 28 grey images (MNIST-like): the MLP 784-200-200-10 of
//! McMahan et al. (the "2NN") and a small CNN. Inputs are `[B, 784]` pixels in [0, 1].

use crate::error::Result;
use crate::graph::{Graph, Var};
use crate::nn::Mlp;
use crate::params::{Params, ParamsBuilder};

/// Which classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// 784-200-200-10 with ReLU.
    Mlp,
}

impl Arch {
    /// The architecture's name in model files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
        }
    }

    /// Parse a name from the command line or a model file.
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "mlp" => Some(Arch::Mlp),
            _ => None,
        }
    }
}

/// A classifier's layers (parameters live in a [`Params`] store).
#[derive(Clone, Debug)]
pub enum Classifier {
    /// The MLP.
    Mlp(Mlp),
}

/// Pixels per input image.
pub const INPUTS: usize = 784;
/// Classes.
pub const CLASSES: usize = 10;

impl Classifier {
    /// Declare the layers of `arch` in `b`.
    pub fn new(arch: Arch, b: &mut ParamsBuilder) -> Classifier {
        match arch {
            Arch::Mlp => Classifier::Mlp(Mlp::new(b, "mlp", &[INPUTS, 200, 200, CLASSES])),
        }
    }

    /// Logits `[B, 10]` for pixels `[B, 784]`.
    pub fn logits(&self, g: &mut Graph, p: &Params, x: Var) -> Result<Var> {
        match self {
            Classifier::Mlp(m) => m.forward(g, p, x),
        }
    }
}
