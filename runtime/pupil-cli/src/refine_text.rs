//! `pupil refine-text`: personalise a decoder (SmolLM2) on a local text with LoRA under a
//! memory budget, reporting held-out perplexity on that text and on a general text before
//! and after; optionally rounds of generate-score-train on the model's own samples.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use pupil::format::ModelFile;
use pupil::import::load_model;
use pupil::models::llama::{CausalLm, Llama, LlamaLora, Target};
use pupil::refine::generate::{generate_train, GenerateConfig, Judge};
use pupil::refine::plan::{mib, parse_bytes, Plan};
use pupil::refine::text::{
    perplexity, personalise, self_anchors, split_tail, windows, StepReport, TextConfig,
};
use pupil::Backend;
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
    /// The decoder: a .pupil file, or a Llama GGUF or Hugging Face model folder
    /// (converted in memory).
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
    /// Rounds of generate-score-train: sample continuations of prompts cut from the text,
    /// score them (--judge, repetition, length, duplicates), train on the best (alone, or
    /// beside the text itself with --with-text).
    #[arg(long, default_value_t = 0)]
    generate_rounds: usize,
    /// Prompts per generate round.
    #[arg(long, default_value_t = 16)]
    prompts: usize,
    /// Prompt tokens cut from the text; the rest of a window is generated.
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Tokens of the device's other text the model reads before each prompt while sampling
    /// (left out of what it trains on: context distillation); 0 for none.
    #[arg(long, default_value_t = 0)]
    context_tokens: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sampling top-p.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Fraction of scored samples kept for training.
    #[arg(long, default_value_t = 0.5)]
    keep: f32,
    /// How samples are ranked: base (likelihood under the base model), gain (how much
    /// more the current model expects a sample than the base does) or teacher (likelihood
    /// under --teacher-lora).
    #[arg(long, default_value = "base")]
    judge: String,
    /// Adapters over the same base that know more (for example a fleet's shared adapter,
    /// `pupil sync pull`ed or written by `refine-text --out`): they write the generate
    /// rounds' samples, and `--judge teacher` ranks by them; the device's own adapters are
    /// what trains.
    #[arg(long)]
    teacher_lora: Option<PathBuf>,
    /// Each generate round also trains on the local text (samples augment scarce text).
    #[arg(long)]
    with_text: bool,
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

/// The texts as tokens: training windows, held-out tokens and general tokens (both cut to
/// `--eval-windows`).
struct Texts {
    train: Vec<Vec<u32>>,
    held: Vec<u32>,
    general: Vec<u32>,
    total: usize,
}

impl Texts {
    fn read(a: &Args, lm: &CausalLm) -> Result<Texts, Box<dyn std::error::Error>> {
        let read = |p: &PathBuf| -> Result<Vec<u32>, Box<dyn std::error::Error>> {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(lm.tokenizer().encode(&text)?)
        };
        let tokens = read(&a.data)?;
        let general = a
            .general
            .as_ref()
            .map(read)
            .transpose()?
            .unwrap_or_default();
        let limit = |t: &[u32]| -> Vec<u32> {
            let n = match a.eval_windows {
                0 => t.len(),
                w => t.len().min(w * (a.window + 1)),
            };
            t[..n].to_vec()
        };
        let (train, held) = split_tail(&tokens, a.held_out);
        let mut train = windows(train, a.window);
        if a.max_windows > 0 {
            train.truncate(a.max_windows);
        }
        Ok(Texts {
            train,
            held: limit(held),
            general: limit(&general),
            total: tokens.len(),
        })
    }

    /// Held-out and general perplexity of `lm`.
    fn measure(&self, lm: &Llama, window: usize) -> pupil::Result<(f64, Option<f64>)> {
        let local = perplexity(lm, &self.held, window)?;
        let general = if self.general.is_empty() {
            None
        } else {
            Some(perplexity(lm, &self.general, window)?)
        };
        Ok((local, general))
    }
}

/// Replay anchors sampled from the base model, as many as `--self-anchors`.
fn anchors(a: &Args, lm: &CausalLm) -> pupil::Result<Vec<Vec<u32>>> {
    if a.self_anchors == 0 {
        return Ok(Vec::new());
    }
    let prompts = ANCHOR_PROMPTS
        .iter()
        .map(|p| lm.tokenizer().encode(p))
        .collect::<pupil::Result<Vec<_>>>()?;
    let t = Instant::now();
    let anchors = self_anchors(lm.model(), &prompts, a.self_anchors, a.window, a.seed)?;
    eprintln!(
        "sampled {} anchor windows from the base model in {:.0} s",
        anchors.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(anchors)
}

/// What training did: the memory plan, every step's loss, the generate rounds' reports (as
/// JSON) and the tokens trained on.
struct Trained {
    plan: Plan,
    losses: Vec<(f64, f64)>,
    rounds: Vec<serde_json::Value>,
    tokens: usize,
}

/// Trains the adapters: on the text itself, or by rounds of generate-score-train, with a
/// progress bar (plain lines when stderr is not a terminal).
fn train(
    a: &Args,
    lm: &mut CausalLm,
    teacher: Option<LlamaLora>,
    texts: &Texts,
    anchors: &[Vec<u32>],
    cfg: &TextConfig,
) -> Result<Trained, Box<dyn std::error::Error>> {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} steps, loss {prefix} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    let mut losses: Vec<(f64, f64)> = Vec::new();
    let mut on_step = |s: StepReport, msg: &str| {
        bar.set_message(msg.to_string());
        bar.set_length(s.steps as u64);
        bar.set_position(s.step as u64);
        bar.set_prefix(format!("{:.3}", s.loss));
        if bar.is_hidden() && (s.step.is_multiple_of(10) || s.step == s.steps) {
            eprintln!("{msg}: step {}/{}, loss {:.3}", s.step, s.steps, s.loss);
        }
        losses.push(((losses.len() + 1) as f64, f64::from(s.loss)));
    };
    if a.generate_rounds == 0 {
        let plan = personalise(lm.model_mut(), &texts.train, anchors, cfg, |s| {
            on_step(s, "train")
        })?;
        bar.finish_and_clear();
        let tokens = texts.train.len() * a.window * a.epochs.max(1);
        return Ok(Trained {
            plan,
            losses,
            rounds: Vec::new(),
            tokens,
        });
    }
    let gen = GenerateConfig {
        rounds: a.generate_rounds,
        prompts: a.prompts,
        prompt_tokens: a.prompt_tokens,
        context_tokens: a.context_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        keep: a.keep,
        judge: Judge::parse(&a.judge)?,
        with_text: a.with_text,
    };
    let (mut rounds, mut tokens) = (Vec::new(), 0);
    let plan = generate_train(
        lm.model_mut(),
        teacher,
        &texts.train,
        anchors,
        &gen,
        cfg,
        |r, s| on_step(s, &format!("round {r} training")),
        |r, model| {
            let (local, general) = texts.measure(model, a.window)?;
            let line = format!(
                "round {}: {} samples, {} kept (mean base log-likelihood {:.2}, kept gain {:.3}), perplexity local {local:.2}{}",
                r.round, r.samples, r.kept, r.mean_log_likelihood, r.mean_kept_gain, fmt_general(general)
            );
            // A hidden bar (stderr not a terminal) would swallow the line.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            tokens += r.trained_tokens;
            rounds.push(json!({ "round": r.round, "samples": r.samples, "kept": r.kept, "mean_log_likelihood": r.mean_log_likelihood, "mean_kept_gain": r.mean_kept_gain, "trained_tokens": r.trained_tokens, "local_ppl": local, "general_ppl": general }));
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    Ok(Trained {
        plan,
        losses,
        rounds,
        tokens,
    })
}

/// The training loss and its running mean over 10 steps (the per-step loss mixes local
/// windows and anchors) as a PNG.
fn plot_losses(
    a: &Args,
    path: &std::path::Path,
    losses: &[(f64, f64)],
    ppl: (f64, f64),
) -> CliResult {
    let name = a
        .data
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
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
                a.rank, a.targets, ppl.0, ppl.1
            ),
            x_label: "step".into(),
            y_label: "next-token loss".into(),
            series: vec![
                Series {
                    name: "training loss".into(),
                    points: losses.to_vec(),
                },
                Series {
                    name: "mean of the last 10 steps".into(),
                    points: smooth,
                },
            ],
        }],
    )?;
    Ok(())
}

/// Perplexity before and after, with the run's plan, memory and timing.
struct Report {
    before: (f64, Option<f64>),
    after: (f64, Option<f64>),
    trained: Trained,
    peak: (u64, &'static str),
    train_secs: f64,
    total_secs: f64,
}

impl Report {
    fn json(&self, backend: &Backend) -> serde_json::Value {
        let (b, x, t, p) = (self.before, self.after, &self.trained, &self.trained.plan);
        json!({
            "adapter": backend.describe(),
            "local_ppl_before": b.0, "local_ppl_after": x.0,
            "general_ppl_before": b.1, "general_ppl_after": x.1,
            "local_change_pct": change(b.0, x.0),
            "general_change_pct": b.1.zip(x.1).map(|(b, x)| change(b, x)),
            "plan": { "micro_batch": p.micro_batch, "accumulation": p.accumulation, "planned_bytes": p.planned_bytes, "budget": p.budget },
            "peak_bytes": self.peak.0, "peak_kind": self.peak.1,
            "train_seconds": self.train_secs, "trained_tokens": t.tokens,
            "rounds": t.rounds, "losses": t.losses.iter().map(|p| p.1).collect::<Vec<_>>(),
            "total_seconds": self.total_secs,
        })
    }

    fn print(&self) {
        let (b, x, p) = (self.before, self.after, &self.trained.plan);
        println!("                      before      after    change");
        println!(
            "held-out local ppl  {:>8.2}  {:>9.2}  {:>+7.1}%",
            b.0,
            x.0,
            change(b.0, x.0)
        );
        if let (Some(b), Some(x)) = (b.1, x.1) {
            println!(
                "general ppl         {b:>8.2}  {x:>9.2}  {:>+7.1}%",
                change(b, x)
            );
        }
        println!(
            "memory plan: micro-batch {} x {} accumulated, planned {} of {}; {}: {}",
            p.micro_batch,
            p.accumulation,
            mib(p.planned_bytes),
            mib(p.budget),
            self.peak.1,
            mib(self.peak.0)
        );
        println!(
            "trained {} tokens in {:.0} s ({:.0} tokens/s), {:.0} s in all",
            self.trained.tokens,
            self.train_secs,
            self.trained.tokens as f64 / self.train_secs.max(1e-9),
            self.total_secs
        );
    }
}

/// Percentage change from `before` to `after`.
fn change(before: f64, after: f64) -> f64 {
    (after / before - 1.0) * 100.0
}

pub fn run(a: Args) -> CliResult {
    let backend = Backend::auto(a.adapter.as_deref())?;
    let cfg = TextConfig {
        window: a.window,
        batch: a.batch,
        epochs: a.epochs,
        lr: a.lr,
        rank: a.rank,
        alpha: a.alpha,
        targets: Target::parse_list(&a.targets)?,
        budget: parse_bytes(&a.memory_budget)?,
        replay: a.replay,
        seed: a.seed,
    };
    // The file's bytes are dropped after loading: the model holds its own copy.
    let base = load_model(&a.model)?;
    let mut lm = CausalLm::load(&base, &backend)?;
    let teacher = match &a.teacher_lora {
        Some(path) => Some(
            LlamaLora::from_file(&ModelFile::open(path)?, &base, lm.config(), &backend)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    drop(base);
    let texts = Texts::read(&a, &lm)?;
    eprintln!(
        "{} tokens of local text ({} training windows of {}, {} held-out tokens), {} general tokens, on {}",
        texts.total,
        texts.train.len(),
        a.window,
        texts.held.len(),
        texts.general.len(),
        backend.describe()
    );
    let start = Instant::now();
    let before = texts.measure(lm.model(), a.window)?;
    eprintln!(
        "base perplexity: local {:.2}{}",
        before.0,
        fmt_general(before.1)
    );
    let anchors = anchors(&a, &lm)?;
    let train_start = Instant::now();
    let trained = train(&a, &mut lm, teacher, &texts, &anchors, &cfg)?;
    let train_secs = train_start.elapsed().as_secs_f64();
    let after = texts.measure(lm.model(), a.window)?;
    if let Some(out) = &a.out {
        let lora = lm.model().lora().ok_or("no adapters were trained")?;
        lora.to_builder(&load_model(&a.model)?)?.write_atomic(out)?;
    }
    if let Some(path) = &a.plot {
        plot_losses(&a, path, &trained.losses, (before.0, after.0))?;
    }
    let report = Report {
        before,
        after,
        trained,
        peak: peak_bytes(&backend),
        train_secs,
        total_secs: start.elapsed().as_secs_f64(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.json(&backend))?);
        return Ok(());
    }
    report.print();
    if let Some(out) = &a.out {
        println!("adapters written to {}", out.display());
    }
    Ok(())
}

fn fmt_general(g: Option<f64>) -> String {
    g.map(|g| format!(", general {g:.2}")).unwrap_or_default()
}
