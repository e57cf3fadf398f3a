//! Generate, score, train: the loop this project grew from. Each round the model continues
//! prompts cut from the device's own text, a judge scores the samples (likelihood under the
//! base model, or how much more the current model expects them than the base does, minus
//! penalties for repetition and stopping short), duplicates are dropped, and the best are
//! trained on, alone or beside the local text itself.
//!
//! Samples are exactly one training window long (`window + 1` tokens: `prompt_tokens` of
//! local text, the rest generated), so they batch with the local windows. With
//! `context_tokens`, the model first reads that much of the device's other text before each
//! prompt (a teacher that knows more than the student: the text in its context), and trains
//! on the sample without it, so what the context taught is distilled into the adapters.
//! With a teacher (adapters over the same base that know more, such as a fleet's shared
//! adapter), the teacher writes the samples and [`Judge::Teacher`] ranks them by its
//! likelihood, while the device's own adapters are what trains.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::plan::Plan;
use super::text::{personalise, sample_batch, token_losses, StepReport, TextConfig};
use crate::error::{Error, Result};
use crate::models::llama::sample::{Sampler, Sampling};
use crate::models::llama::{Llama, LlamaLora};

/// How a round's samples are ranked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge {
    /// Mean log-likelihood of the continuation under the base model (adapters set aside):
    /// fluent text the base finds plausible.
    Base,
    /// Mean log-likelihood under the current model minus under the base (the Moore-Lewis
    /// cross-entropy difference): text that reads like what the device has learned, not
    /// like generic text.
    Gain,
    /// Mean log-likelihood under the teacher (which also writes the samples): text a model
    /// that knows more finds plausible.
    Teacher,
}

impl Judge {
    /// Parses `base` or `gain`.
    pub fn parse(name: &str) -> Result<Judge> {
        match name {
            "base" => Ok(Judge::Base),
            "gain" => Ok(Judge::Gain),
            "teacher" => Ok(Judge::Teacher),
            other => Err(Error::Invalid(format!(
                "unknown judge {other:?}: use base, gain or teacher"
            ))),
        }
    }
}

/// How the generate-score-train loop samples and filters.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    /// Rounds of generate, score, train.
    pub rounds: usize,
    /// Prompts (cut from the local text at random offsets) sampled per round.
    pub prompts: usize,
    /// Prompt length in tokens; the rest of a training window is generated.
    pub prompt_tokens: usize,
    /// Local text (from windows other than the prompt's) read before each prompt while
    /// sampling and left out of the sample trained on; 0 for none.
    pub context_tokens: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus (top-p) threshold.
    pub top_p: f32,
    /// Fraction of the scored samples kept for training.
    pub keep: f32,
    /// How samples are ranked.
    pub judge: Judge,
    /// Train every round on the local windows as well as the kept samples (the samples
    /// augment scarce text) instead of on the samples alone (the text stays private).
    pub with_text: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            rounds: 3,
            prompts: 16,
            prompt_tokens: 32,
            context_tokens: 0,
            temperature: 0.8,
            top_p: 0.95,
            keep: 0.5,
            judge: Judge::Base,
            with_text: false,
        }
    }
}

/// One generated sample and its score.
#[derive(Clone, Debug)]
pub struct Scored {
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    /// Mean log-likelihood per generated token under the base model (adapters off).
    pub log_likelihood: f64,
    /// Mean log-likelihood per generated token under the current model minus
    /// `log_likelihood` (0 when the model has no adapters).
    pub gain: f64,
    /// Mean log-likelihood per generated token under the teacher (0 without one).
    pub teacher_log_likelihood: f64,
    /// Fraction of repeated 3-grams among the generated tokens.
    pub repetition: f64,
    /// The combined score (higher is better): the judge's value minus a repetition
    /// penalty, minus a penalty for stopping short.
    pub score: f64,
}

/// What one round of [`generate_train`] did.
#[derive(Clone, Debug)]
pub struct GenerateRound {
    /// Round number from 1.
    pub round: usize,
    /// Distinct samples scored.
    pub samples: usize,
    /// Samples trained on.
    pub kept: usize,
    /// Mean base log-likelihood per generated token over the scored samples.
    pub mean_log_likelihood: f64,
    /// Mean gain (see [`Scored::gain`]) over the kept samples.
    pub mean_kept_gain: f64,
    /// Tokens trained on this round (samples, and the local windows with `with_text`).
    pub trained_tokens: usize,
}

/// Fraction of the 3-grams of `ids` that repeat an earlier one.
pub fn repetition(ids: &[u32]) -> f64 {
    let grams: Vec<&[u32]> = ids.windows(3).collect();
    if grams.is_empty() {
        return 0.0;
    }
    let distinct: HashSet<&[u32]> = grams.iter().copied().collect();
    1.0 - distinct.len() as f64 / grams.len() as f64
}

/// Mean log-likelihood per token of `tokens[prompt_len..]` under `lm` as it is now.
fn continuation_log_likelihood(lm: &Llama, tokens: &[u32], prompt_len: usize) -> Result<f64> {
    let new = tokens.len().saturating_sub(prompt_len);
    if new == 0 || prompt_len == 0 {
        return Ok(f64::NEG_INFINITY);
    }
    let rows = token_losses(lm, &lm.backend(), tokens)?;
    Ok(-rows[prompt_len - 1..]
        .iter()
        .map(|&v| f64::from(v))
        .sum::<f64>()
        / new as f64)
}

/// Scores `samples` (prompt + continuation, `prompt_len` prompt tokens each, `wanted_new`
/// tokens asked for) by `judge`; the base likelihood is taken with `lm`'s adapters set
/// aside, and they are put back after. `teacher` holds each sample's likelihood under the
/// teacher (empty without one; [`Judge::Teacher`] needs it).
pub fn score(
    lm: &mut Llama,
    samples: Vec<Vec<u32>>,
    prompt_len: usize,
    wanted_new: usize,
    judge: Judge,
    teacher: &[f64],
) -> Result<Vec<Scored>> {
    if judge == Judge::Teacher && teacher.len() != samples.len() {
        return Err(Error::Invalid(
            "the teacher judge needs a teacher (adapters that write and rank the samples)".into(),
        ));
    }
    let current = match (judge, lm.lora().is_some()) {
        (Judge::Gain, true) => samples
            .iter()
            .map(|t| continuation_log_likelihood(lm, t, prompt_len))
            .collect::<Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let lora = lm.take_lora();
    let base = samples
        .iter()
        .map(|t| continuation_log_likelihood(lm, t, prompt_len))
        .collect::<Result<Vec<_>>>();
    lm.set_lora(lora);
    let base = base?;
    Ok(samples
        .into_iter()
        .enumerate()
        .map(|(i, tokens)| {
            let ll = base[i];
            let gain = current.get(i).map_or(0.0, |c| c - ll);
            let new = tokens.len().saturating_sub(prompt_len);
            let rep = repetition(&tokens[prompt_len.min(tokens.len())..]);
            let short = 1.0 - new as f64 / wanted_new.max(1) as f64;
            let taught = teacher.get(i).copied().unwrap_or(0.0);
            let value = match judge {
                Judge::Base => ll,
                Judge::Gain => gain,
                Judge::Teacher => taught,
            };
            Scored {
                score: value - 2.0 * rep - short,
                log_likelihood: ll,
                gain,
                teacher_log_likelihood: taught,
                repetition: rep,
                tokens,
            }
        })
        .collect())
}

/// One round's samples: continuations of `prompts` to `new` tokens by `lm` (its adapters
/// included), or by `lm` with the `teacher`'s adapters in place of its own, each read after
/// its `contexts` entry (empty entries for none; all of one length) and kept without it,
/// scored by `gen.judge`, duplicates dropped, best first; returns them and how many are kept.
pub fn generate_round(
    lm: &mut Llama,
    teacher: &mut Option<LlamaLora>,
    prompts: &[Vec<u32>],
    contexts: &[Vec<u32>],
    new: usize,
    gen: &GenerateConfig,
    seed: u64,
) -> Result<(Vec<Scored>, usize)> {
    // The teacher's adapters stand in for the student's while it writes and ranks, and the
    // student's are put back whatever happens.
    let student = teacher.take().map(|t| {
        let own = lm.take_lora();
        lm.set_lora(Some(t));
        own
    });
    let written = write_samples(lm, prompts, contexts, new, gen, seed, student.is_some());
    if let Some(own) = student {
        *teacher = lm.take_lora();
        lm.set_lora(own);
    }
    let (samples, taught) = written?;
    let mut scored = score(lm, samples, gen.prompt_tokens, new, gen.judge, &taught)?;
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut seen = HashSet::new();
    scored.retain(|s| seen.insert(s.tokens[gen.prompt_tokens.min(s.tokens.len())..].to_vec()));
    let keep = ((scored.len() as f32 * gen.keep).ceil() as usize).min(scored.len());
    Ok((scored, keep))
}

/// The samples `lm` writes (prompt + continuation, contexts cut off) and, when `lm` is the
/// teacher, each one's likelihood under it.
fn write_samples(
    lm: &Llama,
    prompts: &[Vec<u32>],
    contexts: &[Vec<u32>],
    new: usize,
    gen: &GenerateConfig,
    seed: u64,
    is_teacher: bool,
) -> Result<(Vec<Vec<u32>>, Vec<f64>)> {
    let mut sampler = Sampler::new(
        Sampling::Random {
            temperature: gen.temperature,
            top_k: 0,
            top_p: gen.top_p,
        },
        seed,
    )?;
    let read: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| [contexts.get(i).map_or(&[][..], |c| c), p].concat())
        .collect();
    let samples: Vec<Vec<u32>> = sample_batch(lm, &read, new, &mut sampler)?
        .into_iter()
        .zip(&read)
        .zip(prompts)
        .map(|((s, r), p)| s[r.len() - p.len()..].to_vec())
        .collect();
    let taught = match is_teacher {
        true => samples
            .iter()
            .map(|t| continuation_log_likelihood(lm, t, gen.prompt_tokens))
            .collect::<Result<Vec<_>>>()?,
        false => Vec::new(),
    };
    Ok((samples, taught))
}

/// `count` prompts of `len` tokens cut from `local` windows at random offsets, each with
/// the index of its window.
fn prompts(
    local: &[Vec<u32>],
    count: usize,
    len: usize,
    rng: &mut StdRng,
) -> Vec<(usize, Vec<u32>)> {
    (0..count)
        .filter_map(|_| {
            let i = rng.random_range(0..local.len().max(1));
            let w = local.get(i)?;
            let at = rng.random_range(0..=w.len().checked_sub(len)?);
            Some((i, w[at..at + len].to_vec()))
        })
        .collect()
}

/// `len` tokens of local text to read before a prompt from window `skip`: the other
/// windows in a random order, end to end, the last `len` tokens kept; empty when `len` is
/// 0 or the other windows hold fewer tokens.
fn context(local: &[Vec<u32>], skip: usize, len: usize, rng: &mut StdRng) -> Vec<u32> {
    let mut order: Vec<usize> = (0..local.len()).filter(|&i| i != skip).collect();
    order.shuffle(rng);
    let mut text: Vec<u32> = Vec::new();
    for i in order {
        if text.len() >= len {
            break;
        }
        text.extend(&local[i]);
    }
    if len == 0 || text.len() < len {
        return Vec::new();
    }
    text.split_off(text.len() - len)
}

/// Rounds of generate, score, train on `lm` (adapters created as [`personalise`] does):
/// each round samples `gen.prompts` continuations of prompts cut from `local` (windows of
/// `cfg.window + 1` tokens), written by `lm` or by the `teacher`'s adapters over the same
/// base, keeps the best `gen.keep` by `gen.judge`, and trains one epoch of `cfg` on them
/// (beside `local` with `gen.with_text`), replaying `anchors`.
/// `on_step` sees every step with its round number; `on_round` sees each round's report
/// and the model after it (to measure it). Returns the last round's memory plan.
#[allow(clippy::too_many_arguments)]
pub fn generate_train(
    lm: &mut Llama,
    mut teacher: Option<LlamaLora>,
    local: &[Vec<u32>],
    anchors: &[Vec<u32>],
    gen: &GenerateConfig,
    cfg: &TextConfig,
    mut on_step: impl FnMut(usize, StepReport),
    mut on_round: impl FnMut(&GenerateRound, &Llama) -> Result<()>,
) -> Result<Plan> {
    let full = cfg.window + 1;
    if gen.prompt_tokens == 0 || gen.prompt_tokens >= full {
        return Err(Error::Invalid(format!(
            "prompts of {} tokens do not fit windows of {full}: use 1..{}",
            gen.prompt_tokens, cfg.window
        )));
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x6e57);
    let mut last = None;
    for r in 1..=gen.rounds {
        let picked = prompts(local, gen.prompts, gen.prompt_tokens, &mut rng);
        let contexts: Vec<Vec<u32>> = picked
            .iter()
            .map(|(w, _)| context(local, *w, gen.context_tokens, &mut rng))
            .collect();
        if contexts.iter().any(|c| c.len() != gen.context_tokens) {
            return Err(Error::Invalid(format!(
                "a context of {} tokens needs more local text than the other windows hold: lower context_tokens",
                gen.context_tokens
            )));
        }
        let picked: Vec<Vec<u32>> = picked.into_iter().map(|(_, p)| p).collect();
        let new = full - gen.prompt_tokens;
        let seed = cfg.seed.wrapping_add(r as u64);
        let (scored, keep) = generate_round(lm, &mut teacher, &picked, &contexts, new, gen, seed)?;
        let kept: Vec<&Scored> = scored[..keep]
            .iter()
            .filter(|s| s.tokens.len() == full)
            .collect();
        let mut train: Vec<Vec<u32>> = kept.iter().map(|s| s.tokens.clone()).collect();
        if gen.with_text {
            train.extend(local.iter().cloned());
        }
        if !train.is_empty() {
            let round_cfg = TextConfig {
                epochs: 1,
                seed,
                ..cfg.clone()
            };
            last = Some(personalise(lm, &train, anchors, &round_cfg, |s| {
                on_step(r, s)
            })?);
        }
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
        on_round(
            &GenerateRound {
                round: r,
                samples: scored.len(),
                kept: kept.len(),
                mean_log_likelihood: mean(scored.iter().map(|s| s.log_likelihood).collect()),
                mean_kept_gain: mean(kept.iter().map(|s| s.gain).collect()),
                trained_tokens: train.len() * cfg.window,
            },
            lm,
        )?;
    }
    last.ok_or_else(|| {
        Error::Invalid(
            "no generated sample was kept and nothing else was trained: raise keep or prompts"
                .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_counts_repeated_trigrams() {
        assert_eq!(repetition(&[1, 2, 3, 4, 5]), 0.0);
        // 1 2 3 1 2 3: trigrams 123 231 312 123 -> one of four repeats.
        assert!((repetition(&[1, 2, 3, 1, 2, 3]) - 0.25).abs() < 1e-12);
        assert_eq!(repetition(&[7, 7]), 0.0);
    }

    #[test]
    fn prompts_are_cut_inside_the_windows() {
        let local: Vec<Vec<u32>> = (0..3).map(|w| (w * 10..w * 10 + 9).collect()).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let picked = prompts(&local, 50, 4, &mut rng);
        assert_eq!(picked.len(), 50);
        for (w, p) in &picked {
            assert!(local[*w].contains(&p[0]));
            assert_eq!(p.len(), 4);
            // Consecutive tokens of one window.
            assert!(p.windows(2).all(|w| w[1] == w[0] + 1));
            assert!(local.iter().any(|w| w.contains(&p[0]) && w.contains(&p[3])));
        }
        // Offsets vary: not every prompt starts a window.
        assert!(picked.iter().any(|(_, p)| p[0] % 10 != 0));
        assert!(prompts(&local, 5, 20, &mut rng).is_empty());
    }

    #[test]
    fn contexts_come_from_the_other_windows() {
        let local: Vec<Vec<u32>> = (0..4).map(|w| (w * 10..w * 10 + 9).collect()).collect();
        let mut rng = StdRng::seed_from_u64(2);
        for skip in 0..4 {
            let c = context(&local, skip, 20, &mut rng);
            assert_eq!(c.len(), 20);
            assert!(
                c.iter().all(|&t| t / 10 != skip as u32),
                "window {skip} in {c:?}"
            );
        }
        assert!(
            context(&local, 0, 28, &mut rng).is_empty(),
            "27 other tokens only"
        );
        assert!(context(&local, 0, 0, &mut rng).is_empty());
    }

    /// The teacher's adapters write and rank the samples; the student's are back after,
    /// and the teacher judge without a teacher is refused with the student's kept.
    #[test]
    fn a_teacher_writes_and_ranks_and_the_student_keeps_its_adapters() {
        use crate::backend::Backend;
        use crate::models::llama::testing::tiny;
        use crate::models::llama::Target;
        let backend = Backend::Cpu;
        let mut lm = Llama::load(&tiny(true), &backend).unwrap();
        let cfg = lm.config().clone();
        let student = LlamaLora::new(&cfg, &[Target::Q], 2, 4.0, &backend, 1).unwrap();
        let student_params = student.params().infos().len();
        lm.set_lora(Some(student));
        let teacher = LlamaLora::new(&cfg, &[Target::Q, Target::V], 4, 8.0, &backend, 2).unwrap();
        for info in teacher.params().infos() {
            let id = teacher.params().find(&info.name).unwrap();
            let n = teacher.params().value(id).unwrap().numel();
            let values: Vec<f32> = (0..n)
                .map(|j| (j * 37 % 101) as f32 / 101.0 - 0.5)
                .collect();
            teacher.params().set(id, &values).unwrap();
        }
        let teacher_params = teacher.params().infos().len();
        let mut teacher = Some(teacher);
        let gen = GenerateConfig {
            prompt_tokens: 4,
            judge: Judge::Teacher,
            ..GenerateConfig::default()
        };
        let prompts: Vec<Vec<u32>> = (0..3u32).map(|p| (p..p + 4).collect()).collect();
        let (scored, keep) =
            generate_round(&mut lm, &mut teacher, &prompts, &[], 6, &gen, 5).unwrap();
        assert_eq!(lm.lora().unwrap().params().infos().len(), student_params);
        let teacher_back = teacher.take().unwrap();
        assert_eq!(teacher_back.params().infos().len(), teacher_params);
        assert!(keep >= 1 && keep <= scored.len());
        // Each sample's teacher likelihood is its likelihood with the teacher's adapters on.
        let own = lm.take_lora();
        lm.set_lora(Some(teacher_back));
        for s in &scored {
            let want = continuation_log_likelihood(&lm, &s.tokens, 4).unwrap();
            assert!((s.teacher_log_likelihood - want).abs() < 1e-9);
            assert!(s.teacher_log_likelihood < 0.0);
        }
        lm.set_lora(own);
        let refused = generate_round(&mut lm, &mut None, &prompts, &[], 6, &gen, 5);
        assert!(refused.is_err());
        assert_eq!(lm.lora().unwrap().params().infos().len(), student_params);
    }

    #[test]
    fn judges_parse_by_name() {
        assert_eq!(Judge::parse("gain").unwrap(), Judge::Gain);
        assert_eq!(Judge::parse("base").unwrap(), Judge::Base);
        assert_eq!(Judge::parse("teacher").unwrap(), Judge::Teacher);
        assert!(Judge::parse("oracle").is_err());
    }
}
