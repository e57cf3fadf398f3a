//! Classifiers of any input shape and class count, their shape read from the model file
//! ([`ClassifierSpec`]): an MLP (by default two hidden layers of 200, the "2NN" of McMahan
//! et al. on MNIST's 784 pixels) and a small CNN sized for software adapters (conv 5x5
//! C->16, ReLU, max-pool 2, conv 5x5 16->32, ReLU, max-pool 2, FC ->128, ReLU, FC ->classes;
//! about 3 M multiply-adds on a 28 x 28 image). Inputs are `[B, inputs]` values in [0, 1].

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

/// Which of a classifier's layers a device keeps personal: they train on the device, never
/// leave it, and replace the shared version's own when the device runs it. Keeping the input
/// layer suits devices whose inputs differ in style (feature shift: FedBN, Li et al. 2021;
/// LG-FedAvg, Liang et al. 2020), keeping the head suits devices whose classes differ
/// (FedPer, Arivazhagan et al. 2019).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Personal {
    /// Everything is shared.
    None,
    /// The classification head (the last linear layer).
    Head,
    /// The first layer (the first linear layer or convolution) and the head.
    Ends,
}

impl Personal {
    /// Parse `none`, `head` or `ends`.
    pub fn from_name(name: &str) -> Option<Personal> {
        match name {
            "none" => Some(Personal::None),
            "head" => Some(Personal::Head),
            "ends" => Some(Personal::Ends),
            _ => None,
        }
    }
}

/// The shape of a classifier: what one input looks like, how many classes, how wide its
/// layers are. Stored in the model file's config (`classifier.*` keys), so a model's
/// architecture comes from its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassifierSpec {
    /// Which architecture.
    pub arch: Arch,
    /// The shape of one input: `[C, H, W]` (the CNN needs H and W divisible by 4) or `[D]`.
    pub input: Vec<usize>,
    /// Number of classes.
    pub classes: usize,
    /// Hidden widths: the MLP's hidden layers, or the CNN's fully connected ones.
    pub hidden: Vec<usize>,
    /// The CNN's two convolutions' output channels (5 x 5, each followed by a 2 x 2
    /// max-pool); empty for the MLP.
    pub channels: Vec<usize>,
}

/// Config keys of [`ClassifierSpec`] in a model file.
const INPUT_KEY: &str = "classifier.input";
const CLASSES_KEY: &str = "classifier.classes";
const HIDDEN_KEY: &str = "classifier.hidden";
const CHANNELS_KEY: &str = "classifier.channels";

impl ClassifierSpec {
    /// `arch` for inputs of `input` shape and `classes` classes with the default widths:
    /// the MLP of McMahan et al. (two hidden layers of 200), the CNN with 16 and 32 channels
    /// and a hidden layer of 128.
    pub fn new(arch: Arch, input: &[usize], classes: usize) -> ClassifierSpec {
        let (hidden, channels) = match arch {
            Arch::Mlp => (vec![200, 200], Vec::new()),
            Arch::Cnn => (vec![128], vec![16, 32]),
        };
        ClassifierSpec {
            arch,
            input: input.to_vec(),
            classes,
            hidden,
            channels,
        }
    }

    /// Values per input.
    pub fn inputs(&self) -> usize {
        self.input.iter().product()
    }

    /// Checks the spec can be built: positive sizes, and for the CNN an image input
    /// `[C, H, W]` with H and W divisible by 4 and two channel counts.
    pub fn check(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Invalid(format!("classifier {self:?}: {why}")));
        if self.inputs() == 0 || self.input.is_empty() || self.classes < 2 {
            return bad("needs a non-empty input shape and at least 2 classes".into());
        }
        if self.hidden.contains(&0) || self.channels.contains(&0) {
            return bad("layer widths must be positive".into());
        }
        if self.arch == Arch::Cnn {
            match self.input.as_slice() {
                [_, h, w] if h % 4 == 0 && w % 4 == 0 && self.channels.len() == 2 => {}
                _ => {
                    return bad(
                        "the CNN needs an input [C, H, W] with H and W divisible by 4 and two \
                         channel counts"
                            .into(),
                    )
                }
            }
        }
        Ok(())
    }

    /// The spec a model file describes: its `arch` and `classifier.*` config; files written
    /// before those keys existed hold 28 x 28 one-channel inputs and 10 classes.
    pub fn from_file(file: &ModelFile) -> Result<ClassifierSpec> {
        let info = file.info();
        let arch = Arch::from_name(&info.arch).ok_or_else(|| {
            Error::Invalid(format!(
                "model file holds {:?} ({:?}), not a classifier (mlp or cnn)",
                info.model_id.as_str(),
                info.arch.as_str()
            ))
        })?;
        let ints = |key: &str| -> Result<Option<Vec<usize>>> {
            info.get(key)
                .map(|v| {
                    v.as_ints()
                        .map(|v| v.iter().map(|&x| usize::try_from(x).unwrap_or(0)).collect())
                        .or_else(|| v.as_int().map(|x| vec![usize::try_from(x).unwrap_or(0)]))
                        .ok_or_else(|| {
                            Error::Invalid(format!("the model's config {key:?} is not integers"))
                        })
                })
                .transpose()
        };
        let mut spec = match (ints(INPUT_KEY)?, ints(CLASSES_KEY)?) {
            (Some(input), Some(classes)) => {
                ClassifierSpec::new(arch, &input, classes.first().copied().unwrap_or(0))
            }
            _ => Self::from_tensors(arch, file)?,
        };
        if let Some(hidden) = ints(HIDDEN_KEY)? {
            spec.hidden = hidden;
        }
        if let Some(channels) = ints(CHANNELS_KEY)? {
            spec.channels = channels;
        }
        spec.check()?;
        Ok(spec)
    }

    /// The spec of a file without `classifier.*` config, read off its weights' shapes (the
    /// CNN's images taken as square).
    fn from_tensors(arch: Arch, file: &ModelFile) -> Result<ClassifierSpec> {
        let shape = |name: &str| -> Result<Vec<usize>> {
            let t = file.tensor(name).map_err(|_| {
                Error::Invalid(format!(
                    "model file has neither classifier.* config nor the tensor {name}"
                ))
            })?;
            Ok(t.shape.iter().map(|&d| d as usize).collect())
        };
        let prefix = match arch {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn.fc",
        };
        let mut widths = Vec::new();
        let mut first_in = 0;
        while let Ok(t) = file.tensor(&format!("{prefix}.{}.weight", widths.len())) {
            if let [out, inputs] = t.shape {
                if widths.is_empty() {
                    first_in = *inputs as usize;
                }
                widths.push(*out as usize);
            } else {
                return Err(Error::Invalid(format!("{prefix} weights are not matrices")));
            }
        }
        let classes = widths.pop().unwrap_or(0);
        let mut spec = ClassifierSpec::new(arch, &[first_in], classes);
        spec.hidden = widths;
        if arch == Arch::Cnn {
            let (c1, c2) = (shape("cnn.conv1.weight")?, shape("cnn.conv2.weight")?);
            let side = ((first_in / c2[0].max(1)) as f64).sqrt().round() as usize;
            spec.input = vec![c1[1], 4 * side, 4 * side];
            spec.channels = vec![c1[0], c2[0]];
        }
        Ok(spec)
    }

    /// Writes the spec into a model file's config.
    pub fn write_config(&self, b: &mut ModelBuilder) -> Result<()> {
        let ints = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        b.config_ints(INPUT_KEY, &ints(&self.input))?;
        b.config_int(CLASSES_KEY, self.classes as i64)?;
        b.config_ints(HIDDEN_KEY, &ints(&self.hidden))?;
        if !self.channels.is_empty() {
            b.config_ints(CHANNELS_KEY, &ints(&self.channels))?;
        }
        Ok(())
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

/// Layers of the small CNN and the input shape they read.
#[derive(Clone, Debug)]
pub struct Cnn {
    input: [usize; 3],
    channels: usize,
    conv1: Conv2d,
    conv2: Conv2d,
    head: Mlp,
}

impl Cnn {
    fn new(b: &mut ParamsBuilder, spec: &ClassifierSpec, lora: Option<(usize, f32)>) -> Cnn {
        let (c, h, w) = match spec.input.as_slice() {
            [c, h, w] => (*c, *h, *w),
            _ => (1, 4, 4),
        };
        let (c1, c2) = (spec.channels[0], spec.channels[1]);
        let mut dims = vec![c2 * (h / 4) * (w / 4)];
        dims.extend_from_slice(&spec.hidden);
        dims.push(spec.classes);
        Cnn {
            input: [c, h, w],
            channels: c2,
            conv1: Conv2d::new(b, "cnn.conv1", c, c1, 5, 1, 2),
            conv2: Conv2d::new(b, "cnn.conv2", c1, c2, 5, 1, 2),
            head: match lora {
                Some((rank, alpha)) => Mlp::with_lora(b, "cnn.fc", &dims, rank, alpha),
                None => Mlp::new(b, "cnn.fc", &dims),
            },
        }
    }

    fn forward(&self, g: &mut Graph, p: &Params, x: Var) -> Result<Var> {
        let n = g.shape(x)[0];
        let [c, h, w] = self.input;
        let x = g.reshape(x, &[n, c, h, w])?;
        let y = self.conv1.forward(g, p, x)?;
        let y = g.relu(y)?;
        let y = g.max_pool2d(y, 2, 2)?;
        let y = self.conv2.forward(g, p, y)?;
        let y = g.relu(y)?;
        let y = g.max_pool2d(y, 2, 2)?;
        let y = g.reshape(y, &[n, self.channels * (h / 4) * (w / 4)])?;
        self.head.forward(g, p, y)
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

impl Classifier {
    /// Declare the layers of `spec` in `b`.
    pub fn new(spec: &ClassifierSpec, b: &mut ParamsBuilder) -> Classifier {
        Self::build(spec, b, None)
    }

    /// Declare the layers, with LoRA adapters `(rank, alpha)` on the linear layers when given
    /// (their base weights, and the convolutions, frozen).
    pub fn build(
        spec: &ClassifierSpec,
        b: &mut ParamsBuilder,
        lora: Option<(usize, f32)>,
    ) -> Classifier {
        let mut dims = vec![spec.inputs()];
        dims.extend_from_slice(&spec.hidden);
        dims.push(spec.classes);
        match (spec.arch, lora) {
            (Arch::Mlp, None) => Classifier::Mlp(Mlp::new(b, "mlp", &dims)),
            (Arch::Mlp, Some((r, a))) => Classifier::Mlp(Mlp::with_lora(b, "mlp", &dims, r, a)),
            (Arch::Cnn, lora) => Classifier::Cnn(Cnn::new(b, spec, lora)),
        }
    }

    /// The linear layers, input to output.
    pub fn linears(&self) -> &[Linear] {
        match self {
            Classifier::Mlp(m) => &m.layers,
            Classifier::Cnn(c) => &c.head.layers,
        }
    }

    /// Logits `[B, classes]` for inputs `[B, inputs]`.
    pub fn logits(&self, g: &mut Graph, p: &Params, x: Var) -> Result<Var> {
        match self {
            Classifier::Mlp(m) => m.forward(g, p, x),
            Classifier::Cnn(c) => c.forward(g, p, x),
        }
    }
}

/// A classifier with its parameters on one backend: what a model file holds, ready to run.
pub struct Model {
    /// The model's id in its files (what the sync server checks updates against).
    pub model_id: String,
    /// Its shape.
    pub spec: ClassifierSpec,
    /// Its layers.
    pub net: Classifier,
    /// Its parameters.
    pub params: Params,
}

impl Model {
    /// A freshly initialised classifier `model_id` of `spec` (`seed` fixes the weights).
    pub fn new(
        model_id: &str,
        spec: &ClassifierSpec,
        backend: &Backend,
        seed: u64,
    ) -> Result<Model> {
        spec.check()?;
        let mut b = ParamsBuilder::new(seed);
        let net = Classifier::new(spec, &mut b);
        let params = b.build(backend)?;
        Ok(Model {
            model_id: model_id.to_owned(),
            spec: spec.clone(),
            net,
            params,
        })
    }

    /// The classifier stored in `file` (its shape from the file, see
    /// [`ClassifierSpec::from_file`]), set up to train what `train` says. Refuses files of
    /// another kind of model or that lack a parameter.
    pub fn open(file: &ModelFile, backend: &Backend, train: Train) -> Result<Model> {
        let spec = ClassifierSpec::from_file(file)?;
        let mut b = ParamsBuilder::new(0);
        let lora = match train {
            Train::Lora(rank) => Some((rank, 2.0 * rank as f32)),
            _ => None,
        };
        let net = Classifier::build(&spec, &mut b, lora);
        if lora.is_some() {
            b.train_only(|name| name.contains(".lora_"));
        }
        if train == Train::Head {
            let prefix = head_prefix(&spec);
            b.train_only(|name| name.starts_with(&prefix));
        }
        let params = b.build(backend)?;
        let mut missing = params.load(file)?;
        missing.retain(|name| !name.contains(".lora_"));
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "model file lacks {} (or its classifier.* config does not match its tensors)",
                missing.join(", ")
            )));
        }
        Ok(Model {
            model_id: file.info().model_id.to_string(),
            spec,
            net,
            params,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.spec.classes
    }

    /// The name prefix of the classification head's parameters (the last linear layer),
    /// e.g. `mlp.2.`: what `Train::Head` trains and what a device may keep personal.
    pub fn head_prefix(&self) -> String {
        head_prefix(&self.spec)
    }

    /// The name prefixes of the parameters `personal` keeps on the device.
    pub fn personal_prefixes(&self, personal: Personal) -> Vec<String> {
        let input = match self.spec.arch {
            Arch::Mlp => "mlp.0.".to_string(),
            Arch::Cnn => "cnn.conv1.".to_string(),
        };
        match personal {
            Personal::None => Vec::new(),
            Personal::Head => vec![self.head_prefix()],
            Personal::Ends => vec![input, self.head_prefix()],
        }
    }

    /// Logits `[B, classes]` for inputs `[B, inputs]`.
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
        let mut b = ModelBuilder::new(&self.model_id, self.spec.arch.name())?;
        b.version(version).parent(parent);
        self.spec.write_config(&mut b)?;
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

/// The last linear layer's name prefix for `spec`.
fn head_prefix(spec: &ClassifierSpec) -> String {
    let head = spec.hidden.len();
    match spec.arch {
        Arch::Mlp => format!("mlp.{head}."),
        Arch::Cnn => format!("cnn.fc.{head}."),
    }
}

fn info_name(infos: &[ParamInfo], id: ParamId) -> &str {
    infos.get(id.index()).map_or("", |p| p.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    /// Logits of `model` for `n` inputs of zeros.
    fn logits(model: &Model, n: usize) -> Vec<usize> {
        let backend = model.params.backend().clone();
        let mut g = Graph::new(&backend);
        let x = g.input(Tensor::zeros(&backend, &[n, model.spec.inputs()]).unwrap());
        let z = model.logits(&mut g, x).unwrap();
        g.shape(z).to_vec()
    }

    #[test]
    fn any_input_shape_and_class_count() {
        let cases = [
            ClassifierSpec::new(Arch::Cnn, &[1, 8, 8], 10),
            ClassifierSpec::new(Arch::Cnn, &[3, 12, 16], 5),
            ClassifierSpec::new(Arch::Mlp, &[32], 3),
        ];
        for spec in cases {
            let model = Model::new("m", &spec, &Backend::Cpu, 1).unwrap();
            assert_eq!(logits(&model, 3), [3, spec.classes], "{spec:?}");
            // The file carries the spec; opening it builds the same layers.
            let file = ModelFile::from_bytes(
                model
                    .to_builder(DType::F32, 1, None)
                    .unwrap()
                    .to_bytes()
                    .unwrap(),
            )
            .unwrap();
            let back = Model::open(&file, &Backend::Cpu, Train::All).unwrap();
            assert_eq!((back.spec, back.model_id.as_str()), (spec, "m"));
        }
        let bad = ClassifierSpec::new(Arch::Cnn, &[1, 6, 6], 10);
        assert!(Model::new("m", &bad, &Backend::Cpu, 1).is_err());
        assert!(Model::new(
            "m",
            &ClassifierSpec::new(Arch::Mlp, &[4], 1),
            &Backend::Cpu,
            1
        )
        .is_err());
    }

    #[test]
    fn files_without_a_spec_are_read_off_their_weights() {
        let spec = ClassifierSpec::new(Arch::Cnn, &[2, 16, 16], 7);
        let model = Model::new("old", &spec, &Backend::Cpu, 1).unwrap();
        let mut b = ModelBuilder::new("old", "cnn").unwrap();
        for (name, shape, values) in model.merged().unwrap() {
            b.add_f32(&name, &shape, &values).unwrap();
        }
        let file = ModelFile::from_bytes(b.to_bytes().unwrap()).unwrap();
        assert_eq!(ClassifierSpec::from_file(&file).unwrap(), spec);
        let other =
            ModelFile::from_bytes(ModelBuilder::new("x", "bert").unwrap().to_bytes().unwrap())
                .unwrap();
        assert!(ClassifierSpec::from_file(&other).is_err());
    }

    #[test]
    fn personal_prefixes_name_the_first_layer_and_the_head() {
        for (spec, first, head) in [
            (ClassifierSpec::new(Arch::Mlp, &[32], 3), "mlp.0.", "mlp.2."),
            (
                ClassifierSpec::new(Arch::Cnn, &[1, 8, 8], 4),
                "cnn.conv1.",
                "cnn.fc.1.",
            ),
        ] {
            let model = Model::new("m", &spec, &Backend::Cpu, 1).unwrap();
            let names: Vec<String> = model.merged().unwrap().into_iter().map(|t| t.0).collect();
            assert!(model.personal_prefixes(Personal::None).is_empty());
            assert_eq!(model.personal_prefixes(Personal::Head), [head]);
            assert_eq!(model.personal_prefixes(Personal::Ends), [first, head]);
            for prefix in [first, head] {
                let hits = names.iter().filter(|n| n.starts_with(prefix)).count();
                assert_eq!(hits, 2, "{prefix} names a weight and a bias of {names:?}");
            }
        }
        assert_eq!(Personal::from_name("ends"), Some(Personal::Ends));
        assert_eq!(Personal::from_name("body"), None);
    }
}
