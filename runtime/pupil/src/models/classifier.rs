//! Image classifiers for 28 x 28 grey images (MNIST-like): the MLP 784-200-200-10 of
//! McMahan et al. (the "2NN") and a small CNN sized for software adapters:
//! conv 5x5 1->16, ReLU, max-pool 2, conv 5x5 16->32, ReLU, max-pool 2, FC 1568->128, ReLU,
//! FC 128->10 (about 3 M multiply-adds per image). Inputs are `[B, 784]` pixels in [0, 1].

use crate::error::Result;
use crate::graph::{Graph, Var};
use crate::nn::{Conv2d, Mlp};
use crate::params::{Params, ParamsBuilder};

/// Which classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// 784-200-200-10 with ReLU.
    Mlp,
    /// The small CNN.
    Cnn,
}

impl Arch {
    /// The architecture's name in model files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn",
        }
    }

    /// Parse a name from the command line or a model file.
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "mlp" => Some(Arch::Mlp),
            "cnn" => Some(Arch::Cnn),
            _ => None,
        }
    }
}

/// A classifier's layers (parameters live in a [`Params`] store).
#[derive(Clone, Debug)]
pub enum Classifier {
    /// The MLP.
    Mlp(Mlp),
    /// The CNN.
    Cnn(Cnn),
}

/// Layers of the small CNN.
#[derive(Clone, Debug)]
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    head: Mlp,
}

impl Cnn {
    fn new(b: &mut ParamsBuilder) -> Cnn {
        Cnn {
            conv1: Conv2d::new(b, "cnn.conv1", 1, 16, 5, 1, 2),
            conv2: Conv2d::new(b, "cnn.conv2", 16, 32, 5, 1, 2),
            head: Mlp::new(b, "cnn.fc", &[32 * 7 * 7, 128, CLASSES]),
        }
    }

    fn forward(&self, g: &mut Graph, p: &Params, x: Var) -> Result<Var> {
        let n = g.shape(x)[0];
        let x = g.reshape(x, &[n, 1, 28, 28])?;
        let h = self.conv1.forward(g, p, x)?;
        let h = g.relu(h)?;
        let h = g.max_pool2d(h, 2, 2)?;
        let h = self.conv2.forward(g, p, h)?;
        let h = g.relu(h)?;
        let h = g.max_pool2d(h, 2, 2)?;
        let h = g.reshape(h, &[n, 32 * 7 * 7])?;
        self.head.forward(g, p, h)
    }
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
            Arch::Cnn => Classifier::Cnn(Cnn::new(b)),
        }
    }

    /// Logits `[B, 10]` for pixels `[B, 784]`.
    pub fn logits(&self, g: &mut Graph, p: &Params, x: Var) -> Result<Var> {
        match self {
            Classifier::Mlp(m) => m.forward(g, p, x),
            Classifier::Cnn(c) => c.forward(g, p, x),
        }
    }
}
