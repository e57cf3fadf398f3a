//! Knowledge distillation for classifiers (Hinton et al. 2015): the student learns the
//! teacher's temperature-softened output distribution, `α · T² KL(p_T || q_T)`, plus
//! `(1 − α)` cross-entropy on the true labels where there are any. The teacher's logits are
//! computed once, so each student epoch costs only the student's own passes.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::Split;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::classifier::Model;
use crate::optim::{AdamWConfig, Optimizer, Rule};
use crate::tensor::Tensor;
use crate::train;

/// Distillation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct DistillConfig {
    /// Passes over the inputs.
    pub epochs: usize,
    /// Examples per step.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f32,
    /// Learning rate multiplier after each epoch.
    pub lr_decay: f32,
    /// Softmax temperature T.
    pub temperature: f32,
    /// Weight α of the distillation term (1: teacher only, labels unused).
    pub alpha: f32,
    /// Shuffling seed.
    pub seed: u64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            epochs: 10,
            batch: 128,
            lr: 1e-3,
            lr_decay: 0.8,
            temperature: 4.0,
            alpha: 0.9,
            seed: 1,
        }
    }
}

/// Loss and accuracy after one epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochReport {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Mean loss.
    pub loss: f32,
    /// Student accuracy on the evaluation set, if one was given.
    pub accuracy: Option<f32>,
}

/// The teacher's logits for every input (`[n, classes]`, row-major), in batches.
pub fn teacher_logits(teacher: &Model, data: &Split, batch: usize) -> Result<Vec<f32>> {
    train::logits(&teacher.net, &teacher.params, data, batch)
}

/// Train `student` on `data` towards `logits` (from [`teacher_logits`]); calls `progress`
/// with (examples done, running loss) and `epoch_end` after every epoch.
pub fn distill(
    student: &Model,
    data: &Split,
    logits: &[f32],
    eval: Option<&Split>,
    cfg: &DistillConfig,
    mut progress: impl FnMut(usize, f32),
    mut epoch_end: impl FnMut(EpochReport),
) -> Result<Vec<EpochReport>> {
    let classes = student.classes();
    if logits.len() != data.n * classes {
        return Err(Error::Invalid(format!(
            "{} teacher logits for {} inputs of {classes} classes: teacher and student must \
             have the same classes",
            logits.len(),
            data.n
        )));
    }
    if data.dim() != student.spec.inputs() {
        return Err(Error::Invalid(format!(
            "the student reads {:?} but the data holds examples of shape {:?}",
            student.spec.input, data.shape
        )));
    }
    if !(0.0..=1.0).contains(&cfg.alpha) || cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
        return Err(Error::Invalid(
            "alpha must be in [0, 1] and the temperature positive".into(),
        ));
    }
    let backend = student.params.backend().clone();
    let mut opt = Optimizer::new(
        &student.params,
        Rule::AdamW(AdamWConfig {
            lr: cfg.lr,
            ..Default::default()
        }),
    )?;
    let (mut xs, mut ys, mut yf, mut tl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let loss_sum = Tensor::zeros(&backend, &[1])?;
    let mut reports = Vec::new();
    for epoch in 1..=cfg.epochs {
        if let Rule::AdamW(c) = opt.rule_mut() {
            c.lr = cfg.lr * cfg.lr_decay.powi(epoch as i32 - 1);
        }
        let mut order: Vec<usize> = (0..data.n).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
            cfg.seed + epoch as u64,
        ));
        loss_sum.write(&[0.0])?;
        let steps = data.n.div_ceil(cfg.batch.max(1));
        for (i, idx) in order.chunks(cfg.batch.max(1)).enumerate() {
            data.batch_f32(idx, &mut xs, &mut ys)?;
            yf.clear();
            yf.extend(ys.iter().map(|&c| c as f32));
            tl.clear();
            for &k in idx {
                tl.extend_from_slice(&logits[k * classes..(k + 1) * classes]);
            }
            let mut g = Graph::new(&backend);
            let x = g.input(Tensor::from_slice(&backend, &[idx.len(), data.dim()], &xs)?);
            let t = g.input(Tensor::from_slice(&backend, &[idx.len(), classes], &tl)?);
            let s = student.logits(&mut g, x)?;
            let kl = g.kl_div_temperature(s, t, cfg.temperature)?;
            let mut loss = g.scale(kl, cfg.alpha)?;
            if cfg.alpha < 1.0 {
                let y = g.input(Tensor::from_slice(&backend, &[idx.len()], &yf)?);
                let ce = g.cross_entropy(s, y)?;
                let ce = g.scale(ce, 1.0 - cfg.alpha)?;
                loss = g.add(loss, ce)?;
            }
            crate::ops::elementwise::axpy(&loss_sum, 1.0, g.value(loss))?;
            student.params.zero_grad()?;
            g.backward(loss)?;
            opt.step(&student.params)?;
            if (i + 1) % 50 == 0 || i + 1 == steps {
                progress(
                    ((i + 1) * cfg.batch).min(data.n),
                    loss_sum.item()? / (i + 1) as f32,
                );
            }
        }
        let report = EpochReport {
            epoch,
            loss: loss_sum.item()? / steps.max(1) as f32,
            accuracy: eval
                .map(|e| train::accuracy(&student.net, &student.params, e, 1000))
                .transpose()?,
        };
        epoch_end(report);
        reports.push(report);
    }
    Ok(reports)
}
