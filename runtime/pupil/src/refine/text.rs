//! Decoder personalisation: low-rank adapters on a causal LM trained on a device's own text
//! under a memory budget, held-out perplexity, and samples from the model itself (replay
//! anchors; the generate-score-train loop in [`super::generate`] builds on them).
//!
//! Text becomes non-overlapping windows of `window + 1` tokens: the first `window` are the
//! input, the last `window` the next-token targets. Perplexity is `exp` of the mean
//! next-token cross-entropy over every target of every window.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::plan::{plan, MemoryNeeds, Plan};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::llama::sample::{Sampler, Sampling};
use crate::models::llama::{KvCache, Llama, LlamaLora, Target};
use crate::ops::loss::cross_entropy_rows;
use crate::optim::{AdamWConfig, Optimizer, Rule};
use crate::tensor::Tensor;

/// Settings of a personalisation run.
#[derive(Clone, Debug)]
pub struct TextConfig {
    /// Tokens per training window.
    pub window: usize,
    /// Windows per optimizer step (split into micro-batches by the memory plan).
    pub batch: usize,
    /// Passes over the training windows.
    pub epochs: usize,
    /// AdamW learning rate.
    pub lr: f32,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha (the adapter's output is scaled by alpha / rank).
    pub alpha: f32,
    /// Projections that get adapters.
    pub targets: Vec<Target>,
    /// Memory budget in bytes.
    pub budget: u64,
    /// Anchor windows replayed in every optimizer step (see [`self_anchors`]).
    pub replay: usize,
    /// Seed of the adapters' initialisation and the window order.
    pub seed: u64,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            window: 128,
            batch: 4,
            epochs: 1,
            lr: 1e-3,
            rank: 8,
            alpha: 16.0,
            targets: vec![Target::Q, Target::V],
            budget: 512 << 20,
            replay: 0,
            seed: 0,
        }
    }
}

/// One optimizer step, as reported to the caller.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// Step number from 1.
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// Mean next-token loss of the step's windows.
    pub loss: f32,
}

/// Non-overlapping windows of `window + 1` tokens (a shorter tail is dropped).
pub fn windows(tokens: &[u32], window: usize) -> Vec<Vec<u32>> {
    if window == 0 {
        return Vec::new();
    }
    tokens
        .chunks_exact(window + 1)
        .map(<[u32]>::to_vec)
        .collect()
}

/// Splits `tokens` into a training part and the held-out last `held_out` fraction.
pub fn split_tail(tokens: &[u32], held_out: f32) -> (&[u32], &[u32]) {
    let cut = ((tokens.len() as f32) * (1.0 - held_out.clamp(0.0, 1.0))) as usize;
    tokens.split_at(cut.min(tokens.len()))
}

/// Inputs `[B, T]` and targets `[B * T]` of equal-length windows, as f32 ids.
fn batch_tensors(backend: &Backend, batch: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
    let t = batch.first().map_or(0, |w| w.len().saturating_sub(1));
    if t == 0 || batch.iter().any(|w| w.len() != t + 1) {
        return Err(Error::Invalid(
            "windows must all have the same length of at least 2 tokens".into(),
        ));
    }
    let inputs: Vec<f32> = batch
        .iter()
        .flat_map(|w| w[..t].iter().map(|&i| i as f32))
        .collect();
    let targets: Vec<f32> = batch
        .iter()
        .flat_map(|w| w[1..].iter().map(|&i| i as f32))
        .collect();
    Ok((
        Tensor::from_slice(backend, &[batch.len(), t], &inputs)?,
        Tensor::from_slice(backend, &[batch.len() * t], &targets)?,
    ))
}

/// Perplexity of `lm` (with its adapters, if any) on `tokens`, in windows of `window`.
pub fn perplexity(lm: &Llama, tokens: &[u32], window: usize) -> Result<f64> {
    let backend = lm.backend();
    let wins = windows(tokens, window);
    if wins.is_empty() {
        return Err(Error::Invalid(format!(
            "perplexity needs at least {} tokens, got {}",
            window + 1,
            tokens.len()
        )));
    }
    let (mut nll, mut count) = (0.0f64, 0usize);
    for w in &wins {
        let rows = token_losses(lm, &backend, w)?;
        nll += rows.iter().map(|&v| f64::from(v)).sum::<f64>();
        count += rows.len();
    }
    Ok((nll / count as f64).exp())
}

/// The cross-entropy of each next token of `tokens` under `lm` (`tokens.len() - 1` values).
pub(crate) fn token_losses(lm: &Llama, backend: &Backend, tokens: &[u32]) -> Result<Vec<f32>> {
    let (inputs, targets) = batch_tensors(backend, &[tokens.to_vec()])?;
    let mut g = Graph::new(backend);
    let ids = g.input(inputs);
    let logits = lm.forward_all(&mut g, ids)?;
    cross_entropy_rows(g.value(logits), &targets)?.to_vec()
}

/// What training a decoder holds: frozen weights, the adapters with their gradients and
/// AdamW moments, and per window the saved activations, their gradients and the logits.
pub fn memory_needs(lm: &Llama, cfg: &TextConfig) -> MemoryNeeds {
    let c = lm.config();
    let adapters: u64 = cfg
        .targets
        .iter()
        .map(|t| {
            let [out, inp] = t.shape_of(c);
            (cfg.rank * (out + inp)) as u64
        })
        .sum::<u64>()
        * c.layers as u64
        * 4;
    let (d, kv, f, t) = (
        c.hidden as u64,
        (c.kv_heads * c.head_dim) as u64,
        c.ffn as u64,
        cfg.window as u64,
    );
    // Floats kept per token and layer for the backward pass: the residual stream and its
    // norms, projections before and after RoPE and head permutes, the feed-forward's four
    // F-wide products, one row of attention probabilities per head; adapters add 2 * rank
    // per target. (Measured with `Graph::bytes`: 2.0 MB per token for SmolLM2-135M at
    // T = 32..128, within 10% of this count.) Gradients are freed as the backward pass goes,
    // so beyond the tape it holds about one layer's worth at a time.
    let per_layer = 12 * d + 6 * kv + 4 * f + c.heads as u64 * t + 2 * cfg.rank as u64;
    let activations = (c.layers as u64 + 2) * per_layer * t * 4;
    // Logits, their gradient and the loss's softmax: three [T, V] tensors.
    let logits = 3 * t * c.vocab as u64 * 4;
    MemoryNeeds {
        weights: lm.weight_bytes() + adapters,
        grads: adapters,
        optimizer: 2 * adapters,
        per_example: activations + logits,
        fixed: 0,
    }
}

/// Windows sampled from `lm` itself after generic `prompts` (temperature 1, top-p 0.95):
/// replay anchors that hold a model near its base distribution while it learns local text,
/// without any outside data. Call it before adapters are trained.
pub fn self_anchors(
    lm: &Llama,
    prompts: &[Vec<u32>],
    count: usize,
    window: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::Invalid("anchor prompts must not be empty".into()));
    }
    let mut sampler = Sampler::new(
        Sampling::Random {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.95,
        },
        seed,
    )?;
    let mut stream = Vec::with_capacity(count * (window + 1));
    for prompt in prompts.iter().cycle() {
        if stream.len() >= count * (window + 1) {
            break;
        }
        stream.extend(sample(lm, prompt, window, &mut sampler)?);
    }
    let mut out = windows(&stream, window);
    out.truncate(count);
    Ok(out)
}

/// Trains adapters on `lm` over `train` (fresh ones unless `lm` carries some), replaying
/// `cfg.replay` of `anchors` in every step, planned within `cfg.budget`; `on_step` sees
/// every step. Returns the plan.
pub fn personalise(
    lm: &mut Llama,
    train: &[Vec<u32>],
    anchors: &[Vec<u32>],
    cfg: &TextConfig,
    mut on_step: impl FnMut(StepReport),
) -> Result<Plan> {
    let backend = lm.backend();
    if lm.lora().is_none() {
        let lora = LlamaLora::new(
            lm.config(),
            &cfg.targets,
            cfg.rank,
            cfg.alpha,
            &backend,
            cfg.seed,
        )?;
        lm.set_lora(Some(lora));
    }
    let replay = if anchors.is_empty() { 0 } else { cfg.replay };
    let plan = plan(memory_needs(lm, cfg), cfg.batch + replay, cfg.budget)?;
    if train.is_empty() {
        return Err(Error::Invalid(
            "no training windows: give more text or a shorter --window".into(),
        ));
    }
    let params = match lm.lora() {
        Some(l) => l.params(),
        None => return Err(Error::Invalid("adapters missing".into())),
    };
    let mut opt = Optimizer::new(
        params,
        Rule::AdamW(AdamWConfig {
            lr: cfg.lr,
            max_grad_norm: Some(1.0),
            ..AdamWConfig::default()
        }),
    )?;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x7e57);
    let local = cfg.batch.max(1);
    let steps_per_epoch = train.len().div_ceil(local);
    let steps = steps_per_epoch * cfg.epochs.max(1);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let (mut step, mut next_anchor) = (0, 0);
    for _ in 0..cfg.epochs.max(1) {
        order.shuffle(&mut rng);
        for picks in order.chunks(local) {
            // The step's windows: local ones, then the next anchors in turn.
            let mut chunk: Vec<&Vec<u32>> = picks.iter().map(|&i| &train[i]).collect();
            for _ in 0..replay {
                chunk.push(&anchors[next_anchor % anchors.len()]);
                next_anchor += 1;
            }
            params.zero_grad()?;
            let mut loss_sum = 0.0;
            for micro in chunk.chunks(plan.micro_batch) {
                let wins: Vec<Vec<u32>> = micro.iter().map(|w| w.to_vec()).collect();
                let (inputs, targets) = batch_tensors(&backend, &wins)?;
                let mut g = Graph::new(&backend);
                let ids = g.input(inputs);
                let labels = g.input(targets);
                let logits = lm.forward_all(&mut g, ids)?;
                let loss = g.cross_entropy(logits, labels)?;
                // Micro-batches add up to the mean over the step's windows.
                let loss = g.scale(loss, micro.len() as f32 / chunk.len() as f32)?;
                g.backward(loss)?;
                loss_sum += g.value(loss).item()?;
            }
            opt.step(params)?;
            step += 1;
            on_step(StepReport {
                step,
                steps,
                loss: loss_sum,
            });
        }
    }
    Ok(plan)
}

/// Samples a continuation of `prompt` with `lm` (adapters included).
pub fn sample(lm: &Llama, prompt: &[u32], new: usize, sampler: &mut Sampler) -> Result<Vec<u32>> {
    let mut out = sample_batch(lm, &[prompt.to_vec()], new, sampler)?;
    Ok(out.pop().unwrap_or_default())
}

/// Sequences decoded together by [`sample_batch`]: the CPU's matrix-vector product reads
/// each weight once for up to four rows, so four cost about what one does.
pub const SAMPLE_BATCH: usize = 4;
/// Prompt tokens (over the batch) run through the model per prefill pass: a pass's graph
/// holds every layer's activations, about 2.4 MB a token for SmolLM2 after 1,000 tokens of
/// context, so this bounds sampling's memory to about 300 MB.
const PREFILL_TOKENS: usize = 128;

/// Continues each of `prompts` (all the same length) by up to `new` sampled tokens, a
/// sequence stopping at end-of-text; returns prompt + continuation per prompt. Runs
/// [`SAMPLE_BATCH`] sequences at a time through one KV cache, prefilling long prompts in
/// chunks of [`PREFILL_TOKENS`].
pub fn sample_batch(
    lm: &Llama,
    prompts: &[Vec<u32>],
    new: usize,
    sampler: &mut Sampler,
) -> Result<Vec<Vec<u32>>> {
    sample_in_chunks(lm, prompts, new, sampler, PREFILL_TOKENS)
}

/// [`sample_batch`] with `per_pass` prompt tokens (over the batch) prefilled per pass.
fn sample_in_chunks(
    lm: &Llama,
    prompts: &[Vec<u32>],
    new: usize,
    sampler: &mut Sampler,
    per_pass: usize,
) -> Result<Vec<Vec<u32>>> {
    let len = prompts.first().map_or(0, Vec::len);
    if len == 0 || prompts.iter().any(|p| p.len() != len) {
        return Err(Error::Invalid(
            "sampling in a batch needs prompts of one length, at least one token".into(),
        ));
    }
    let backend = lm.backend();
    let mut outs = Vec::with_capacity(prompts.len());
    for group in prompts.chunks(SAMPLE_BATCH) {
        let b = group.len();
        let chunk = (per_pass / b).max(1);
        let mut cache = KvCache::new(&backend, lm.config(), b, len + new)?;
        let mut logits = Vec::new();
        for at in (0..len).step_by(chunk) {
            let end = (at + chunk).min(len);
            let flat: Vec<f32> = group
                .iter()
                .flat_map(|p| p[at..end].iter().map(|&i| i as f32))
                .collect();
            logits = step(lm, &backend, &mut cache, &flat, [b, end - at])?;
        }
        let mut out: Vec<Vec<u32>> = group.to_vec();
        let mut done = vec![false; b];
        for t in 0..new {
            let vocab = logits.len() / b;
            let mut next = vec![0u32; b];
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                if done[i] {
                    continue;
                }
                next[i] = sampler.sample(row)?;
                if Some(next[i]) == lm.config().eos_id {
                    done[i] = true;
                } else {
                    out[i].push(next[i]);
                }
            }
            if done.iter().all(|&d| d) || t + 1 == new {
                break;
            }
            let flat: Vec<f32> = next.iter().map(|&i| i as f32).collect();
            logits = step(lm, &backend, &mut cache, &flat, [b, 1])?;
        }
        outs.extend(out);
    }
    Ok(outs)
}

/// Runs ids `[b, t]` after the cache's tokens; the last position's logits `[b, V]`.
fn step(
    lm: &Llama,
    backend: &Backend,
    cache: &mut KvCache,
    ids: &[f32],
    shape: [usize; 2],
) -> Result<Vec<f32>> {
    let mut g = Graph::new(backend);
    let idv = g.input(Tensor::from_slice(backend, &shape, ids)?);
    let logits = lm.forward(&mut g, idv, cache)?;
    g.value(logits).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_text_without_overlap() {
        let t: Vec<u32> = (0..10).collect();
        assert_eq!(windows(&t, 3), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
        assert!(windows(&t, 0).is_empty());
        let (a, b) = split_tail(&t, 0.2);
        assert_eq!((a.len(), b.len()), (8, 2));
    }

    /// Greedy continuations decoded four at a time, prompts prefilled 7 tokens a pass (one
    /// a sequence for the first four, seven for the fifth), are
    /// each sequence's own continuation decoded alone in one prefill.
    #[test]
    fn batched_sampling_continues_each_prompt_as_alone() {
        use crate::models::llama::testing::tiny;
        let lm = Llama::load(&tiny(true), &Backend::Cpu).unwrap();
        let prompts: Vec<Vec<u32>> = (0..5u32)
            .map(|p| (0..19).map(|i| (i * 13 + p * 29) % 97).collect())
            .collect();
        let mut greedy = Sampler::new(Sampling::Greedy, 0).unwrap();
        let batched = sample_in_chunks(&lm, &prompts, 9, &mut greedy, 7).unwrap();
        assert_eq!(batched.len(), 5);
        for (p, got) in prompts.iter().zip(&batched) {
            let alone = sample(&lm, p, 9, &mut greedy).unwrap();
            assert_eq!(got, &alone);
            assert_eq!(&got[..19], &p[..]);
        }
        assert!(sample_batch(&lm, &[vec![1, 2], vec![3]], 2, &mut greedy).is_err());
    }

    #[test]
    fn batches_shift_targets_by_one() {
        let (i, t) = batch_tensors(&Backend::Cpu, &[vec![5, 6, 7], vec![1, 2, 3]]).unwrap();
        assert_eq!(i.shape(), &[2, 2]);
        assert_eq!(i.to_vec().unwrap(), vec![5.0, 6.0, 1.0, 2.0]);
        assert_eq!(t.to_vec().unwrap(), vec![6.0, 7.0, 2.0, 3.0]);
        assert!(batch_tensors(&Backend::Cpu, &[vec![1, 2], vec![1, 2, 3]]).is_err());
    }
}
