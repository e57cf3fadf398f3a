//! pupil in the browser: load a `.pupil` classifier from bytes, classify, take a training
//! step, on the browser's WebGPU adapter or, where there is none (no `navigator.gpu`, or no
//! adapter behind it), on the CPU backend compiled to wasm32.
//!
//! The Rust API here ([`Classifier`], [`open_backend`]) is the same on every target and
//! only awaits (GPU values are read back with `map_async`, never by blocking), so it runs in
//! a browser and natively alike; on wasm32 the `js` module exports it to JavaScript through
//! wasm-bindgen (`Classifier.load(bytes)`, `classify(pixels)`, `backend`).

use pupil::graph::Graph;
use pupil::models::classifier::{Model, Train};
use pupil::ops::softmax::softmax;
use pupil::optim::{AdamWConfig, Optimizer, Rule};
use pupil::{Backend, Error, Result, Tensor};

#[cfg(target_arch = "wasm32")]
mod js;

/// The backend `wanted` names (`"cpu"`, `"webgpu"` or an adapter name part); by default
/// the best GPU adapter (in a browser, its WebGPU adapter), else the CPU backend when there
/// is no adapter at all.
pub async fn open_backend(wanted: Option<&str>) -> Result<Backend> {
    match Backend::open_async(wanted).await {
        Err(Error::NoAdapter { .. }) if wanted.is_none() => Ok(Backend::Cpu),
        other => other,
    }
}

/// Where a backend runs, as the JavaScript API reports it: `"webgpu"` (the browser's
/// WebGPU), `"gpu"` (a native adapter) or `"cpu"` (the CPU backend).
pub fn backend_kind(backend: &Backend) -> &'static str {
    match backend {
        Backend::Cpu => "cpu",
        Backend::Gpu(g) if g.adapter().backend == "BrowserWebGpu" => "webgpu",
        Backend::Gpu(_) => "gpu",
    }
}

/// A classifier read from a `.pupil` file, its parameters on one backend, every parameter
/// trainable.
pub struct Classifier {
    /// The file it was loaded from: the base an update is a delta to.
    file: pupil::format::ModelFile,
    model: Model,
    /// AdamW's moments, made at the first training step.
    optimizer: Option<Optimizer>,
}

impl Classifier {
    /// The classifier in the `.pupil` file `bytes` (validated, content hash checked), on
    /// `backend`.
    pub fn load(bytes: Vec<u8>, backend: &Backend) -> Result<Classifier> {
        let file = pupil::format::ModelFile::from_bytes(bytes)?;
        Ok(Classifier {
            model: Model::open(&file, backend, Train::All)?,
            file,
            optimizer: None,
        })
    }

    /// The model file it was loaded from (the base of an update).
    pub fn file(&self) -> &pupil::format::ModelFile {
        &self.file
    }

    /// Every parameter's name, shape and current values: the refined model that an update
    /// from [`Classifier::file`] carries.
    pub fn refined(&self) -> Result<Vec<pupil::params::NamedValues>> {
        self.model.merged()
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &Backend {
        self.model.params.backend()
    }

    /// The model's id in its file.
    pub fn model_id(&self) -> &str {
        &self.model.model_id
    }

    /// Values per example (784 for 28 x 28 digits).
    pub fn inputs(&self) -> usize {
        self.model.spec.inputs()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.model.classes()
    }

    /// How many examples `values` holds (a whole number of inputs, at least one).
    fn batch(&self, values: usize) -> Result<usize> {
        let dim = self.inputs();
        if values == 0 || !values.is_multiple_of(dim) {
            return Err(Error::Shape {
                op: "classify",
                detail: format!("{values} values are not a whole number of {dim}-value examples"),
            });
        }
        Ok(values / dim)
    }

    /// The logits (`[n, classes]`, row-major) of `n` examples (`pixels`: `n * inputs`
    /// values, each pixel `byte / 255`).
    pub async fn logits(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        self.run(pixels, false).await
    }

    /// The class probabilities (softmax of the logits, `[n, classes]`) of `n` examples.
    pub async fn classify(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        self.run(pixels, true).await
    }

    async fn run(&self, pixels: &[f32], probabilities: bool) -> Result<Vec<f32>> {
        let n = self.batch(pixels.len())?;
        let backend = self.backend();
        let mut g = Graph::new(backend);
        let x = g.input(Tensor::from_slice(backend, &[n, self.inputs()], pixels)?);
        let z = self.model.logits(&mut g, x)?;
        let out = if probabilities {
            softmax(g.value(z))?
        } else {
            g.value(z).clone()
        };
        out.to_vec_async().await
    }

    /// One AdamW step (`lr`, the other settings AdamW's defaults) on `n` labelled examples;
    /// returns their mean cross-entropy before the step.
    pub async fn train_step(&mut self, pixels: &[f32], labels: &[u32], lr: f32) -> Result<f32> {
        let n = self.batch(pixels.len())?;
        if labels.len() != n || labels.iter().any(|&y| y as usize >= self.classes()) {
            return Err(Error::Invalid(format!(
                "{} labels for {n} examples; each must be below {} classes",
                labels.len(),
                self.classes()
            )));
        }
        let params = &self.model.params;
        let backend = params.backend().clone();
        let optimizer = match &mut self.optimizer {
            Some(o) => o,
            empty => empty.insert(Optimizer::new(params, Rule::AdamW(AdamWConfig::default()))?),
        };
        if let Rule::AdamW(c) = optimizer.rule_mut() {
            c.lr = lr;
        }
        let ys: Vec<f32> = labels.iter().map(|&y| y as f32).collect();
        let mut g = Graph::new(&backend);
        let x = g.input(Tensor::from_slice(
            &backend,
            &[n, self.model.spec.inputs()],
            pixels,
        )?);
        let y = g.input(Tensor::from_slice(&backend, &[n], &ys)?);
        let z = self.model.logits(&mut g, x)?;
        let loss = g.cross_entropy(z, y)?;
        params.zero_grad()?;
        g.backward(loss)?;
        optimizer.step(params)?;
        g.value(loss).item_async().await
    }

    /// Every parameter's value, in the flat store's order (what a training step changes).
    pub async fn parameters(&self) -> Result<Vec<f32>> {
        self.model.params.trainable_values()?.to_vec_async().await
    }
}
