//! Fused optimizers over the flat trainable range of a [`Params`] store: one dispatch per
//! step for the update, two small ones for global-norm gradient clipping. Moments exist only
//! for trainable parameters.
//!
//! Each step first computes `clip = [norm, scale]` on the device (norm = global L2 norm of
//! the gradients, scale = min(1, max_norm / norm)); the update multiplies every gradient by
//! `scale`. A non-finite norm (NaN or Inf gradients) skips the step: weights and moments stay
//! as they were, and [`Optimizer::last_grad_norm`] reports the bad norm.

use bytemuck::{Pod, Zeroable};

use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::ops::{grid, reduce, u32_len};
use crate::params::Params;
use crate::tensor::Tensor;

/// Hyper-parameters of AdamW.
#[derive(Clone, Debug)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: None,
        }
    }
}

/// Hyper-parameters of SGD with momentum.
#[derive(Clone, Debug)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum (0 for plain SGD).
    pub momentum: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f32>,
}

/// Which update rule.
#[derive(Clone, Debug)]
pub enum Rule {
    /// AdamW.
    AdamW(AdamWConfig),
    /// SGD with momentum.
    Sgd(SgdConfig),
}

/// An optimizer's state read back to the host, for checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// Steps taken.
    pub steps: u32,
    /// First moments (or momentum).
    pub m: Vec<f32>,
    /// Second moments (AdamW only).
    pub v: Option<Vec<f32>>,
}

/// An optimizer with its state for one parameter store.
pub struct Optimizer {
    rule: Rule,
    m: Tensor,
    v: Option<Tensor>,
    clip: Tensor,
    steps: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct StepParams {
    n: u32,
    _pad: [u32; 3],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias1: f32,
    bias2: f32,
    momentum: f32,
}

impl Optimizer {
    /// State for `params`' trainable range.
    pub fn new(params: &Params, rule: Rule) -> Result<Optimizer> {
        let backend = params.backend();
        let n = params.trainable_len().max(1);
        let v = match rule {
            Rule::AdamW(_) => Some(Tensor::zeros(backend, &[n])?),
            Rule::Sgd(_) => None,
        };
        Ok(Optimizer {
            rule,
            m: Tensor::zeros(backend, &[n])?,
            v,
            clip: Tensor::zeros(backend, &[2])?,
            steps: 0,
        })
    }

    /// The rule and its hyper-parameters (the learning rate may be changed between steps).
    pub fn rule_mut(&mut self) -> &mut Rule {
        &mut self.rule
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Bytes of optimizer state.
    pub fn state_bytes(&self) -> u64 {
        self.m.bytes() + self.v.as_ref().map_or(0, Tensor::bytes)
    }

    /// Read the state back (a synchronisation point).
    pub fn state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState {
            steps: self.steps,
            m: self.m.to_vec()?,
            v: self.v.as_ref().map(Tensor::to_vec).transpose()?,
        })
    }

    /// Continue from a saved state of an optimizer of the same rule over the same parameters.
    pub fn restore(&mut self, state: &OptimizerState) -> Result<()> {
        if state.m.len() != self.m.numel() || state.v.is_some() != self.v.is_some() {
            return Err(Error::Invalid(format!(
                "optimizer state of {} values{} does not fit this optimizer ({} values{})",
                state.m.len(),
                if state.v.is_some() {
                    " with second moments"
                } else {
                    ""
                },
                self.m.numel(),
                if self.v.is_some() {
                    " with second moments"
                } else {
                    ""
                },
            )));
        }
        self.m.write(&state.m)?;
        if let (Some(v), Some(saved)) = (&self.v, &state.v) {
            v.write(saved)?;
        }
        self.steps = state.steps;
        Ok(())
    }

    /// Global gradient norm of the last step (reads back: a synchronisation point).
    pub fn last_grad_norm(&self) -> Result<f32> {
        Ok(self.clip.to_vec()?[0])
    }

    /// Apply one update from the accumulated gradients (then zero them with
    /// [`Params::zero_grad`] before the next accumulation).
    pub fn step(&mut self, params: &Params) -> Result<()> {
        if params.trainable_len() == 0 {
            return Ok(());
        }
        self.steps += 1;
        let w = params.trainable_values()?;
        let g = params.trainable_grads()?;
        let max_norm = match &self.rule {
            Rule::AdamW(c) => c.max_grad_norm,
            Rule::Sgd(c) => c.max_grad_norm,
        };
        if let Some(m) = max_norm {
            if m.is_nan() || m <= 0.0 {
                return Err(Error::Invalid(format!(
                    "max_grad_norm must be positive, got {m}"
                )));
            }
        }
        let sumsq = reduce::sum_squares(&g)?;
        let p = self.step_params(w.numel())?;
        match params.backend() {
            Backend::Cpu => {
                let s = sumsq.cpu_read()?[0];
                let clip = cpu::clip(s, max_norm.unwrap_or(0.0));
                self.clip.cpu_write()?.copy_from_slice(&clip);
                let v = self.v.as_ref().map(|v| v.cpu_write()).transpose()?;
                cpu::step(
                    &self.rule,
                    &p,
                    &clip,
                    &mut w.cpu_write()?,
                    &g.cpu_read()?,
                    &mut self.m.cpu_write()?,
                    v,
                );
            }
            Backend::Gpu(gpu) => {
                let clip_params = StepParams {
                    lr: max_norm.unwrap_or(0.0),
                    ..p
                };
                gpu.dispatch(
                    Kernel::f32("optim", "clip_scale"),
                    bytemuck::bytes_of(&clip_params),
                    &[self.clip.bind(1)?, sumsq.bind(2)?],
                    [1, 1, 1],
                )?;
                let mut bindings =
                    vec![w.bind(1)?, g.bind(2)?, self.m.bind(3)?, self.clip.bind(5)?];
                let entry = match (&self.rule, &self.v) {
                    (Rule::AdamW(_), Some(v)) => {
                        bindings.push(v.bind(4)?);
                        "adamw"
                    }
                    _ => "sgd",
                };
                gpu.dispatch(
                    Kernel::f32("optim", entry),
                    bytemuck::bytes_of(&p),
                    &bindings,
                    grid(w.numel(), 256),
                )?;
            }
        }
        Ok(())
    }

    fn step_params(&self, n: usize) -> Result<StepParams> {
        let n = u32_len("optimizer", n)?;
        Ok(match &self.rule {
            Rule::AdamW(c) => StepParams {
                n,
                _pad: [0; 3],
                lr: c.lr,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
                bias1: 1.0 - c.beta1.powi(self.steps as i32),
                bias2: 1.0 - c.beta2.powi(self.steps as i32),
                momentum: 0.0,
            },
            Rule::Sgd(c) => StepParams {
                n,
                _pad: [0; 3],
                lr: c.lr,
                beta1: 0.0,
                beta2: 0.0,
                eps: 0.0,
                weight_decay: c.weight_decay,
                bias1: 1.0,
                bias2: 1.0,
                momentum: c.momentum,
            },
        })
    }
}

/// The CPU reference of the fused kernels.
mod cpu {
    use super::{Rule, StepParams};

    pub(super) fn clip(sumsq: f32, max_norm: f32) -> [f32; 2] {
        let norm = sumsq.sqrt();
        let scale = if max_norm > 0.0 {
            (max_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        [norm, scale]
    }

    pub(super) fn step(
        rule: &Rule,
        p: &StepParams,
        clip: &[f32; 2],
        w: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: Option<crate::tensor::CpuWrite<'_>>,
    ) {
        if !clip[0].is_finite() {
            return;
        }
        match (rule, v) {
            (Rule::AdamW(_), Some(mut v)) => {
                for i in 0..w.len() {
                    let grad = g[i] * clip[1];
                    m[i] = p.beta1 * m[i] + (1.0 - p.beta1) * grad;
                    v[i] = p.beta2 * v[i] + (1.0 - p.beta2) * grad * grad;
                    let update = (m[i] / p.bias1) / ((v[i] / p.bias2).sqrt() + p.eps);
                    w[i] -= p.lr * (update + p.weight_decay * w[i]);
                }
            }
            _ => {
                for i in 0..w.len() {
                    let grad = g[i] * clip[1];
                    m[i] = p.momentum * m[i] + grad;
                    w[i] -= p.lr * (m[i] + p.weight_decay * w[i]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, random};
    use crate::params::{Init, ParamsBuilder};

    fn store(backend: &Backend) -> (Params, crate::params::ParamId, crate::params::ParamId) {
        let mut b = ParamsBuilder::new(7);
        let w = b.add("w", &[33, 7], Init::Uniform(0.5), true);
        let c = b.add("c", &[257], Init::Normal(0.1), true);
        b.add("frozen", &[5], Init::Ones, false);
        (b.build(backend).unwrap(), w, c)
    }

    fn run(backend: &Backend, rule: Rule, grads_scale: f32) -> (Params, Optimizer) {
        let (params, w, c) = store(backend);
        let mut opt = Optimizer::new(&params, rule).unwrap();
        for step in 0..5u64 {
            params.zero_grad().unwrap();
            params
                .grad(w)
                .unwrap()
                .write(&random(33 * 7, 100 + step, grads_scale))
                .unwrap();
            params
                .grad(c)
                .unwrap()
                .write(&random(257, 200 + step, grads_scale))
                .unwrap();
            opt.step(&params).unwrap();
        }
        (params, opt)
    }

    fn rules() -> Vec<Rule> {
        vec![
            Rule::AdamW(AdamWConfig {
                lr: 1e-2,
                weight_decay: 0.1,
                ..Default::default()
            }),
            Rule::AdamW(AdamWConfig {
                lr: 1e-2,
                max_grad_norm: Some(0.5),
                ..Default::default()
            }),
            Rule::Sgd(SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 0.01,
                max_grad_norm: None,
            }),
            Rule::Sgd(SgdConfig {
                lr: 0.1,
                momentum: 0.0,
                weight_decay: 0.0,
                max_grad_norm: Some(1.0),
            }),
        ]
    }

    /// Five steps of each rule on the GPU equal the CPU reference (f32, same formulas:
    /// differences come from sqrt/division rounding, 1e-5 relative).
    #[test]
    fn gpu_matches_cpu_over_several_steps() {
        for rule in rules() {
            let (pc, oc) = run(&Backend::Cpu, rule.clone(), 1.0);
            let (pg, og) = run(&gpu(), rule.clone(), 1.0);
            assert_close(
                &format!("{rule:?} weights"),
                &pg.trainable_values().unwrap(),
                &pc.trainable_values().unwrap(),
                1e-5,
                1e-6,
            );
            let (nc, ng) = (oc.last_grad_norm().unwrap(), og.last_grad_norm().unwrap());
            assert!((nc - ng).abs() <= 1e-4 * nc, "norm {nc} vs {ng}");
            let frozen = pg.find("frozen").unwrap();
            assert_eq!(
                pg.value(frozen).unwrap().to_vec().unwrap(),
                vec![1.0; 5],
                "frozen parameters never move"
            );
        }
    }

    /// Clipping bounds the update: with max norm 0.5 and plain SGD, the weights move by at most
    /// lr * 0.5 in L2 per step.
    #[test]
    fn clipping_bounds_the_step() {
        for backend in [Backend::Cpu, gpu()] {
            let (params, _, _) = store(&backend);
            let before = params.trainable_values().unwrap().to_vec().unwrap();
            let mut opt = Optimizer::new(
                &params,
                Rule::Sgd(SgdConfig {
                    lr: 1.0,
                    momentum: 0.0,
                    weight_decay: 0.0,
                    max_grad_norm: Some(0.5),
                }),
            )
            .unwrap();
            params
                .trainable_grads()
                .unwrap()
                .write(&random(params.trainable_len(), 3, 10.0))
                .unwrap();
            opt.step(&params).unwrap();
            let after = params.trainable_values().unwrap().to_vec().unwrap();
            let moved: f32 = before
                .iter()
                .zip(&after)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            assert!((moved - 0.5).abs() < 1e-3, "moved {moved}");
        }
    }

    /// NaN gradients skip the step and leave weights and moments untouched.
    #[test]
    fn non_finite_gradients_skip_the_step() {
        for backend in [Backend::Cpu, gpu()] {
            let (params, w, _) = store(&backend);
            let before = params.trainable_values().unwrap().to_vec().unwrap();
            let mut opt = Optimizer::new(&params, Rule::AdamW(AdamWConfig::default())).unwrap();
            let mut g = random(33 * 7, 1, 1.0);
            g[5] = f32::NAN;
            params.grad(w).unwrap().write(&g).unwrap();
            opt.step(&params).unwrap();
            assert_eq!(params.trainable_values().unwrap().to_vec().unwrap(), before);
            assert!(!opt.last_grad_norm().unwrap().is_finite());
        }
    }
}
