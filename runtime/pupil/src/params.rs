//! The parameter store: every parameter, its gradient and (in the optimizers) its moments in
//! one flat buffer each, with a table of offsets. Trainable parameters come first, so an
//! optimizer step is one dispatch over one contiguous range, and the delta sent upstream is
//! one slice. Offsets are aligned to 64 elements (256 bytes) so every parameter is bindable.

use rand::{Rng, SeedableRng};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::{ModelBuilder, ModelFile};
use crate::tensor::{numel, Tensor};

/// A parameter's name, shape and values, as written to a model file.
pub type NamedValues = (String, Vec<u64>, Vec<f32>);

/// Alignment of parameter offsets in elements (256 bytes of f32).
pub const ALIGN: usize = 64;

/// Index of a parameter in its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

impl ParamId {
    /// Position in [`Params::infos`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// How a parameter starts.
#[derive(Clone, Debug)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Uniform in `[-bound, bound)`.
    Uniform(f32),
    /// Normal with this standard deviation.
    Normal(f32),
    /// These exact values.
    Values(Vec<f32>),
}

struct Spec {
    name: String,
    shape: Vec<usize>,
    init: Init,
    trainable: bool,
}

/// Collects parameter declarations, then lays them out in one buffer.
pub struct ParamsBuilder {
    specs: Vec<Spec>,
    seed: u64,
}

/// One parameter's place in the store.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// Dotted name, e.g. `fc1.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Offset in elements in the flat buffers.
    pub offset: usize,
    /// Whether the optimizer updates it.
    pub trainable: bool,
}

/// Parameters, gradients and their layout on one backend.
pub struct Params {
    backend: Backend,
    infos: Vec<ParamInfo>,
    values: Tensor,
    grads: Tensor,
    trainable_len: usize,
}

impl ParamsBuilder {
    /// An empty builder; `seed` makes random initialisation reproducible.
    pub fn new(seed: u64) -> Self {
        ParamsBuilder {
            specs: Vec::new(),
            seed,
        }
    }

    /// Declare a parameter.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        init: Init,
        trainable: bool,
    ) -> ParamId {
        self.specs.push(Spec {
            name: name.into(),
            shape: shape.to_vec(),
            init,
            trainable,
        });
        ParamId(self.specs.len() - 1)
    }

    /// Train only the parameters whose name `keep` accepts; freeze the rest (fine-tuning a
    /// head, say). Call after declaring the layers and before [`ParamsBuilder::build`].
    pub fn train_only(&mut self, keep: impl Fn(&str) -> bool) -> &mut Self {
        for s in &mut self.specs {
            s.trainable = keep(&s.name);
        }
        self
    }

    /// Lay out and upload every parameter.
    pub fn build(self, backend: &Backend) -> Result<Params> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let mut order: Vec<usize> = (0..self.specs.len()).collect();
        order.sort_by_key(|&i| !self.specs[i].trainable);
        let mut offsets = vec![0; self.specs.len()];
        let mut end = 0;
        let mut trainable_len = 0;
        for &i in &order {
            offsets[i] = end;
            end = (end + numel(&self.specs[i].shape)).div_ceil(ALIGN) * ALIGN;
            if self.specs[i].trainable {
                trainable_len = end;
            }
        }
        let mut host = vec![0.0f32; end.max(ALIGN)];
        for (i, s) in self.specs.iter().enumerate() {
            let n = numel(&s.shape);
            let dst = &mut host[offsets[i]..offsets[i] + n];
            match &s.init {
                Init::Zeros => {}
                Init::Ones => dst.fill(1.0),
                Init::Uniform(b) => dst.iter_mut().for_each(|v| *v = rng.random_range(-b..*b)),
                Init::Normal(std) => dst.iter_mut().for_each(|v| *v = normal(&mut rng) * std),
                Init::Values(vals) if vals.len() == n => dst.copy_from_slice(vals),
                Init::Values(vals) => {
                    return Err(Error::shape(
                        "param",
                        format!("{}: {} values for shape {:?}", s.name, vals.len(), s.shape),
                    ))
                }
            }
        }
        let len = host.len();
        let infos = self
            .specs
            .into_iter()
            .zip(offsets)
            .map(|(s, offset)| ParamInfo {
                name: s.name,
                shape: s.shape,
                offset,
                trainable: s.trainable,
            })
            .collect();
        Ok(Params {
            backend: backend.clone(),
            infos,
            values: Tensor::from_slice(backend, &[len], &host)?,
            grads: Tensor::zeros(backend, &[len])?,
            trainable_len,
        })
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

impl Params {
    /// The backend the parameters live on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Every parameter's name, shape and place.
    pub fn infos(&self) -> &[ParamInfo] {
        &self.infos
    }

    fn info(&self, id: ParamId) -> Result<&ParamInfo> {
        self.infos
            .get(id.0)
            .ok_or_else(|| Error::Invalid(format!("no parameter #{}", id.0)))
    }

    /// The parameter called `name`.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.infos.iter().position(|p| p.name == name).map(ParamId)
    }

    /// Whether the optimizer updates this parameter.
    pub fn is_trainable(&self, id: ParamId) -> bool {
        self.infos.get(id.0).is_some_and(|p| p.trainable)
    }

    /// A view of the parameter's values.
    pub fn value(&self, id: ParamId) -> Result<Tensor> {
        let p = self.info(id)?;
        self.values.view(p.offset, &p.shape)
    }

    /// A view of the parameter's gradient slot.
    pub fn grad(&self, id: ParamId) -> Result<Tensor> {
        let p = self.info(id)?;
        self.grads.view(p.offset, &p.shape)
    }

    /// Overwrite a parameter's values.
    pub fn set(&self, id: ParamId, data: &[f32]) -> Result<()> {
        self.value(id)?.write(data)
    }

    /// The flat values of every trainable parameter (with alignment padding).
    pub fn trainable_values(&self) -> Result<Tensor> {
        self.values.view(0, &[self.trainable_len])
    }

    /// The flat gradients of every trainable parameter (with alignment padding).
    pub fn trainable_grads(&self) -> Result<Tensor> {
        self.grads.view(0, &[self.trainable_len])
    }

    /// Number of elements in the trainable range (including padding).
    pub fn trainable_len(&self) -> usize {
        self.trainable_len
    }

    /// Number of parameter elements (without padding).
    pub fn count(&self, trainable_only: bool) -> usize {
        self.infos
            .iter()
            .filter(|p| p.trainable || !trainable_only)
            .map(|p| numel(&p.shape))
            .sum()
    }

    /// Bytes of the value buffer (gradients take as much again).
    pub fn bytes(&self) -> u64 {
        self.values.bytes()
    }

    /// Add every parameter to a model file being built, as f32 tensors under their names.
    pub fn export(&self, builder: &mut ModelBuilder) -> Result<()> {
        for (name, shape, values) in self.export_values()? {
            builder.add_f32(&name, &shape, &values)?;
        }
        Ok(())
    }

    /// Every parameter's name, shape and values, read back in one transfer.
    pub fn export_values(&self) -> Result<Vec<NamedValues>> {
        let all = self.values.to_vec()?;
        Ok(self
            .infos
            .iter()
            .map(|p| {
                let shape = p.shape.iter().map(|&d| d as u64).collect();
                let values = all[p.offset..p.offset + numel(&p.shape)].to_vec();
                (p.name.clone(), shape, values)
            })
            .collect())
    }

    /// Load every parameter that `file` holds (by name, converting its dtype to f32);
    /// returns the names of the parameters the file lacks, which keep their initial values
    /// (a LoRA adapter on a base model, say). A shape mismatch is an error.
    pub fn load(&self, file: &ModelFile) -> Result<Vec<String>> {
        self.load_mapped(file, str::to_owned)
    }

    /// [`Params::load`] where parameter `name` is read from the file's tensor `source(name)`
    /// (a shallower model starting from chosen layers of a deeper one, say); returns the
    /// names of the parameters whose source the file lacks.
    pub fn load_mapped(
        &self,
        file: &ModelFile,
        source: impl Fn(&str) -> String,
    ) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for (i, p) in self.infos.iter().enumerate() {
            let Ok(t) = file.tensor(&source(&p.name)) else {
                missing.push(p.name.clone());
                continue;
            };
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            if shape != p.shape {
                return Err(Error::shape(
                    "load",
                    format!(
                        "{}: file has {:?}, model expects {:?}",
                        p.name, shape, p.shape
                    ),
                ));
            }
            self.set(ParamId(i), &t.to_f32())?;
        }
        Ok(missing)
    }

    /// Reset every gradient to zero (one clear on the GPU).
    pub fn zero_grad(&self) -> Result<()> {
        match &self.backend {
            Backend::Cpu => {
                self.grads.cpu_write()?.fill(0.0);
                Ok(())
            }
            Backend::Gpu(g) => {
                let b = self.grads.gpu_buffer()?;
                g.zero(b.raw(), 0, self.grads.bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::gpu;

    #[test]
    fn trainable_first_and_aligned() {
        for backend in [Backend::Cpu, gpu()] {
            let mut b = ParamsBuilder::new(1);
            let frozen = b.add("frozen", &[3, 5], Init::Ones, false);
            let w = b.add("w", &[7, 3], Init::Uniform(0.1), true);
            let bias = b.add(
                "b",
                &[7],
                Init::Values((0..7).map(|i| i as f32).collect()),
                true,
            );
            let p = b.build(&backend).unwrap();
            assert_eq!(p.infos()[w.0].offset, 0);
            assert_eq!(p.infos()[bias.0].offset, 64);
            assert_eq!(p.infos()[frozen.0].offset, 128);
            assert_eq!(p.trainable_len(), 128);
            assert_eq!(
                p.value(bias).unwrap().to_vec().unwrap(),
                (0..7).map(|i| i as f32).collect::<Vec<_>>()
            );
            assert_eq!(p.value(frozen).unwrap().to_vec().unwrap(), vec![1.0; 15]);
            assert!(p
                .value(w)
                .unwrap()
                .to_vec()
                .unwrap()
                .iter()
                .all(|v| v.abs() <= 0.1));
            assert_eq!(p.count(true), 28);
            assert_eq!(p.find("b"), Some(bias));
        }
    }

    /// Export to a model file and load into a fresh store: values round-trip exactly, and
    /// parameters the file lacks are reported.
    #[test]
    fn export_and_load_round_trip() {
        let mut b = ParamsBuilder::new(1);
        b.add("w", &[7, 3], Init::Uniform(0.5), true);
        let p = b.build(&Backend::Cpu).unwrap();
        let mut mb = ModelBuilder::new("t", "test").unwrap();
        p.export(&mut mb).unwrap();
        let file = ModelFile::from_bytes(mb.to_bytes().unwrap()).unwrap();
        for backend in [Backend::Cpu, gpu()] {
            let mut b = ParamsBuilder::new(2);
            let w = b.add("w", &[7, 3], Init::Zeros, true);
            b.add("extra", &[2], Init::Zeros, true);
            let q = b.build(&backend).unwrap();
            assert_eq!(q.load(&file).unwrap(), vec!["extra".to_string()]);
            assert_eq!(
                q.value(w).unwrap().to_vec().unwrap(),
                p.value(w).unwrap().to_vec().unwrap()
            );
            let mut b = ParamsBuilder::new(2);
            b.add("w", &[3, 7], Init::Zeros, true);
            assert!(matches!(
                b.build(&backend).unwrap().load(&file),
                Err(Error::Shape { .. })
            ));
        }
    }
}
