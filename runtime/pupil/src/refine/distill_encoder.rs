//! Encoder distillation: a shallower sentence encoder learns a deeper one's embeddings on
//! unlabelled text. The student starts from the teacher itself (its embeddings and some of
//! its layers, see [`super::student_layers`]) and is trained with AdamW on
//!
//!   `L = (1 − cos(s, t)) + w · mean over tokens (1 − cos(h_s, h_t))`
//!
//! where `s` is the student's mean-pooled sentence embedding and `t` the teacher's
//! unit-length one, and `h_s`, `h_t` their last hidden states of each (non-padding) token:
//! the token term gives many targets per sentence, so a few thousand sentences go further.
//! The teacher's targets are computed once, before training ([`teacher_targets`]). Cosines
//! ignore scale, so nothing is normalised on the tape; an MSE between unit vectors would add
//! nothing, as it equals `(2 / D)(1 − cos)`.
//!
//! A run ends with a polish ([`Distiller::polish`]): a few epochs of the sentence term alone,
//! with a fresh optimizer at a lower learning rate. The token term gets the student close
//! quickly but spends capacity on every dimension of every token; the polish spends it on
//! what is measured, the pooled embedding (on MiniLM's 3-layer student: held-out mean cosine
//! 0.922 -> 0.938, docs/refine.md).
//!
//! Batches hold sentences of similar length (sorted by length, then cut), so little compute
//! goes to padding; their order is shuffled every epoch. The memory plan
//! ([`super::plan`]) splits a batch into micro-batches whose gradients accumulate.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::plan::{plan, MemoryNeeds, Plan};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::bert::{length_batches, unit_length, SentenceEncoder};
use crate::optim::{AdamWConfig, Optimizer, Rule};
use crate::tensor::Tensor;

/// Settings of an encoder distillation run.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderDistillConfig {
    /// Sentences per optimizer step (split into micro-batches by the memory plan).
    pub batch: usize,
    /// AdamW learning rate of the first epoch.
    pub lr: f32,
    /// Learning-rate multiplier after each epoch.
    pub lr_decay: f32,
    /// Weight `w` of the token term (0: sentence embeddings only).
    pub token_weight: f32,
    /// Memory budget in bytes.
    pub budget: u64,
    /// Seed of the batch order.
    pub seed: u64,
}

impl Default for EncoderDistillConfig {
    fn default() -> Self {
        EncoderDistillConfig {
            batch: 32,
            lr: 5e-4,
            lr_decay: 0.8,
            token_weight: 1.0,
            budget: 2 << 30,
            seed: 1,
        }
    }
}

/// One optimizer step, as reported to the caller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Step within the epoch, from 1.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// The step's loss `L`.
    pub loss: f32,
}

/// What the student learns, per training sentence, from the teacher.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// Unit-length sentence embeddings `[D]`.
    pub sentences: Vec<Vec<f32>>,
    /// Last hidden states of every token, `[tokens, D]` row-major (empty when the run
    /// learns sentence embeddings only).
    pub tokens: Vec<Vec<f32>>,
}

/// The teacher's targets for token id sequences `ids` (with token states if `tokens`), run
/// in batches of `batch` sequences of similar length; `done` sees the number of sequences
/// done after each batch.
pub fn teacher_targets(
    teacher: &SentenceEncoder,
    ids: &[Vec<u32>],
    tokens: bool,
    batch: usize,
    mut done: impl FnMut(usize),
) -> Result<Targets> {
    let d = teacher.dim();
    let mut out = Targets {
        sentences: vec![Vec::new(); ids.len()],
        tokens: if tokens {
            vec![Vec::new(); ids.len()]
        } else {
            Vec::new()
        },
    };
    let mut count = 0;
    for chunk in length_batches(ids, batch) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut g = Graph::new(teacher.params().backend());
        let (hidden, mean) = teacher.bert().encode(&mut g, teacher.params(), &seqs)?;
        let mean = g.value(mean).to_vec()?;
        let hidden = if tokens {
            g.value(hidden).to_vec()?
        } else {
            Vec::new()
        };
        for (row, &i) in chunk.iter().enumerate() {
            out.sentences[i] = unit_length(&mean[row * d..(row + 1) * d]);
            if tokens {
                out.tokens[i] = hidden[row * t * d..(row * t + ids[i].len()) * d].to_vec();
            }
        }
        count += chunk.len();
        done(count);
    }
    Ok(out)
}

/// What training `student` holds: its weights, one gradient slot per weight (frozen ones
/// included), AdamW's two moments of the trainable ones, and per sentence of up to `tokens`
/// tokens the activations kept for the backward pass.
pub fn memory_needs(student: &SentenceEncoder, tokens: usize) -> MemoryNeeds {
    let c = student.bert().config();
    let p = student.params();
    let (d, f, h, t) = (c.hidden as u64, c.ffn as u64, c.heads as u64, tokens as u64);
    // Floats per token and layer: the q, k and v projections before and after their bias
    // and head permutes (9D), the attention output, its permute and projection (4D), two
    // residual sums and LayerNorms (4D), the feed-forward's products before and after bias
    // and GELU (3F plus 2D), and a row of attention probabilities per head (H·T). The
    // backward holds about one more layer's worth at a time; the embeddings keep 6D, and the
    // token term its gathered rows, their targets and gradient (3D).
    let per_layer = 19 * d + 3 * f + h * t;
    let per_token = (c.layers as u64 + 1) * per_layer + 9 * d;
    MemoryNeeds {
        weights: p.bytes(),
        grads: p.bytes(),
        optimizer: 2 * 4 * p.trainable_len() as u64,
        per_example: per_token * t * 4,
        fixed: 0,
    }
}

/// Trains a student towards a teacher's embeddings, one epoch per call.
pub struct Distiller<'a> {
    student: &'a SentenceEncoder,
    train: &'a [Vec<u32>],
    targets: &'a Targets,
    cfg: EncoderDistillConfig,
    plan: Plan,
    opt: Optimizer,
    batches: Vec<Vec<usize>>,
    rng: StdRng,
    epoch: usize,
}

impl<'a> Distiller<'a> {
    /// Plans the run within `cfg.budget` for `train` (token ids of unlabelled sentences)
    /// and the teacher's `targets` for them (from [`teacher_targets`], with token states
    /// when `cfg.token_weight` is not 0).
    pub fn new(
        student: &'a SentenceEncoder,
        train: &'a [Vec<u32>],
        targets: &'a Targets,
        cfg: &EncoderDistillConfig,
    ) -> Result<Distiller<'a>> {
        let (d, n) = (student.dim(), train.len());
        let tokens_fit = if cfg.token_weight == 0.0 {
            true
        } else {
            targets.tokens.len() == n
                && train
                    .iter()
                    .zip(&targets.tokens)
                    .all(|(ids, t)| t.len() == ids.len() * d)
        };
        if n == 0
            || targets.sentences.len() != n
            || targets.sentences.iter().any(|s| s.len() != d)
            || !tokens_fit
        {
            return Err(Error::Invalid(format!(
                "the teacher's targets do not fit {n} sentences and a student of width {d}: compute them with teacher_targets for these sentences (with token states for a token term), with a teacher of the same width and tokenizer"
            )));
        }
        if train.iter().any(Vec::is_empty) {
            return Err(Error::Invalid(
                "an empty token sequence: drop empty sentences before training".into(),
            ));
        }
        let longest = train.iter().map(Vec::len).max().unwrap_or(0);
        let plan = plan(memory_needs(student, longest), cfg.batch, cfg.budget)?;
        let batches = length_batches(train, plan.batch);
        let opt = adamw(student, cfg.lr)?;
        Ok(Distiller {
            student,
            train,
            targets,
            cfg: cfg.clone(),
            plan,
            opt,
            batches,
            rng: StdRng::seed_from_u64(cfg.seed ^ 0xd157),
            epoch: 0,
        })
    }

    /// Switches to the polish: the sentence term only (token weight 0), a fresh AdamW whose
    /// learning rate starts again at `lr` (and decays by `lr_decay` per epoch as before).
    pub fn polish(&mut self, lr: f32) -> Result<()> {
        self.opt = adamw(self.student, lr)?;
        self.cfg.lr = lr;
        self.cfg.token_weight = 0.0;
        self.epoch = 0;
        Ok(())
    }

    /// The memory plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Optimizer steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.batches.len()
    }

    /// One pass over the training sentences in shuffled batches; `on_step` sees every step.
    /// Returns the epoch's mean loss `L`.
    pub fn epoch(&mut self, mut on_step: impl FnMut(StepReport)) -> Result<f32> {
        self.epoch += 1;
        if let Rule::AdamW(c) = self.opt.rule_mut() {
            c.lr = self.cfg.lr * self.cfg.lr_decay.powi(self.epoch as i32 - 1);
        }
        self.batches.shuffle(&mut self.rng);
        let params = self.student.params();
        let backend = params.backend().clone();
        let steps = self.batches.len();
        let mut total = 0.0f64;
        for (i, batch) in self.batches.iter().enumerate() {
            params.zero_grad()?;
            let mut loss = 0.0f32;
            for micro in batch.chunks(self.plan.micro_batch) {
                loss += self.loss(&mut Graph::new(&backend), micro, batch.len())?;
            }
            self.opt.step(params)?;
            total += f64::from(loss) * batch.len() as f64;
            on_step(StepReport {
                epoch: self.epoch,
                step: i + 1,
                steps,
                loss,
            });
        }
        Ok((total / self.train.len() as f64) as f32)
    }

    /// Forward and backward of the sentences `micro`, a part of a batch of `batch`; returns
    /// their loss, scaled by their share of the batch (so micro-batches add up to its mean).
    fn loss(&self, g: &mut Graph, micro: &[usize], batch: usize) -> Result<f32> {
        let backend = g.backend().clone();
        let d = self.student.dim();
        let ids: Vec<Vec<u32>> = micro.iter().map(|&k| self.train[k].clone()).collect();
        let (hidden, mean) = self.student.bert().encode(g, self.student.params(), &ids)?;
        let want: Vec<f32> = micro
            .iter()
            .flat_map(|&k| self.targets.sentences[k].iter().copied())
            .collect();
        let want = g.input(Tensor::from_slice(&backend, &[micro.len(), d], &want)?);
        let mut loss = g.cosine_loss(mean, want)?;
        if self.cfg.token_weight != 0.0 {
            // The rows of the non-padding tokens in the flattened [B * T, D] hidden states.
            let t = ids.iter().map(Vec::len).max().unwrap_or(0);
            let rows: Vec<f32> = ids
                .iter()
                .enumerate()
                .flat_map(|(r, seq)| (0..seq.len()).map(move |j| (r * t + j) as f32))
                .collect();
            let flat = g.reshape(hidden, &[ids.len() * t, d])?;
            let rowv = g.input(Tensor::from_slice(&backend, &[rows.len()], &rows)?);
            let tokens = g.embedding(flat, rowv)?;
            let want: Vec<f32> = micro
                .iter()
                .flat_map(|&k| self.targets.tokens[k].iter().copied())
                .collect();
            let want = g.input(Tensor::from_slice(&backend, &[rows.len(), d], &want)?);
            let term = g.cosine_loss(tokens, want)?;
            let term = g.scale(term, self.cfg.token_weight)?;
            loss = g.add(loss, term)?;
        }
        let loss = g.scale(loss, micro.len() as f32 / batch as f32)?;
        g.backward(loss)?;
        g.value(loss).item()
    }
}

/// A phase of a distillation run: the main epochs, then the polish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The epochs with the configured loss.
    Train,
    /// The polish: the sentence term alone (see [`Distiller::polish`]).
    Polish,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Train => "epoch",
            Phase::Polish => "polish",
        })
    }
}

/// How many epochs a run trains, and its polish.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Epochs with the configured loss.
    pub epochs: usize,
    /// Polish epochs after them (0: none).
    pub polish_epochs: usize,
    /// The polish's starting learning rate.
    pub polish_lr: f32,
}

impl Distiller<'_> {
    /// The whole run: `schedule.epochs` epochs, then the polish. `on_step` sees every step
    /// with its phase and the phase's epoch count; `on_epoch` sees each finished epoch's
    /// phase, number and mean loss (to measure the student between epochs; an error stops
    /// the run).
    pub fn run(
        &mut self,
        schedule: &Schedule,
        mut on_step: impl FnMut(Phase, usize, StepReport),
        mut on_epoch: impl FnMut(Phase, usize, f32) -> Result<()>,
    ) -> Result<()> {
        for (phase, n) in [
            (Phase::Train, schedule.epochs),
            (Phase::Polish, schedule.polish_epochs),
        ] {
            if phase == Phase::Polish && n > 0 {
                self.polish(schedule.polish_lr)?;
            }
            for epoch in 1..=n {
                let loss = self.epoch(|r| on_step(phase, n, r))?;
                on_epoch(phase, epoch, loss)?;
            }
        }
        Ok(())
    }
}

/// The training sentences less those equal to a held-out sentence (short lines such as
/// "Ay, my good lord." recur across texts: a sentence held out of one text stays unseen by
/// training on any other), in order, and how many were left out. Sentences are compared as
/// text, before any truncation.
pub fn without_held_out<'a>(
    train: impl IntoIterator<Item = &'a String>,
    held: impl IntoIterator<Item = &'a String>,
) -> (Vec<String>, usize) {
    let held: std::collections::HashSet<&str> = held.into_iter().map(String::as_str).collect();
    let (kept, repeats): (Vec<String>, Vec<String>) = train
        .into_iter()
        .cloned()
        .partition(|s| !held.contains(s.as_str()));
    (kept, repeats.len())
}

/// AdamW at `lr` over `student`'s trainable weights, gradients clipped to norm 1.
fn adamw(student: &SentenceEncoder, lr: f32) -> Result<Optimizer> {
    Optimizer::new(
        student.params(),
        Rule::AdamW(AdamWConfig {
            lr,
            max_grad_norm: Some(1.0),
            ..AdamWConfig::default()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::refine::student_layers::tests::{sequences, teacher};
    use crate::refine::student_layers::{cosines, evenly, mean, student, WORD_EMBEDDINGS};

    /// Keeping every layer reproduces the teacher exactly, also after a round trip through
    /// a model file; the tokenizer and config come along; the loss, token term included, is
    /// zero on batches that mix lengths (padding rows are left out, token targets line up).
    #[test]
    fn all_layers_kept_is_the_teacher() {
        let file = teacher();
        let teacher = SentenceEncoder::load(&file, &Backend::Cpu).unwrap();
        let ids = sequences(20, 3);
        let want = teacher.embed_all(&ids, 8, |_| {}).unwrap();
        let same = student(&file, &Backend::Cpu, &evenly(4, 4, true).unwrap(), false).unwrap();
        let c = cosines(&same, &ids, &want, 8).unwrap();
        assert!(c.iter().all(|&c| (c - 1.0).abs() < 1e-6), "{c:?}");
        let targets = teacher_targets(&teacher, &ids, true, 8, |_| {}).unwrap();
        let d = Distiller::new(&same, &ids, &targets, &EncoderDistillConfig::default()).unwrap();
        let all: Vec<usize> = (0..ids.len()).collect();
        let loss = d
            .loss(&mut Graph::new(&Backend::Cpu), &all, all.len())
            .unwrap();
        assert!(loss.abs() < 1e-5, "loss {loss}");

        let shallow = student(&file, &Backend::Cpu, &[1, 3], false).unwrap();
        let saved = shallow
            .to_builder(&file, "tiny-l2")
            .unwrap()
            .to_bytes()
            .unwrap();
        let saved = crate::format::ModelFile::from_bytes(saved).unwrap();
        let reloaded = SentenceEncoder::load(&saved, &Backend::Cpu).unwrap();
        assert_eq!(reloaded.bert().config().layers, 2);
        assert_eq!(
            reloaded.embed_all(&ids, 8, |_| {}).unwrap(),
            shallow.embed_all(&ids, 8, |_| {}).unwrap()
        );
        assert_eq!(
            reloaded.tokenize(&["w3 w5"]).unwrap(),
            vec![vec![3, 5]],
            "the tokenizer travels with the student"
        );
    }

    /// Distilling a 2-layer student from the 4-layer teacher raises the mean cosine on
    /// sequences it never saw, with the word embeddings left as they were.
    #[test]
    fn distillation_raises_held_out_cosine() {
        let file = teacher();
        let teacher = SentenceEncoder::load(&file, &Backend::Cpu).unwrap();
        let (train, held) = (sequences(96, 1), sequences(48, 2));
        let t_train = teacher_targets(&teacher, &train, true, 32, |_| {}).unwrap();
        let t_held = teacher.embed_all(&held, 32, |_| {}).unwrap();
        assert_eq!(
            t_train.sentences,
            teacher.embed_all(&train, 32, |_| {}).unwrap(),
            "targets hold the teacher's sentence embeddings"
        );
        let s = student(&file, &Backend::Cpu, &evenly(4, 2, true).unwrap(), false).unwrap();
        let words = |e: &SentenceEncoder| {
            let p = e.params();
            p.value(p.find(WORD_EMBEDDINGS).unwrap())
                .unwrap()
                .to_vec()
                .unwrap()
        };
        let words_before = words(&s);
        let before = mean(&cosines(&s, &held, &t_held, 32).unwrap());
        let cfg = EncoderDistillConfig {
            batch: 16,
            lr: 3e-3,
            lr_decay: 0.9,
            ..EncoderDistillConfig::default()
        };
        let mut d = Distiller::new(&s, &train, &t_train, &cfg).unwrap();
        assert_eq!((d.plan().micro_batch, d.steps_per_epoch()), (16, 6));
        let first = d.epoch(|_| {}).unwrap();
        let mut last = first;
        for _ in 0..7 {
            last = d.epoch(|_| {}).unwrap();
        }
        let after = mean(&cosines(&s, &held, &t_held, 32).unwrap());
        assert!(last < first, "training loss {first} -> {last}");
        // Measured: 0.81 -> 0.995.
        assert!(
            after > 0.95 && after > before + 0.1,
            "held-out cosine {before} -> {after}"
        );
        assert_eq!(words(&s), words_before, "word embeddings stay frozen");
    }

    /// The polish drops the token term: its loss is the sentence term alone, `1 - cos` of
    /// the pooled embeddings averaged over the batch, and an epoch of it lowers that.
    #[test]
    fn polish_learns_the_sentence_term_alone() {
        let file = teacher();
        let teacher = SentenceEncoder::load(&file, &Backend::Cpu).unwrap();
        let ids = sequences(32, 4);
        let targets = teacher_targets(&teacher, &ids, true, 16, |_| {}).unwrap();
        let s = student(&file, &Backend::Cpu, &[1, 3], false).unwrap();
        let cfg = EncoderDistillConfig {
            batch: 16,
            lr: 3e-3,
            ..EncoderDistillConfig::default()
        };
        let mut d = Distiller::new(&s, &ids, &targets, &cfg).unwrap();
        let all: Vec<usize> = (0..ids.len()).collect();
        let sentence_term = |s: &SentenceEncoder| {
            1.0 - mean(&cosines(s, &ids, &targets.sentences, 16).unwrap()) as f32
        };
        let with_tokens = d
            .loss(&mut Graph::new(&Backend::Cpu), &all, all.len())
            .unwrap();
        assert!(
            with_tokens > sentence_term(&s) + 1e-3,
            "the token term adds to the loss"
        );
        d.polish(1e-3).unwrap();
        let before = sentence_term(&s);
        let polished = d
            .loss(&mut Graph::new(&Backend::Cpu), &all, all.len())
            .unwrap();
        assert!((polished - before).abs() < 1e-5, "{polished} vs {before}");
        d.epoch(|_| {}).unwrap();
        assert!(
            sentence_term(&s) < before,
            "{before} -> {}",
            sentence_term(&s)
        );
    }

    /// Targets must match the sentences; a budget too small for one sentence is refused; a
    /// tight one accumulates gradients.
    /// A run goes through its epochs, then its polish, reporting each epoch in order; an
    /// error from `on_epoch` stops it.
    #[test]
    fn a_run_follows_its_schedule() {
        let file = teacher();
        let teacher = SentenceEncoder::load(&file, &Backend::Cpu).unwrap();
        let ids = sequences(16, 5);
        let targets = teacher_targets(&teacher, &ids, true, 16, |_| {}).unwrap();
        let s = student(&file, &Backend::Cpu, &[1, 3], false).unwrap();
        let cfg = EncoderDistillConfig {
            batch: 8,
            ..EncoderDistillConfig::default()
        };
        let mut d = Distiller::new(&s, &ids, &targets, &cfg).unwrap();
        let schedule = Schedule {
            epochs: 2,
            polish_epochs: 1,
            polish_lr: 1e-4,
        };
        let (mut steps, mut epochs) = (Vec::new(), Vec::new());
        d.run(
            &schedule,
            |phase, n, r| steps.push((phase, n, r.epoch, r.step)),
            |phase, epoch, loss| {
                assert!(loss.is_finite());
                epochs.push((phase, epoch));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            epochs,
            [(Phase::Train, 1), (Phase::Train, 2), (Phase::Polish, 1)]
        );
        assert_eq!(steps.len(), 3 * 2, "two steps of 8 per epoch");
        assert_eq!(steps[4], (Phase::Polish, 1, 1, 1), "the polish counts anew");
        assert_eq!(d.cfg.token_weight, 0.0, "the polish is the sentence term");
        let stop = d.run(
            &schedule,
            |_, _, _| {},
            |_, _, _| Err(Error::Invalid("stop".into())),
        );
        assert!(stop.is_err());
    }

    /// A training sentence of any text that equals a held-out sentence is left out; the
    /// rest keep their order.
    #[test]
    fn held_out_sentences_are_never_trained_on() {
        let owned = |s: &[&str]| -> Vec<String> { s.iter().map(|t| t.to_string()).collect() };
        let train = owned(&["a b", "c", "d", "g h", "e", "i", "g"]);
        let held = owned(&["g h", "i"]);
        let (kept, repeats) = without_held_out(&train, &held);
        assert_eq!(kept, ["a b", "c", "d", "e", "g"]);
        assert_eq!(repeats, 2);
    }

    #[test]
    fn checks_targets_and_plans_memory() {
        let file = teacher();
        let s = student(&file, &Backend::Cpu, &[0], false).unwrap();
        let ids = sequences(8, 5);
        let t = Targets {
            sentences: vec![vec![0.25f32; 16]; 8],
            tokens: ids.iter().map(|s| vec![0.5f32; s.len() * 16]).collect(),
        };
        let needs = memory_needs(&s, ids.iter().map(Vec::len).max().unwrap());
        let cfg = EncoderDistillConfig {
            batch: 8,
            budget: needs.at(3),
            ..EncoderDistillConfig::default()
        };
        let d = Distiller::new(&s, &ids, &t, &cfg).unwrap();
        assert!(d.plan().micro_batch < 8 && d.plan().accumulation > 1);
        let small = EncoderDistillConfig {
            budget: needs.at(0),
            ..cfg.clone()
        };
        assert!(matches!(
            Distiller::new(&s, &ids, &t, &small),
            Err(Error::OverBudget { .. })
        ));
        let no_tokens = Targets {
            tokens: Vec::new(),
            ..t.clone()
        };
        assert!(Distiller::new(&s, &ids, &no_tokens, &cfg).is_err());
        let sentence_only = EncoderDistillConfig {
            token_weight: 0.0,
            ..cfg
        };
        assert!(Distiller::new(&s, &ids, &no_tokens, &sentence_only).is_ok());
    }
}
