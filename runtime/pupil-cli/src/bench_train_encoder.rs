//! `pupil bench train-encoder`: one AdamW step of a MiniLM-shaped encoder (every weight
//! trains) with a classification loss over the mean-pooled sentence vectors, random weights.

use std::time::Instant;

use pupil::graph::Graph;
use pupil::optim::{AdamWConfig, Optimizer, Rule};
use pupil::{Backend, Tensor};
use serde_json::json;

use crate::bench_models::RandomEncoder;
use crate::CliResult;

/// Arguments of `pupil bench train-encoder`.
#[derive(clap::Args)]
pub struct TrainEncoderArgs {
    /// Sentences per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sentence.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Encoder layers: 6 is MiniLM.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Timed steps (after two untimed ones).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Milliseconds per training step: forward, cross-entropy of the pooled vector's 384
/// components read as logits against fixed labels, backward, AdamW.
pub fn run(a: TrainEncoderArgs) -> CliResult {
    let backend = Backend::auto(a.adapter.as_deref())?;
    let enc = RandomEncoder::new(&backend, a.layers, a.batch, a.seq)?;
    let hidden = enc.cfg.hidden;
    let mut opt = Optimizer::new(&enc.params, Rule::AdamW(AdamWConfig::default()))?;
    let ids = Tensor::from_slice(&backend, &[a.batch, a.seq], &enc.ids)?;
    let mask = Tensor::from_slice(&backend, &[a.batch, a.seq], &enc.mask)?;
    let labels: Vec<f32> = (0..a.batch).map(|i| (i * 37 % hidden) as f32).collect();
    let labels = Tensor::from_slice(&backend, &[a.batch], &labels)?;
    let mut step = || -> pupil::Result<f32> {
        let mut g = Graph::new(&backend);
        let idv = g.input(ids.clone());
        let maskv = g.input(mask.clone());
        let yv = g.input(labels.clone());
        let pooled = enc.pooled(&mut g, idv, maskv)?;
        let pooled = g.reshape(pooled, &[a.batch, hidden])?;
        let loss = g.cross_entropy(pooled, yv)?;
        enc.params.zero_grad()?;
        g.backward(loss)?;
        opt.step(&enc.params)?;
        Ok(g.value(loss).to_vec()?[0])
    };
    step()?;
    step()?;
    backend.synchronize()?;
    let start = Instant::now();
    let mut loss = 0.0;
    for _ in 0..a.steps.max(1) {
        loss = step()?;
    }
    let secs = start.elapsed().as_secs_f64() / a.steps.max(1) as f64;
    let adapter = backend.describe();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "adapter": adapter, "layers": a.layers, "batch": a.batch, "seq": a.seq,
                "ms_per_step": secs * 1e3, "steps": a.steps, "last_loss": loss
            }))?
        );
    } else {
        println!(
            "train-encoder: MiniLM-shaped encoder ({} x 384, random weights), batch {} x {} \
             tokens, AdamW, on {adapter}",
            a.layers, a.batch, a.seq
        );
        println!("{:.2} ms per step (last loss {loss:.4})", secs * 1e3);
    }
    Ok(())
}
