//! A refinement session for a classifier on one device: rounds of predict → choose local
//! data (active labels, pseudo-labels, curriculum) → train with replay under a memory plan →
//! quality gate (keep or roll back), with atomic checkpoints that let a killed session resume
//! bit for bit.
//!
//! Determinism: round r's selection is made once and checkpointed; within the round, epoch
//! e's order and step s's replay anchors come from RNGs seeded by (seed, r, e) and (seed, r,
//! s), so a resumed session draws exactly what the uninterrupted one would have.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use web_time::Instant;

use pupil_wire::Metric;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::gate::{judge, GateMetrics};
use super::plan::{plan, MemoryNeeds, Plan};
use super::replay::Anchors;
use super::select::{curriculum, most_uncertain, Labelled, Predictions, SelfTraining, Uncertainty};
use crate::backend::Backend;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::classifier::Model;
use crate::optim::{AdamWConfig, Optimizer, Rule};
use crate::tensor::Tensor;
use crate::train;

/// Active selection settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Active {
    /// Labels asked for per round.
    pub per_round: usize,
    /// Labels asked for in the whole session.
    pub budget: usize,
    /// How uncertainty is scored.
    pub by: Uncertainty,
}

/// What a session does.
#[derive(Clone, Debug, PartialEq)]
pub struct RefineConfig {
    /// Rounds of select-then-train.
    pub rounds: usize,
    /// Passes over each round's selected data.
    pub epochs: usize,
    /// Examples per optimizer step (local plus replay).
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f32,
    /// Pseudo-labelling, if used.
    pub self_training: Option<SelfTraining>,
    /// Active selection, if used.
    pub active: Option<Active>,
    /// Curriculum start fraction, if used.
    pub curriculum: Option<f32>,
    /// Anchors mixed into every batch.
    pub replay: usize,
    /// Times each oracle label is repeated per epoch (they are few and certain).
    pub oracle_weight: usize,
    /// Largest drop (fraction) the gate lets through.
    pub tolerance: f32,
    /// Memory budget in bytes, if any.
    pub memory_budget: Option<u64>,
    /// Write a checkpoint every this many optimizer steps (0: only at round ends).
    pub checkpoint_every: usize,
    /// Seed for every random choice.
    pub seed: u64,
}

impl Default for RefineConfig {
    fn default() -> Self {
        RefineConfig {
            rounds: 3,
            epochs: 2,
            batch: 64,
            lr: 3e-4,
            self_training: Some(SelfTraining::default()),
            active: Some(Active {
                per_round: 10,
                budget: 20,
                by: Uncertainty::Margin,
            }),
            curriculum: Some(0.5),
            replay: 16,
            oracle_weight: 4,
            tolerance: 0.02,
            memory_budget: None,
            checkpoint_every: 50,
            seed: 1,
        }
    }
}

/// One round's outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    /// Round number, from 1.
    pub round: u32,
    /// Oracle labels received this round.
    pub new_labels: usize,
    /// Oracle labels so far.
    pub labels: usize,
    /// Pseudo-labels used this round.
    pub pseudo_labels: usize,
    /// Fraction of pseudo-labels that were right, when the pool's true labels are known.
    pub pseudo_label_accuracy: Option<f32>,
    /// Optimizer steps taken.
    pub steps: u32,
    /// Mean training loss.
    pub loss: f32,
    /// Gate metrics before training.
    pub before: GateMetrics,
    /// Gate metrics after training.
    pub after: GateMetrics,
    /// Whether the gate kept the round.
    pub accepted: bool,
    /// The gate's reason.
    pub reason: String,
    /// Accuracy on the local evaluation set after the round, when one was given.
    pub local_accuracy: Option<f32>,
    /// Accuracy on the global evaluation set after the round, when one was given.
    pub global_accuracy: Option<f32>,
    /// Wall time of the round.
    pub seconds: f32,
}

/// Accuracy before refinement and after each round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Local and global accuracy of the starting model.
    pub start: (Option<f32>, Option<f32>),
    /// The gate's metrics of the starting model: forgetting is bounded against these, so
    /// small losses cannot add up over rounds.
    pub start_gate: GateMetrics,
    /// Finished rounds.
    pub rounds: Vec<RoundReport>,
    /// The round in progress, once its selection was made.
    pub current: Option<RoundReport>,
}

impl History {
    /// What an update of the refined model tells the server: the last round's examples and
    /// loss, and the local accuracy of the starting model and after the last round when the
    /// session measured one.
    pub fn update_report(&self) -> UpdateReport {
        let last = self.rounds.last();
        let local = self.start.0.zip(last.and_then(|r| r.local_accuracy));
        UpdateReport::new(last, local)
    }
}

/// What an update built from a refinement carries besides the delta.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateReport {
    /// Examples the last round trained on (oracle labels and pseudo-labels): the update's
    /// weight in the server's average.
    pub examples: u64,
    /// `loss` (of the last round), then `local_accuracy_before` and `local_accuracy_after`,
    /// each where known.
    pub metrics: Vec<Metric<'static>>,
}

impl UpdateReport {
    /// The report of a refinement whose last round is `last` (None: no round ran), with the
    /// local accuracy `(before, after)` when the device measured it.
    pub fn new(last: Option<&RoundReport>, local_accuracy: Option<(f32, f32)>) -> Self {
        let metric = |name, value| Metric { name, value };
        let loss = last.map(|r| metric("loss", r.loss));
        let local = local_accuracy.into_iter().flat_map(|(before, after)| {
            [
                metric("local_accuracy_before", before),
                metric("local_accuracy_after", after),
            ]
        });
        UpdateReport {
            examples: last.map_or(0, |r| (r.labels + r.pseudo_labels) as u64),
            metrics: loss.into_iter().chain(local).collect(),
        }
    }
}

/// An oracle for [`Session::run`] answering label requests from known `labels` (a labelled
/// file standing in for the app's user, or a test's ground truth); a pool index past their
/// end gets no label.
pub fn label_oracle(labels: &[u8]) -> impl FnMut(&[usize]) -> Vec<Option<usize>> + '_ {
    move |picks| {
        picks
            .iter()
            .map(|&i| labels.get(i).map(|&y| usize::from(y)))
            .collect()
    }
}

/// Labelled data for measuring (never trained on).
#[derive(Clone, Copy, Default)]
pub struct Eval<'a> {
    /// The device's own data, labelled.
    pub local: Option<&'a Split>,
    /// The original task's test data.
    pub global: Option<&'a Split>,
    /// Labelled local examples the gate may use.
    pub gate_local: Option<&'a Split>,
}

/// What the session reports as it goes.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A round started training `steps` steps on `examples` selected examples.
    RoundStart {
        /// Round number, from 1.
        round: u32,
        /// Steps this round.
        steps: u32,
        /// Selected local examples.
        examples: usize,
    },
    /// A step finished (`loss` is the running mean this round).
    Step {
        /// Steps done this round.
        step: u32,
        /// Running mean loss.
        loss: f32,
    },
    /// A round finished.
    RoundEnd(RoundReport),
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every round ran.
    Finished,
    /// Stopped on request after writing a checkpoint.
    Interrupted,
}

/// One example in a round's training list.
#[derive(Clone, Copy, Debug)]
enum Source {
    Local(usize),
    Anchor(usize),
}

/// A refinement session.
pub struct Session<'a> {
    model: &'a Model,
    cfg: RefineConfig,
    opt: Optimizer,
    plan: Plan,
    eval_batch: usize,
    pool: &'a Split,
    pool_labels_known: bool,
    anchors: Anchors,
    eval: Eval<'a>,
    base: [u8; 32],
    checkpoint: Option<PathBuf>,
    labels: Vec<(u32, u32)>,
    round: u32,
    step: u32,
    selection: Vec<(u32, u32)>,
    start: Option<(Vec<f32>, crate::optim::OptimizerState)>,
    history: History,
}

impl<'a> Session<'a> {
    /// Plan a session refining `model` (loaded from a file with content hash `base`) on the
    /// unlabelled `pool`, with `anchors` for replay and the gate. `pool_labels_known` says
    /// whether `pool`'s labels are real (then pseudo-label accuracy is reported; they are
    /// never trained on). Fails with [`Error::OverBudget`] when the budget cannot fit.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'a Model,
        base: [u8; 32],
        pool: &'a Split,
        pool_labels_known: bool,
        anchors: Anchors,
        cfg: RefineConfig,
        eval: Eval<'a>,
        checkpoint: Option<PathBuf>,
    ) -> Result<Session<'a>> {
        if cfg.replay >= cfg.batch {
            return Err(Error::Invalid(format!(
                "replay ({}) must be smaller than the batch ({})",
                cfg.replay, cfg.batch
            )));
        }
        if cfg.replay > 0 && anchors.replay.n == 0 {
            return Err(Error::Invalid(
                "replay asks for anchors but the model file carries none; pass --replay 0".into(),
            ));
        }
        check_fits(model, "the local pool", pool)?;
        check_fits(model, "the anchors", &anchors.all())?;
        for (what, split) in [
            ("the local test set", eval.local),
            ("the original test set", eval.global),
            ("the gate's local set", eval.gate_local),
        ] {
            if let Some(split) = split {
                check_fits(model, what, split)?;
            }
        }
        let opt = Optimizer::new(
            &model.params,
            Rule::AdamW(AdamWConfig {
                lr: cfg.lr,
                max_grad_norm: Some(5.0),
                ..Default::default()
            }),
        )?;
        let needs = memory_needs(model, &opt)?;
        let budget = cfg.memory_budget.unwrap_or(u64::MAX);
        let mut plan = plan(needs, cfg.batch, budget)?;
        // Predicting and evaluating need no gradients or backward activations: half an
        // example's training bytes, in chunks as large as the budget allows (at most 500).
        let forward = (needs.per_example / 2).max(1);
        let eval_batch = (budget.saturating_sub(needs.base()) / forward).clamp(1, 500) as usize;
        plan.planned_bytes = plan
            .planned_bytes
            .max(needs.base() + forward * eval_batch as u64);
        if let Some(gpu) = model.params.backend().gpu() {
            gpu.reset_peak();
        }
        Ok(Session {
            model,
            cfg,
            opt,
            plan,
            eval_batch,
            pool,
            pool_labels_known,
            anchors,
            eval,
            base,
            checkpoint,
            labels: Vec::new(),
            round: 0,
            step: 0,
            selection: Vec::new(),
            start: None,
            history: History::default(),
        })
    }

    /// The memory plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Peak GPU memory held by tensors since the session was planned (None on the CPU).
    pub fn peak_bytes(&self) -> Option<u64> {
        self.model.params.backend().gpu().map(|g| g.peak_bytes())
    }

    /// Rounds finished so far and the starting accuracies.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Oracle labels received so far: (pool index, class).
    pub fn labels(&self) -> &[(u32, u32)] {
        &self.labels
    }

    /// Labels the app already has for pool examples (pool index, class), e.g. its user's
    /// answers in earlier sessions: trained on like the oracle's, never asked again, and
    /// counted in the active-selection budget. Only before the first round.
    pub fn add_labels(&mut self, labels: &[(u32, u32)]) -> Result<()> {
        if self.round > 0 || self.history.current.is_some() {
            return Err(Error::Invalid(
                "labels can be added only before the session's first round".into(),
            ));
        }
        for &(i, y) in labels {
            if i as usize >= self.pool.n || y as usize >= self.model.classes() {
                return Err(Error::Invalid(format!(
                    "label ({i}, {y}) is outside the pool ({} examples) or the model's {} \
                     classes",
                    self.pool.n,
                    self.model.classes()
                )));
            }
            if !self.labels.iter().any(|&(j, _)| j == i) {
                self.labels.push((i, y));
            }
        }
        Ok(())
    }

    /// Continue from the checkpoint file, if there is one; returns whether it did.
    /// A checkpoint of another base model is refused.
    pub fn resume(&mut self) -> Result<bool> {
        let Some(path) = &self.checkpoint else {
            return Ok(false);
        };
        let Some(ck) = Checkpoint::load(path)? else {
            return Ok(false);
        };
        if ck.base != self.base {
            return Err(Error::Invalid(format!(
                "{} belongs to another model; delete it or pass the model it was made from",
                path.display()
            )));
        }
        self.model.params.trainable_values()?.write(&ck.values)?;
        self.opt.restore(&ck.optimizer)?;
        self.round = ck.round;
        self.step = ck.step;
        self.labels = ck.labels;
        self.selection = ck.selection;
        self.start = ck.start;
        self.history = serde_json::from_str(&ck.history)
            .map_err(|e| Error::Invalid(format!("checkpoint history unreadable: {e}")))?;
        Ok(true)
    }

    fn save(&self) -> Result<()> {
        let Some(path) = &self.checkpoint else {
            return Ok(());
        };
        Checkpoint {
            base: self.base,
            round: self.round,
            step: self.step,
            values: self.model.params.trainable_values()?.to_vec()?,
            optimizer: self.opt.state()?,
            labels: self.labels.clone(),
            selection: self.selection.clone(),
            start: self.start.clone(),
            history: serde_json::to_string(&self.history)
                .map_err(|e| Error::Invalid(format!("history: {e}")))?,
        }
        .save(path)
    }

    /// Run the remaining rounds. `oracle` labels pool indices (None: no label);
    /// `stop` asks for a checkpoint and an early return.
    pub fn run(
        &mut self,
        oracle: &mut dyn FnMut(&[usize]) -> Vec<Option<usize>>,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Outcome> {
        if self.round == 0 && self.history.current.is_none() && self.history.rounds.is_empty() {
            self.history.start = (
                self.accuracy(self.eval.local)?,
                self.accuracy(self.eval.global)?,
            );
            self.history.start_gate = self.gate_metrics()?;
        }
        while (self.round as usize) < self.cfg.rounds {
            let started = Instant::now();
            if self.history.current.is_none() {
                self.select(oracle)?;
                self.save()?;
            }
            if self.train_round(stop, progress)? == Outcome::Interrupted {
                return Ok(Outcome::Interrupted);
            }
            let report = self.finish_round(started)?;
            progress(Progress::RoundEnd(report));
            self.save()?;
        }
        Ok(Outcome::Finished)
    }

    fn accuracy(&self, split: Option<&Split>) -> Result<Option<f32>> {
        split
            .map(|s| train::accuracy(&self.model.net, &self.model.params, s, self.eval_batch))
            .transpose()
    }

    fn gate_metrics(&self) -> Result<GateMetrics> {
        Ok(GateMetrics {
            anchors: self
                .accuracy((self.anchors.holdout.n > 0).then_some(&self.anchors.holdout))?,
            local: self.accuracy(self.eval.gate_local)?,
        })
    }

    /// Predictions of the current model on the pool.
    fn predict(&self) -> Result<Predictions> {
        let model = self.model;
        let z = train::logits(&model.net, &model.params, self.pool, self.eval_batch)?;
        Ok(Predictions::from_logits(&z, self.model.classes()))
    }

    /// Choose this round's training data and remember where the round starts.
    fn select(&mut self, oracle: &mut dyn FnMut(&[usize]) -> Vec<Option<usize>>) -> Result<()> {
        let pred = self.predict()?;
        let mut labelled = vec![false; self.pool.n];
        for &(i, _) in &self.labels {
            labelled[i as usize] = true;
        }
        let mut new_labels = 0;
        if let Some(a) = self.cfg.active {
            let k = a.per_round.min(a.budget.saturating_sub(self.labels.len()));
            let picks = most_uncertain(&pred, k, a.by, &labelled);
            let answers = oracle(&picks);
            for (&i, y) in picks.iter().zip(answers) {
                if let Some(y) = y.filter(|&y| y < self.model.classes()) {
                    self.labels.push((i as u32, y as u32));
                    labelled[i] = true;
                    new_labels += 1;
                }
            }
        }
        let mut pseudo: Vec<Labelled> = match self.cfg.self_training {
            Some(st) => st.select(&pred, &labelled),
            None => Vec::new(),
        };
        if let Some(start) = self.cfg.curriculum {
            curriculum(&mut pseudo, self.round as usize, self.cfg.rounds, start);
        }
        let pseudo_label_accuracy = (self.pool_labels_known && !pseudo.is_empty()).then(|| {
            let right = pseudo
                .iter()
                .filter(|l| usize::from(self.pool.labels[l.index]) == l.class)
                .count();
            right as f32 / pseudo.len() as f32
        });
        self.selection = pseudo
            .iter()
            .map(|l| (l.index as u32, l.class as u32))
            .collect();
        for _ in 0..self.cfg.oracle_weight.max(1) {
            self.selection.extend_from_slice(&self.labels);
        }
        self.start = Some((
            self.model.params.trainable_values()?.to_vec()?,
            self.opt.state()?,
        ));
        self.step = 0;
        self.history.current = Some(RoundReport {
            round: self.round + 1,
            new_labels,
            labels: self.labels.len(),
            pseudo_labels: pseudo.len(),
            pseudo_label_accuracy,
            before: self.gate_metrics()?,
            ..Default::default()
        });
        Ok(())
    }

    fn steps_per_epoch(&self) -> u32 {
        let local = self.cfg.batch - self.cfg.replay;
        self.selection.len().div_ceil(local) as u32
    }

    /// The examples of step `step` of this round.
    fn step_examples(&self, step: u32) -> Vec<(Source, u32)> {
        let per_epoch = self.steps_per_epoch().max(1);
        let (epoch, at) = (step / per_epoch, (step % per_epoch) as usize);
        let seed = |salt: u64, n: u64| {
            self.cfg
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(u64::from(self.round) << 32)
                .wrapping_add(salt << 24)
                .wrapping_add(n)
        };
        let mut order: Vec<usize> = (0..self.selection.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed(
            1,
            u64::from(epoch),
        )));
        let local = self.cfg.batch - self.cfg.replay;
        let mut out: Vec<(Source, u32)> = order
            .iter()
            .skip(at * local)
            .take(local)
            .map(|&k| {
                let (i, y) = self.selection[k];
                (Source::Local(i as usize), y)
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed(2, u64::from(step)));
        let replay = &self.anchors.replay;
        for _ in 0..self.cfg.replay.min(replay.n * usize::from(replay.n > 0)) {
            let i = rng.random_range(0..replay.n);
            out.push((Source::Anchor(i), u32::from(replay.labels[i])));
        }
        out
    }

    fn train_round(
        &mut self,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Outcome> {
        let total = self.steps_per_epoch() * self.cfg.epochs as u32;
        let report = self.history.current.clone().unwrap_or_default();
        progress(Progress::RoundStart {
            round: report.round,
            steps: total,
            examples: self.selection.len(),
        });
        let backend = self.model.params.backend().clone();
        let loss_sum = Tensor::zeros(&backend, &[1])?;
        loss_sum.write(&[report.loss * self.step as f32])?;
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        while self.step < total {
            if stop.load(Ordering::Relaxed) {
                self.save_current_loss(&loss_sum)?;
                self.save()?;
                return Ok(Outcome::Interrupted);
            }
            let examples = self.step_examples(self.step);
            self.model.params.zero_grad()?;
            let n = examples.len();
            for chunk in examples.chunks(self.plan.micro_batch) {
                xs.clear();
                ys.clear();
                for &(src, y) in chunk {
                    match src {
                        Source::Local(i) => self.pool.extend_f32(i, &mut xs)?,
                        Source::Anchor(i) => self.anchors.replay.extend_f32(i, &mut xs)?,
                    }
                    ys.push(y as f32);
                }
                let mut g = Graph::new(&backend);
                let inputs = self.model.spec.inputs();
                let x = g.input(Tensor::from_slice(&backend, &[chunk.len(), inputs], &xs)?);
                let y = g.input(Tensor::from_slice(&backend, &[chunk.len()], &ys)?);
                let logits = self.model.logits(&mut g, x)?;
                let loss = g.cross_entropy(logits, y)?;
                let loss = g.scale(loss, chunk.len() as f32 / n as f32)?;
                crate::ops::elementwise::axpy(&loss_sum, 1.0, g.value(loss))?;
                g.backward(loss)?;
            }
            self.opt.step(&self.model.params)?;
            self.step += 1;
            let every = self.cfg.checkpoint_every;
            if every > 0 && self.step.is_multiple_of(every as u32) {
                self.save_current_loss(&loss_sum)?;
                self.save()?;
            }
            if self.step.is_multiple_of(10) || self.step == total {
                progress(Progress::Step {
                    step: self.step,
                    loss: loss_sum.item()? / self.step as f32,
                });
            }
        }
        self.save_current_loss(&loss_sum)?;
        Ok(Outcome::Finished)
    }

    fn save_current_loss(&mut self, loss_sum: &Tensor) -> Result<()> {
        let mean = loss_sum.item()? / self.step.max(1) as f32;
        if let Some(c) = &mut self.history.current {
            c.loss = mean;
            c.steps = self.step;
        }
        Ok(())
    }

    fn finish_round(&mut self, started: Instant) -> Result<RoundReport> {
        let mut report = self.history.current.take().unwrap_or_default();
        report.after = self.gate_metrics()?;
        // Anchors against the session's start (bounds total forgetting), local data against
        // the round's start (each round must not make the device worse).
        let baseline = GateMetrics {
            anchors: self.history.start_gate.anchors,
            local: report.before.local,
        };
        let decision = judge(baseline, report.after, self.cfg.tolerance);
        if !decision.accept {
            if let Some((values, state)) = &self.start {
                self.model.params.trainable_values()?.write(values)?;
                self.opt.restore(state)?;
            }
        }
        report.accepted = decision.accept;
        report.reason = decision.reason;
        report.local_accuracy = self.accuracy(self.eval.local)?;
        report.global_accuracy = self.accuracy(self.eval.global)?;
        report.seconds += started.elapsed().as_secs_f32();
        self.history.rounds.push(report.clone());
        self.round += 1;
        self.step = 0;
        self.selection.clear();
        self.start = None;
        Ok(report)
    }
}

/// Refuses examples `what` whose size or labels the model cannot take.
fn check_fits(model: &Model, what: &str, split: &Split) -> Result<()> {
    if split.n == 0 {
        return Ok(());
    }
    if split.dim() != model.spec.inputs() {
        return Err(Error::Invalid(format!(
            "{what} holds examples of shape {:?} ({} values) but the model reads {:?}; \
             give it data of the model's shape",
            split.shape,
            split.dim(),
            model.spec.input
        )));
    }
    if split.classes() > model.classes() {
        return Err(Error::Invalid(format!(
            "{what} has label {} but the model has {} classes",
            split.classes() - 1,
            model.classes()
        )));
    }
    Ok(())
}

/// Bytes the session will hold: weights and gradient slots for every parameter, AdamW's two
/// moments for the trainable ones, and activations per example measured from a two-example
/// forward pass (doubled for their gradients in the backward pass).
fn memory_needs(model: &Model, opt: &Optimizer) -> Result<MemoryNeeds> {
    let probe = Backend::Cpu;
    let mut g = Graph::new(&probe);
    let shadow = Model::new(&model.model_id, &model.spec, &probe, 0)?;
    let x = g.input(Tensor::zeros(&probe, &[2, model.spec.inputs()])?);
    let y = g.input(Tensor::zeros(&probe, &[2])?);
    let logits = shadow.logits(&mut g, x)?;
    g.cross_entropy(logits, y)?;
    let params = shadow.params.bytes();
    let per_example = (g.bytes().saturating_sub(params)) / 2 * 2;
    Ok(MemoryNeeds {
        weights: model.params.bytes(),
        grads: model.params.bytes(),
        optimizer: opt.state_bytes(),
        per_example,
        fixed: 4096,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_report_weighs_by_the_last_round_and_reports_local_accuracy() {
        let round = |labels, pseudo_labels, loss, local_accuracy| RoundReport {
            labels,
            pseudo_labels,
            loss,
            local_accuracy,
            ..RoundReport::default()
        };
        let history = History {
            start: (Some(0.5), None),
            rounds: vec![
                round(10, 100, 0.9, Some(0.6)),
                round(20, 300, 0.4, Some(0.7)),
            ],
            ..History::default()
        };
        let report = history.update_report();
        assert_eq!(report.examples, 320);
        let metrics: Vec<_> = report.metrics.iter().map(|m| (m.name, m.value)).collect();
        assert_eq!(
            metrics,
            [
                ("loss", 0.4),
                ("local_accuracy_before", 0.5),
                ("local_accuracy_after", 0.7)
            ]
        );
        // Without a local evaluation set only the loss is reported; without rounds, nothing.
        let unmeasured = History {
            rounds: vec![round(1, 2, 0.3, None)],
            ..History::default()
        };
        assert_eq!(unmeasured.update_report().metrics.len(), 1);
        assert_eq!(
            History::default().update_report(),
            UpdateReport {
                examples: 0,
                metrics: Vec::new()
            }
        );
    }

    #[test]
    fn label_oracle_answers_known_indices_only() {
        let labels = [3u8, 1, 4];
        let mut oracle = label_oracle(&labels);
        assert_eq!(oracle(&[2, 0, 7]), [Some(4), Some(3), None]);
    }
}
