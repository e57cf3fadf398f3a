//! Image classifiers for 28 x 28 grey images (MNIST-like): the MLP 784-200-200-10 of
//! McMahan et al. (the "2NN") and a small CNN sized for software adapters:
//! conv 5x5 1->16, ReLU, max-pool 2, conv 5x5 16->32, ReLU, max-pool 2, FC 1568->128, ReLU,
//! FC 128->10 (about 3 M multiply-adds per image). Inputs are `[B, 784]` pixels in [0, 1].

use std::path::Path;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::{DType, ModelBuilder, ModelFile};
use crate::graph::{Graph, Var};
use crate::nn::{Conv2d, Linear, Mlp};
use crate::params::{NamedValues, ParamId, ParamInfo, Params, ParamsBuilder};

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
    fn new(b: &mut ParamsBuilder, lora: Option<(usize, f32)>) -> Cnn {
        let dims = [32 * 7 * 7, 128, CLASSES];
        Cnn {
            conv1: Conv2d::new(b, "cnn.conv1", 1, 16, 5, 1, 2),
            conv2: Conv2d::new(b, "cnn.conv2", 16, 32, 5, 1, 2),
            head: match lora {
                Some((rank, alpha)) => Mlp::with_lora(b, "cnn.fc", &dims, rank, alpha),
                None => Mlp::new(b, "cnn.fc", &dims),
            },
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

/// Which parameters fine-tuning trains; the rest stay frozen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Train {
    /// Every parameter.
    All,
    /// Only the last linear layer (the classification head).
    Head,
    /// LoRA adapters of this rank (alpha = 2 x rank) on every linear layer; the base frozen.
    Lora(usize),
}

impl Train {
    /// Parse `all`, `head` or `lora:R`.
    pub fn parse(text: &str) -> Result<Train> {
        match text {
            "all" => Ok(Train::All),
            "head" => Ok(Train::Head),
            _ => text
                .strip_prefix("lora:")
                .and_then(|r| r.parse().ok())
                .filter(|&r: &usize| r > 0)
                .map(Train::Lora)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "--train {text:?}: use all, head or lora:RANK (e.g. lora:8)"
                    ))
                }),
        }
    }
}

impl std::fmt::Display for Train {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Train::All => write!(f, "all"),
            Train::Head => write!(f, "head"),
            Train::Lora(r) => write!(f, "lora:{r}"),
        }
    }
}

/// Pixels per input image.
pub const INPUTS: usize = 784;
/// Classes.
pub const CLASSES: usize = 10;

impl Classifier {
    /// Declare the layers of `arch` in `b`.
    pub fn new(arch: Arch, b: &mut ParamsBuilder) -> Classifier {
        Self::build(arch, b, None)
    }

    /// Declare the layers, with LoRA adapters `(rank, alpha)` on the linear layers when given
    /// (their base weights, and the convolutions, frozen).
    pub fn build(arch: Arch, b: &mut ParamsBuilder, lora: Option<(usize, f32)>) -> Classifier {
        const DIMS: [usize; 4] = [INPUTS, 200, 200, CLASSES];
        match (arch, lora) {
            (Arch::Mlp, None) => Classifier::Mlp(Mlp::new(b, "mlp", &DIMS)),
            (Arch::Mlp, Some((r, a))) => Classifier::Mlp(Mlp::with_lora(b, "mlp", &DIMS, r, a)),
            (Arch::Cnn, lora) => Classifier::Cnn(Cnn::new(b, lora)),
        }
    }

    /// The linear layers, input to output.
    pub fn linears(&self) -> &[Linear] {
        match self {
            Classifier::Mlp(m) => &m.layers,
            Classifier::Cnn(c) => &c.head.layers,
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

/// Model id of classifiers in `.pupil` files (the architecture is the file's `arch`).
pub const MODEL_ID: &str = "mnist";

/// A classifier with its parameters on one backend: what a model file holds, ready to run.
pub struct Model {
    /// Which architecture.
    pub arch: Arch,
    /// Its layers.
    pub net: Classifier,
    /// Its parameters.
    pub params: Params,
}

impl Model {
    /// A freshly initialised classifier (`seed` fixes the initial weights).
    pub fn new(arch: Arch, backend: &Backend, seed: u64) -> Result<Model> {
        let mut b = ParamsBuilder::new(seed);
        let net = Classifier::new(arch, &mut b);
        let params = b.build(backend)?;
        Ok(Model { arch, net, params })
    }

    /// The classifier stored in `file`, set up to train what `train` says.
    /// Refuses files of another model or that lack a parameter.
    pub fn open(file: &ModelFile, backend: &Backend, train: Train) -> Result<Model> {
        let info = file.info();
        let arch = Arch::from_name(&info.arch)
            .filter(|_| info.model_id == MODEL_ID)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "model file holds {:?} ({:?}), not an MNIST classifier (mlp or cnn)",
                    info.model_id.as_str(),
                    info.arch.as_str()
                ))
            })?;
        let mut b = ParamsBuilder::new(0);
        let lora = match train {
            Train::Lora(rank) => Some((rank, 2.0 * rank as f32)),
            _ => None,
        };
        let net = Classifier::build(arch, &mut b, lora);
        if lora.is_some() {
            b.train_only(|name| name.contains(".lora_"));
        }
        if train == Train::Head {
            let head = net.linears().len() - 1;
            let prefix = match arch {
                Arch::Mlp => format!("mlp.{head}."),
                Arch::Cnn => format!("cnn.fc.{head}."),
            };
            b.train_only(|name| name.starts_with(&prefix));
        }
        let params = b.build(backend)?;
        let mut missing = params.load(file)?;
        missing.retain(|name| !name.contains(".lora_"));
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "model file lacks {}",
                missing.join(", ")
            )));
        }
        Ok(Model { arch, net, params })
    }

    /// Logits `[B, 10]` for pixels `[B, 784]`.
    pub fn logits(&self, g: &mut Graph, x: Var) -> Result<Var> {
        self.net.logits(g, &self.params, x)
    }

    /// A model file builder holding the parameters as `dtype`, with `version` and `parent`.
    pub fn to_builder(
        &self,
        dtype: DType,
        version: u32,
        parent: Option<[u8; 32]>,
    ) -> Result<ModelBuilder> {
        let mut b = ModelBuilder::new(MODEL_ID, self.arch.name())?;
        b.version(version).parent(parent);
        for (name, shape, values) in &self.merged()? {
            b.add_f32_as(name, dtype, shape, values)?;
        }
        Ok(b)
    }

    /// Every base parameter's name, shape and values, with LoRA adapters merged into their
    /// layers' weights (`W + (alpha / r) B A`): what a model file or an update carries.
    pub fn merged(&self) -> Result<Vec<NamedValues>> {
        let mut all = self.params.export_values()?;
        let index = |all: &[NamedValues], name: &str| all.iter().position(|(n, _, _)| n == name);
        for layer in self.net.linears() {
            let Some(lora) = &layer.lora else { continue };
            let info = self.params.infos();
            let (w, a, bm) = (
                info_name(info, layer.weight),
                info_name(info, lora.a),
                info_name(info, lora.b),
            );
            let (Some(wi), Some(ai), Some(bi)) = (index(&all, w), index(&all, a), index(&all, bm))
            else {
                return Err(Error::Invalid(format!(
                    "LoRA parameters of {w} are missing"
                )));
            };
            let (out, rank, inputs) = (
                all[bi].1[0] as usize,
                all[ai].1[0] as usize,
                all[ai].1[1] as usize,
            );
            let (av, bv) = (all[ai].2.clone(), all[bi].2.clone());
            let wv = &mut all[wi].2;
            for o in 0..out {
                for r in 0..rank {
                    let s = lora.scale * bv[o * rank + r];
                    if s != 0.0 {
                        let row = &av[r * inputs..(r + 1) * inputs];
                        wv[o * inputs..(o + 1) * inputs]
                            .iter_mut()
                            .zip(row)
                            .for_each(|(w, a)| *w += s * a);
                    }
                }
            }
        }
        all.retain(|(name, _, _)| !name.contains(".lora_"));
        Ok(all)
    }

    /// Write the model atomically to `path`; returns its content hash.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        dtype: DType,
        version: u32,
        parent: Option<[u8; 32]>,
    ) -> Result<[u8; 32]> {
        Ok(self
            .to_builder(dtype, version, parent)?
            .write_atomic(path)?)
    }
}

fn info_name(infos: &[ParamInfo], id: ParamId) -> &str {
    infos.get(id.index()).map_or("", |p| p.name.as_str())
}
