//! `pupil refine-text`: personalise a decoder (SmolLM2) on a local text with LoRA under a
//! memory budget, reporting held-out perplexity on that text and on a general text before
//! and after; optionally rounds of generate-score-train on the model's own samples.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use pupil::format::ModelFile;
use pupil::models::llama::{CausalLm, Llama, Target};
use pupil::refine::plan::{mib, parse_bytes, Plan};
use pupil::refine::text::{
    generate_round, perplexity, personalise, self_anchors, split_tail, windows, GenerateConfig,
    TextConfig,
};
use pupil::Backend;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use serde_json::json;

use crate::plot::{draw, Panel, Series};
use crate::CliResult;

/// Personalise a decoder on local text (LoRA, frozen quantized base) and measure perplexity.
///
/// The text's last `--held-out` fraction is never trained on: its perplexity says how much
/// the model learned about the text, and the perplexity of `--general` (a different text)
/// says how much it forgot. Example:
///
///   pupil refine-text --model smollm2.pupil --data hamlet.txt --general news.txt
#[derive(Parser)]
pub struct Args {
    /// The decoder (.pupil, from `pupil convert` of a GGUF).
    #[arg(long)]
    model: PathBuf,
    /// The local text to learn (UTF-8).
    #[arg(long)]
    data: PathBuf,
    /// A different text whose perplexity should not rise (the forgetting check).
    #[arg(long)]
    general: Option<PathBuf>,
    /// Fraction of --data held out at its end for evaluation.
    #[arg(long, default_value_t = 0.1)]
    held_out: f32,
    /// At most this many windows of each text are evaluated (0: all).
    #[arg(long, default_value_t = 40)]
    eval_windows: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Windows per optimizer step (the memory plan splits them into micro-batches).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Passes over the training windows.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Train on at most this many windows (0: all).
    #[arg(long, default_value_t = 0)]
    max_windows: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f32,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Projections with adapters: a comma-separated list of q,k,v,o,gate,up,down, or all.
    #[arg(long, default_value = "q,v")]
    targets: String,
    /// Memory budget for the session (weights, adapters, optimizer, activations), e.g. 512MB.
    #[arg(long, default_value = "512MB")]
    memory_budget: String,
    /// Replay anchors: windows sampled from the base model itself (after generic one-word
    /// prompts) before training, replayed --replay per step so the model keeps its general
    /// behaviour. No outside data is used.
    #[arg(long, default_value_t = 48)]
    self_anchors: usize,
    /// Anchor windows mixed into every optimizer step.
    #[arg(long, default_value_t = 2)]
    replay: usize,
    /// Rounds of generate-score-train instead of training on the text itself: sample
    /// continuations of prompts from the text, score them with the base model (likelihood,
    /// repetition, length, duplicates), train on the best.
    #[arg(long, default_value_t = 0)]
    generate_rounds: usize,
    /// Prompts per generate round.
    #[arg(long, default_value_t = 16)]
    prompts: usize,
    /// Tokens sampled per prompt.
    #[arg(long, default_value_t = 96)]
    new_tokens: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sampling top-p.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Fraction of scored samples kept for training.
    #[arg(long, default_value_t = 0.5)]
    keep: f32,
    /// Write the trained adapters here (a .pupil file of LoRA factors).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write a PNG of the training loss.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Seed for adapters, window order and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
    /// Print the numbers as JSON.
    #[arg(long)]
    json: bool,
}

/// Prompt length of the generate-score-train loop (tokens from the local text).
const PROMPT_TOKENS: usize = 32;

/// Generic openers for sampling replay anchors from the base model.
const ANCHOR_PROMPTS: [&str; 8] = ["The", "In", "A", "It", "When", "This", "One", "We"];

/// Peak memory: the GPU's tracked peak, or the process's peak resident set on the CPU backend.
fn peak_bytes(backend: &Backend) -> (u64, &'static str) {
    if let Some(gpu) = backend.gpu() {
        return (gpu.peak_bytes(), "peak GPU memory");
    }
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    (hwm * 1024, "peak resident memory of the process")
}

/// Held-out and general perplexity.
fn measure(
    lm: &Llama,
    held: &[u32],
    general: &[u32],
    window: usize,
) -> pupil::Result<(f64, Option<f64>)> {
    let local = perplexity(lm, held, window)?;
    let general = if general.is_empty() {
        None
    } else {
        Some(perplexity(lm, general, window)?)
    };
    Ok((local, general))
}

pub fn run(a: Args) -> CliResult {
    let backend = Backend::auto(a.adapter.as_deref())?;
    let budget = parse_bytes(&a.memory_budget)?;
    let targets = Target::parse_list(&a.targets)?;
    let mut lm = {
        let file = ModelFile::open(&a.model)?;
        CausalLm::load(&file, &backend)?
        // The file's bytes are dropped here: the model holds its own copy on the backend.
    };
    let read = |p: &PathBuf| -> Result<Vec<u32>, Box<dyn std::error::Error>> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(lm.tokenizer().encode(&text)?)
    };
    let tokens = read(&a.data)?;
    let general = match &a.general {
        Some(p) => read(p)?,
        None => Vec::new(),
    };
    let limit = |t: &[u32]| -> Vec<u32> {
        let n = if a.eval_windows == 0 {
            t.len()
        } else {
            t.len().min(a.eval_windows * (a.window + 1))
        };
        t[..n].to_vec()
    };
    let (train, held) = split_tail(&tokens, a.held_out);
    let (held, general) = (limit(held), limit(&general));
    let mut train_windows = windows(train, a.window);
    if a.max_windows > 0 {
        train_windows.truncate(a.max_windows);
    }
    let cfg = TextConfig {
        window: a.window,
        batch: a.batch,
        epochs: a.epochs,
        lr: a.lr,
        rank: a.rank,
        alpha: a.alpha,
        targets,
        budget,
        replay: a.replay,
        seed: a.seed,
    };
    eprintln!(
        "{} tokens of local text ({} training windows of {}, {} held-out tokens), {} general tokens, on {}",
        tokens.len(),
        train_windows.len(),
        a.window,
        held.len(),
        general.len(),
        backend.describe()
    );
    let start = Instant::now();
    let before = measure(lm.model(), &held, &general, a.window)?;
    eprintln!(
        "base perplexity: local {:.2}{}",
        before.0,
        fmt_general(before.1)
    );

    let anchors = if a.self_anchors > 0 {
        let prompts = ANCHOR_PROMPTS
            .iter()
            .map(|p| lm.tokenizer().encode(p))
            .collect::<pupil::Result<Vec<_>>>()?;
        let t = Instant::now();
        // Anchors match the length of the windows they are trained beside.
        let window = if a.generate_rounds > 0 {
            PROMPT_TOKENS.min(a.window) + a.new_tokens - 1
        } else {
            a.window
        };
        let anchors = self_anchors(lm.model(), &prompts, a.self_anchors, window, a.seed)?;
        eprintln!(
            "sampled {} anchor windows from the base model in {:.0} s",
            anchors.len(),
            t.elapsed().as_secs_f64()
        );
        anchors
    } else {
        Vec::new()
    };
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} steps, loss {prefix} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    let mut losses: Vec<(f64, f64)> = Vec::new();
    let mut rounds = Vec::new();
    let train_start = Instant::now();
    let mut trained_tokens = 0usize;
    let mut on_step = |s: pupil::refine::text::StepReport, msg: &str| {
        bar.set_message(msg.to_string());
        bar.set_length(s.steps as u64);
        bar.set_position(s.step as u64);
        bar.set_prefix(format!("{:.3}", s.loss));
        // Without a terminal the bar is hidden: a plain line every 10 steps instead.
        if bar.is_hidden() && (s.step.is_multiple_of(10) || s.step == s.steps) {
            eprintln!("{msg}: step {}/{}, loss {:.3}", s.step, s.steps, s.loss);
        }
        losses.push(((losses.len() + 1) as f64, f64::from(s.loss)));
    };
    let plan: Plan = if a.generate_rounds == 0 {
        trained_tokens = train_windows.len() * a.window * a.epochs.max(1);
        personalise(lm.model_mut(), &train_windows, &anchors, &cfg, |s| {
            on_step(s, "train")
        })?
    } else {
        let gen = GenerateConfig {
            rounds: a.generate_rounds,
            prompts: a.prompts,
            prompt_tokens: PROMPT_TOKENS.min(a.window),
            new_tokens: a.new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            keep: a.keep,
        };
        let mut rng = StdRng::seed_from_u64(a.seed);
        let mut last = None;
        for r in 0..gen.rounds {
            let prompts: Vec<Vec<u32>> = train_windows
                .choose_multiple(&mut rng, gen.prompts)
                .map(|w| w[..gen.prompt_tokens].to_vec())
                .collect();
            bar.set_message(format!("round {} generating", r + 1));
            let (scored, keep) = generate_round(lm.model_mut(), &prompts, &gen, a.seed + r as u64)?;
            let full = gen.prompt_tokens + gen.new_tokens;
            let kept: Vec<Vec<u32>> = scored[..keep]
                .iter()
                .filter(|s| s.tokens.len() == full)
                .map(|s| s.tokens.clone())
                .collect();
            let round_cfg = TextConfig {
                window: full - 1,
                seed: a.seed + r as u64,
                ..cfg.clone()
            };
            trained_tokens += kept.len() * (full - 1);
            let msg = format!("round {} training", r + 1);
            if !kept.is_empty() {
                last = Some(personalise(
                    lm.model_mut(),
                    &kept,
                    &anchors,
                    &round_cfg,
                    |s| on_step(s, &msg),
                )?);
            }
            let after = measure(lm.model(), &held, &general, a.window)?;
            let mean_ll =
                scored.iter().map(|s| s.log_likelihood).sum::<f64>() / scored.len().max(1) as f64;
            let line = format!(
                "round {}: {} samples, {} kept (mean base log-likelihood {mean_ll:.2}), perplexity local {:.2}{}",
                r + 1,
                scored.len(),
                kept.len(),
                after.0,
                fmt_general(after.1)
            );
            // A hidden bar (stderr not a terminal) would swallow the line.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            rounds.push(json!({ "round": r + 1, "samples": scored.len(), "kept": kept.len(), "mean_log_likelihood": mean_ll, "local_ppl": after.0, "general_ppl": after.1 }));
        }
        last.ok_or("no generated sample was kept: raise --keep or --prompts")?
    };
    bar.finish_and_clear();
    let train_secs = train_start.elapsed().as_secs_f64();
    let after = measure(lm.model(), &held, &general, a.window)?;
    let (peak, peak_what) = peak_bytes(&backend);
    let change = |b: f64, a: f64| (a / b - 1.0) * 100.0;
    if let Some(out) = &a.out {
        let lora = lm.model().lora().ok_or("no adapters were trained")?;
        lora.to_builder(&ModelFile::open(&a.model)?)?
            .write_atomic(out)?;
    }
    if let Some(path) = &a.plot {
        let name = a
            .data
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        // The per-step loss mixes local windows and anchors: a running mean shows the trend.
        let smooth: Vec<(f64, f64)> = losses
            .iter()
            .enumerate()
            .map(|(i, &(x, _))| {
                let w = &losses[i.saturating_sub(9)..=i];
                (x, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
            })
            .collect();
        draw(
            path,
            &[Panel {
                title: format!(
                    "LoRA r={} ({}) on {name}: held-out perplexity {:.1} -> {:.1}",
                    a.rank, a.targets, before.0, after.0
                ),
                x_label: "step".into(),
                y_label: "next-token loss".into(),
                series: vec![
                    Series {
                        name: "training loss".into(),
                        points: losses.clone(),
                    },
                    Series {
                        name: "mean of the last 10 steps".into(),
                        points: smooth,
                    },
                ],
            }],
        )?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "adapter": backend.describe(),
                "local_ppl_before": before.0, "local_ppl_after": after.0,
                "general_ppl_before": before.1, "general_ppl_after": after.1,
                "local_change_pct": change(before.0, after.0),
                "general_change_pct": before.1.zip(after.1).map(|(b, a)| change(b, a)),
                "plan": { "micro_batch": plan.micro_batch, "accumulation": plan.accumulation, "planned_bytes": plan.planned_bytes, "budget": plan.budget },
                "peak_bytes": peak, "peak_kind": peak_what,
                "train_seconds": train_secs, "trained_tokens": trained_tokens,
                "rounds": rounds, "losses": losses.iter().map(|p| p.1).collect::<Vec<_>>(),
                "total_seconds": start.elapsed().as_secs_f64(),
            }))?
        );
        return Ok(());
    }
    println!("                      before      after    change");
    println!(
        "held-out local ppl  {:>8.2}  {:>9.2}  {:>+7.1}%",
        before.0,
        after.0,
        change(before.0, after.0)
    );
    if let (Some(b), Some(x)) = (before.1, after.1) {
        println!(
            "general ppl         {b:>8.2}  {x:>9.2}  {:>+7.1}%",
            change(b, x)
        );
    }
    println!(
        "memory plan: micro-batch {} x {} accumulated, planned {} of {}; {peak_what}: {}",
        plan.micro_batch,
        plan.accumulation,
        mib(plan.planned_bytes),
        mib(plan.budget),
        mib(peak)
    );
    println!(
        "trained {trained_tokens} tokens in {train_secs:.0} s ({:.0} tokens/s), {:.0} s in all",
        trained_tokens as f64 / train_secs.max(1e-9),
        start.elapsed().as_secs_f64()
    );
    if let Some(out) = &a.out {
        println!("adapters written to {}", out.display());
    }
    Ok(())
}

fn fmt_general(g: Option<f64>) -> String {
    g.map(|g| format!(", general {g:.2}")).unwrap_or_default()
}
