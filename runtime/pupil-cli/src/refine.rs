//! `pupil refine`: refine a classifier on a device's local data, in rounds of active labels,
//! pseudo-labels and a curriculum, with replay, a memory budget, checkpoints and a quality
//! gate; prints a summary table and writes the refined model and a PNG plot.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use pupil::data::idx::read_split;
use pupil::data::Split;
use pupil::format::{DType, ModelFile};
use pupil::models::classifier::{Model, Train};
use pupil::refine::plan::{mib, parse_bytes};
use pupil::refine::replay::Anchors;
use pupil::refine::select::{SelfTraining, Uncertainty};
use pupil::refine::{Active, Eval, History, Outcome, Progress, RefineConfig, Session};
use pupil::Backend;
use pupil_sync::client::{DeltaEncoding, DeviceDir};
use pupil_wire::Metric;

use crate::output::check_writable;
use crate::plot::{draw, Panel, Series};
use crate::sync::{queued_line, QueueOptions};
use crate::CliResult;

/// Arguments of `pupil refine`.
#[derive(clap::Args)]
#[command(
    after_help = "Example (a device whose digits are rotated and thickened):\n  \
pupil data shift --style rot=25,thick=1 --out device\n  \
pupil refine --model models/mnist-student.pupil --data device --labels device/labels.idx \
--out device/refined.pupil --plot device/refine.png"
)]
pub struct Args {
    /// The classifier to refine (.pupil).
    #[arg(long)]
    model: PathBuf,
    /// Folder of local data: `images.idx` (unlabelled pool); `eval-images.idx` and
    /// `eval-labels.idx`, when present, are a labelled local test set for reporting.
    #[arg(long)]
    data: PathBuf,
    /// Strategies, comma-separated: self (pseudo-labels), active (ask for labels), curriculum.
    #[arg(long, default_value = "self,active,curriculum")]
    strategy: String,
    /// IDX labels file answering active-selection queries (the app's labelling callback).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Most labels asked for in the whole session.
    #[arg(long, default_value_t = 20)]
    label_budget: usize,
    /// Labels asked for per round.
    #[arg(long, default_value_t = 10)]
    labels_per_round: usize,
    /// Active selection by `margin` or `entropy`.
    #[arg(long, default_value = "margin")]
    uncertainty: String,
    /// Pseudo-label confidence threshold.
    #[arg(long, default_value_t = 0.9)]
    threshold: f32,
    /// What trains: all, head, or lora:RANK.
    #[arg(long, default_value = "all")]
    train: String,
    /// Rounds of select-then-train.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Passes over each round's selected data.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Examples per step, replay included.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Anchor examples (shipped in the model file) per batch.
    #[arg(long, default_value_t = 24)]
    replay: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f32,
    /// Largest drop of held-out accuracy (points) the quality gate lets through: anchors
    /// against the starting model, labelled local data against the round's start.
    #[arg(long, default_value_t = 2.0)]
    tolerance: f32,
    /// Memory budget (e.g. 64MB); the session plans micro-batches to fit or refuses.
    #[arg(long)]
    memory_budget: Option<String>,
    /// Checkpoint file (written atomically).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Continue from the checkpoint.
    #[arg(long)]
    resume: bool,
    /// Where to write the refined model (default: beside --data as refined.pupil).
    #[arg(long)]
    out: Option<PathBuf>,
    /// PNG plot of loss and accuracy per round.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The original task's test set, measured each round: mnist, fashion, digits, a folder of
    /// `{train,test}-{images,labels}.idx` files, or `none`. Default: the data set the model's
    /// id names, if it names one.
    #[arg(long)]
    global: Option<String>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Device directory (as in `pupil sync --dir`, registered with `pupil sync register`):
    /// queue the delta from --model to the refined model as a signed update in its outbox,
    /// for `pupil sync push`.
    #[arg(long, value_name = "DEVICE_DIR")]
    outbox: Option<PathBuf>,
    #[command(flatten)]
    queue: QueueOptions,
    /// Print the history as JSON.
    #[arg(long)]
    json: bool,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
}

fn optional_split(images: &Path, labels: &Path) -> Result<Option<Split>, pupil::data::DataError> {
    if images.is_file() && labels.is_file() {
        read_split(images, Some(labels)).map(Some)
    } else {
        Ok(None)
    }
}

/// Run the session and report.
pub fn run(a: Args) -> CliResult {
    let strategies: Vec<&str> = a
        .strategy
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(bad) = strategies
        .iter()
        .find(|s| !["self", "active", "curriculum"].contains(s))
    {
        return Err(format!("unknown strategy {bad:?}: use self, active, curriculum").into());
    }
    let by = match a.uncertainty.as_str() {
        "margin" => Uncertainty::Margin,
        "entropy" => Uncertainty::Entropy,
        other => return Err(format!("--uncertainty {other:?}: use margin or entropy").into()),
    };
    crate::output::json_mode(a.json);
    // Ctrl-C from here on asks the session to stop (at its next step); the handler only sets
    // a flag, so a second Ctrl-C while the checkpoint is written is ignored.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed));
    // Where the results go is checked before the work, not after it.
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.data.join("refined.pupil"));
    check_writable("--out", &out)?;
    if let Some(path) = &a.plot {
        check_writable("--plot", path)?;
    }
    if a.labels.is_none() && strategies.contains(&"active") {
        return Err(
            "active selection needs answers: pass --labels FILE (IDX labels of the \
                    pool), or drop `active` from --strategy"
                .into(),
        );
    }
    // A device that cannot queue the result is refused before the work, not after it.
    let device = match &a.outbox {
        Some(dir) => {
            DeltaEncoding::parse(&a.queue.encoding)?;
            let device = DeviceDir::open(dir)?;
            device.device_id()?;
            Some(device)
        }
        None => None,
    };
    // The pool's labels are real only with --labels; they answer label requests and
    // measure pseudo-labels, and are never trained on directly.
    let pool = read_split(&a.data.join("images.idx"), a.labels.as_deref())?;
    let oracle_labels = a.labels.is_some().then(|| pool.labels.clone());
    let local = optional_split(
        &a.data.join("eval-images.idx"),
        &a.data.join("eval-labels.idx"),
    )?;
    let file = ModelFile::open(&a.model)?;
    let global = match a.global.as_deref() {
        Some("none" | "false") => None,
        Some(name) => Some(crate::fetch::dataset(name)?.test),
        None => {
            let id = file.info().model_id.as_str();
            match crate::fetch::DATASETS.contains(&id) {
                true => Some(crate::fetch::dataset(id)?.test),
                false => None,
            }
        }
    };
    let backend = Backend::auto(a.adapter.as_deref())?;
    let anchors = Anchors::from_file(&file)?.ok_or_else(|| {
        format!(
            "{} carries no anchor examples; pass --replay 0 (and expect some forgetting)",
            a.model.display()
        )
    });
    let anchors = match (anchors, a.replay) {
        (Ok(x), _) => x,
        (Err(_), 0) => Anchors::new(&Split::empty(&pool.shape)),
        (Err(e), _) => return Err(e.into()),
    };
    let train = Train::parse(&a.train)?;
    let model = Model::open(&file, &backend, train)?;
    let cfg = RefineConfig {
        rounds: a.rounds,
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        self_training: strategies.contains(&"self").then_some(SelfTraining {
            threshold: a.threshold,
            ..Default::default()
        }),
        active: strategies.contains(&"active").then_some(Active {
            per_round: a.labels_per_round,
            budget: a.label_budget,
            by,
        }),
        curriculum: strategies.contains(&"curriculum").then_some(0.5),
        replay: a.replay,
        oracle_weight: 4,
        tolerance: a.tolerance / 100.0,
        memory_budget: a.memory_budget.as_deref().map(parse_bytes).transpose()?,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
    };
    let eval = Eval {
        local: local.as_ref(),
        global: global.as_ref(),
        gate_local: None,
    };
    let mut session = Session::new(
        &model,
        file.content_hash(),
        &pool,
        oracle_labels.is_some(),
        anchors,
        cfg,
        eval,
        a.checkpoint.clone(),
    )?;
    let plan = *session.plan();
    println!("backend: {}", backend.describe());
    println!(
        "model: {} ({} parameters, training {} = {}); pool {} images",
        model.spec.arch.name(),
        model.params.count(false),
        train,
        model.params.count(true),
        pool.n
    );
    println!(
        "memory plan: {} planned of {} budget (weights {}, gradients {}, optimizer {}, {} per example); batch {} = {} x {} micro-batches",
        mib(plan.planned_bytes),
        if plan.budget == u64::MAX { "no".to_string() } else { mib(plan.budget) },
        mib(plan.needs.weights),
        mib(plan.needs.grads),
        mib(plan.needs.optimizer),
        mib(plan.needs.per_example),
        plan.batch,
        plan.micro_batch,
        plan.accumulation
    );
    if a.resume {
        if session.resume()? {
            println!(
                "resumed from {}",
                a.checkpoint
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            );
        } else {
            println!("no checkpoint to resume from; starting afresh");
        }
    }
    let labels = oracle_labels.unwrap_or_default();
    let mut oracle = |picks: &[usize]| -> Vec<Option<usize>> {
        picks
            .iter()
            .map(|&i| labels.get(i).map(|&y| usize::from(y)))
            .collect()
    };
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("round {msg} [{bar:30}] {pos}/{len} steps eta {eta}")?
            .progress_chars("=> "),
    );
    let mut round = 0;
    let outcome = session.run(&mut oracle, &stop, &mut |p| match p {
        Progress::RoundStart {
            round: r,
            steps,
            examples,
        } => {
            round = r;
            bar.set_length(u64::from(steps));
            bar.set_position(0);
            bar.set_message(format!("{r} ({examples} examples)"));
        }
        Progress::Step { step, loss } => {
            bar.set_position(u64::from(step));
            bar.set_message(format!("{round} loss {loss:.4}"));
        }
        Progress::RoundEnd(r) => bar.suspend(|| {
            println!(
                "round {}: {} labels (+{}), {} pseudo-labels{}, loss {:.4}, {} ({})",
                r.round,
                r.labels,
                r.new_labels,
                r.pseudo_labels,
                r.pseudo_label_accuracy
                    .map_or(String::new(), |x| format!(" ({:.1}% right)", x * 100.0)),
                r.loss,
                if r.accepted { "kept" } else { "rolled back" },
                r.reason
            )
        }),
    })?;
    bar.finish_and_clear();
    if outcome == Outcome::Interrupted {
        let what = match &a.checkpoint {
            Some(p) => format!(
                "checkpoint written to {}; run again with --resume to continue",
                p.display()
            ),
            None => "no checkpoint written (pass --checkpoint FILE to be able to resume \
                     with --resume); nothing was saved"
                .into(),
        };
        return Err(Box::new(crate::Interrupted(what)));
    }
    let history = session.history().clone();
    print_table(&history);
    if let Some(peak) = session.peak_bytes() {
        println!(
            "peak GPU memory held by tensors: {} (planned {})",
            mib(peak),
            mib(plan.planned_bytes)
        );
    }
    let info = file.info();
    model.save(&out, DType::F32, info.version, info.parent)?;
    println!("wrote {}", out.display());
    if let Some(device) = &device {
        let q = queue(device, &a.queue, &file, &model, &history)?;
        println!("{}", queued_line(&q));
    }
    if let Some(path) = &a.plot {
        plot(path, &history)?;
        println!("plot: {}", path.display());
    }
    if a.json {
        crate::output::print_json(&serde_json::to_string_pretty(&history)?);
    }
    Ok(())
}

/// Queues the refined `model`'s delta to `base` in `device`'s outbox, weighted by the
/// examples the last round trained on, with the local accuracy before and after.
fn queue(
    device: &DeviceDir,
    options: &QueueOptions,
    base: &ModelFile,
    model: &Model,
    h: &History,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let last = h.rounds.last();
    let examples = last.map_or(0, |r| (r.labels + r.pseudo_labels) as u64);
    let mut metrics = Vec::new();
    if let Some(loss) = last.map(|r| r.loss) {
        metrics.push(Metric {
            name: "loss",
            value: loss,
        });
    }
    if let (Some(before), Some(after)) = (h.start.0, last.and_then(|r| r.local_accuracy)) {
        metrics.push(Metric {
            name: "local_accuracy_before",
            value: before,
        });
        metrics.push(Metric {
            name: "local_accuracy_after",
            value: after,
        });
    }
    options.queue(device, base, &model.merged()?, examples, &metrics)
}

fn pct(x: Option<f32>) -> String {
    x.map_or("-".into(), |v| format!("{:.2}%", v * 100.0))
}

/// The per-round summary table.
pub fn print_table(h: &History) {
    println!(
        "\n{:<7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>9}  gate",
        "round", "labels", "pseudo", "loss", "local", "global", "anchors"
    );
    println!(
        "{:<7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>9}",
        "start",
        "-",
        "-",
        "-",
        pct(h.start.0),
        pct(h.start.1),
        "-"
    );
    for r in &h.rounds {
        println!(
            "{:<7} {:>7} {:>7} {:>8.4} {:>9} {:>9} {:>9}  {}",
            r.round,
            r.labels,
            r.pseudo_labels,
            r.loss,
            pct(r.local_accuracy),
            pct(r.global_accuracy),
            pct(r.after.anchors),
            if r.accepted { "kept" } else { "rolled back" }
        );
    }
}

fn plot(path: &Path, h: &History) -> CliResult {
    let acc = |f: &dyn Fn(&pupil::refine::RoundReport) -> Option<f32>,
               start: Option<f32>|
     -> Vec<(f64, f64)> {
        start
            .map(|s| (0.0, f64::from(s) * 100.0))
            .into_iter()
            .chain(
                h.rounds
                    .iter()
                    .filter_map(|r| f(r).map(|v| (f64::from(r.round), f64::from(v) * 100.0))),
            )
            .collect()
    };
    draw(
        path,
        &[
            Panel {
                title: "training loss per round".into(),
                x_label: "round".into(),
                y_label: "loss".into(),
                series: vec![Series {
                    name: "loss".into(),
                    points: h
                        .rounds
                        .iter()
                        .map(|r| (f64::from(r.round), f64::from(r.loss)))
                        .collect(),
                }],
            },
            Panel {
                title: "accuracy (round 0 = shipped model)".into(),
                x_label: "round".into(),
                y_label: "accuracy %".into(),
                series: vec![
                    Series {
                        name: "local (device test set)".into(),
                        points: acc(&|r| r.local_accuracy, h.start.0),
                    },
                    Series {
                        name: "global (original test set)".into(),
                        points: acc(&|r| r.global_accuracy, h.start.1),
                    },
                ],
            },
        ],
    )
}
