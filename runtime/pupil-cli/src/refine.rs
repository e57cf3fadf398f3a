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
use pupil::refine::plan::{mib, parse_bytes, Plan};
use pupil::refine::replay::Anchors;
use pupil::refine::select::{SelfTraining, Uncertainty};
use pupil::refine::{
    label_oracle, Active, Eval, History, Outcome, Progress, RefineConfig, Session,
};
use pupil::Backend;
use pupil_sync::client::{DeltaEncoding, DeviceDir};

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
    let strategies = Strategies::parse(&a.strategy, &a.uncertainty)?;
    crate::output::json_mode(a.json);
    let stop = stop_on_ctrl_c();
    let out = checked_out(&a, &strategies)?;
    let device = open_device(&a)?;
    // The pool's labels are real only with --labels; they answer label requests and
    // measure pseudo-labels, and are never trained on directly.
    let pool = read_split(&a.data.join("images.idx"), a.labels.as_deref())?;
    let oracle_labels = a.labels.is_some().then(|| pool.labels.clone());
    let local = optional_split(
        &a.data.join("eval-images.idx"),
        &a.data.join("eval-labels.idx"),
    )?;
    let file = ModelFile::open(&a.model)?;
    let global = global_test_set(a.global.as_deref(), &file)?;
    let backend = Backend::auto(a.adapter.as_deref())?;
    let anchors = anchors(&a, &file, &pool)?;
    let train = Train::parse(&a.train)?;
    let model = Model::open(&file, &backend, train)?;
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
        strategies.config(&a)?,
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
    print_plan(&plan);
    if a.resume {
        resume(&mut session, a.checkpoint.as_deref())?;
    }
    let labels = oracle_labels.unwrap_or_default();
    let outcome = RoundBar::new()?.run(&mut session, &mut label_oracle(&labels), &stop)?;
    if outcome == Outcome::Interrupted {
        return Err(interrupted(a.checkpoint.as_deref()));
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
    write_results(&a, &out, &file, &model, &history, device.as_ref())
}

/// What `--strategy` and `--uncertainty` ask for.
struct Strategies {
    self_training: bool,
    active: bool,
    curriculum: bool,
    by: Uncertainty,
}

impl Strategies {
    /// Parses the comma-separated `strategy` list and the `uncertainty` score.
    fn parse(strategy: &str, uncertainty: &str) -> Result<Strategies, String> {
        let names: Vec<&str> = strategy
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(bad) = names
            .iter()
            .find(|s| !["self", "active", "curriculum"].contains(s))
        {
            return Err(format!(
                "unknown strategy {bad:?}: use self, active, curriculum"
            ));
        }
        let by = match uncertainty {
            "margin" => Uncertainty::Margin,
            "entropy" => Uncertainty::Entropy,
            other => return Err(format!("--uncertainty {other:?}: use margin or entropy")),
        };
        Ok(Strategies {
            self_training: names.contains(&"self"),
            active: names.contains(&"active"),
            curriculum: names.contains(&"curriculum"),
            by,
        })
    }

    /// The session's settings: these strategies with the rest of the flags.
    fn config(&self, a: &Args) -> Result<RefineConfig, pupil::Error> {
        Ok(RefineConfig {
            rounds: a.rounds,
            epochs: a.epochs,
            batch: a.batch,
            lr: a.lr,
            self_training: self.self_training.then_some(SelfTraining {
                threshold: a.threshold,
                ..Default::default()
            }),
            active: self.active.then_some(Active {
                per_round: a.labels_per_round,
                budget: a.label_budget,
                by: self.by,
            }),
            curriculum: self.curriculum.then_some(0.5),
            replay: a.replay,
            oracle_weight: 4,
            tolerance: a.tolerance / 100.0,
            memory_budget: a.memory_budget.as_deref().map(parse_bytes).transpose()?,
            checkpoint_every: a.checkpoint_every,
            seed: a.seed,
        })
    }
}

/// Where the refined model goes (`--out`, by default beside `--data`), after checking that
/// it and `--plot` can be written and that active selection has its answers: before the
/// work, not after it.
fn checked_out(a: &Args, strategies: &Strategies) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.data.join("refined.pupil"));
    check_writable("--out", &out)?;
    if let Some(path) = &a.plot {
        check_writable("--plot", path)?;
    }
    if a.labels.is_none() && strategies.active {
        return Err(
            "active selection needs answers: pass --labels FILE (IDX labels of the \
                    pool), or drop `active` from --strategy"
                .into(),
        );
    }
    Ok(out)
}

/// A flag that Ctrl-C sets from now on, asking the session to stop at its next step; the
/// handler only sets it, so a second Ctrl-C while the checkpoint is written is ignored.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed));
    stop
}

/// The device directory of `--outbox`, opened and checked (registered, a valid encoding)
/// before the work: a device that cannot queue the result is refused before it, not after.
fn open_device(a: &Args) -> Result<Option<DeviceDir>, Box<dyn std::error::Error>> {
    let Some(dir) = &a.outbox else {
        return Ok(None);
    };
    DeltaEncoding::parse(&a.queue.encoding)?;
    let device = DeviceDir::open(dir)?;
    device.device_id()?;
    Ok(Some(device))
}

/// The original task's test set `--global` names, or by default the one the model's id
/// names, if any.
fn global_test_set(
    name: Option<&str>,
    file: &ModelFile,
) -> Result<Option<Split>, Box<dyn std::error::Error>> {
    Ok(match name {
        Some("none" | "false") => None,
        Some(name) => Some(crate::fetch::dataset(name)?.test),
        None => {
            let id = file.info().model_id.as_str();
            match crate::fetch::DATASETS.contains(&id) {
                true => Some(crate::fetch::dataset(id)?.test),
                false => None,
            }
        }
    })
}

/// The anchors the model file carries; none (an empty set shaped like `pool`) only with
/// `--replay 0`.
fn anchors(
    a: &Args,
    file: &ModelFile,
    pool: &Split,
) -> Result<Anchors, Box<dyn std::error::Error>> {
    match (Anchors::from_file(file)?, a.replay) {
        (Some(x), _) => Ok(x),
        (None, 0) => Ok(Anchors::new(&Split::empty(&pool.shape))),
        (None, _) => Err(format!(
            "{} carries no anchor examples; pass --replay 0 (and expect some forgetting)",
            a.model.display()
        )
        .into()),
    }
}

/// Prints the memory plan.
fn print_plan(plan: &Plan) {
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
}

/// Resumes `session` from its checkpoint, saying whether there was one.
fn resume(session: &mut Session, checkpoint: Option<&Path>) -> CliResult {
    if session.resume()? {
        println!(
            "resumed from {}",
            checkpoint.map_or(String::new(), |p| p.display().to_string())
        );
    } else {
        println!("no checkpoint to resume from; starting afresh");
    }
    Ok(())
}

/// The progress bar of a running session, with a line per finished round.
struct RoundBar {
    bar: ProgressBar,
    round: u32,
}

impl RoundBar {
    fn new() -> Result<RoundBar, Box<dyn std::error::Error>> {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template("round {msg} [{bar:30}] {pos}/{len} steps eta {eta}")?
                .progress_chars("=> "),
        );
        Ok(RoundBar { bar, round: 0 })
    }

    /// Runs `session`'s remaining rounds, showing their progress.
    fn run(
        mut self,
        session: &mut Session,
        oracle: &mut dyn FnMut(&[usize]) -> Vec<Option<usize>>,
        stop: &AtomicBool,
    ) -> Result<Outcome, pupil::Error> {
        let outcome = session.run(oracle, stop, &mut |p| self.show(p));
        self.bar.finish_and_clear();
        outcome
    }

    fn show(&mut self, progress: Progress) {
        let bar = &self.bar;
        match progress {
            Progress::RoundStart {
                round,
                steps,
                examples,
            } => {
                self.round = round;
                bar.set_length(u64::from(steps));
                bar.set_position(0);
                bar.set_message(format!("{round} ({examples} examples)"));
            }
            Progress::Step { step, loss } => {
                bar.set_position(u64::from(step));
                bar.set_message(format!("{} loss {loss:.4}", self.round));
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
        }
    }
}

/// The error of a session stopped by Ctrl-C, saying how to go on.
fn interrupted(checkpoint: Option<&Path>) -> Box<dyn std::error::Error> {
    let what = match checkpoint {
        Some(p) => format!(
            "checkpoint written to {}; run again with --resume to continue",
            p.display()
        ),
        None => "no checkpoint written (pass --checkpoint FILE to be able to resume \
                 with --resume); nothing was saved"
            .into(),
    };
    Box::new(crate::Interrupted(what))
}

/// Writes the refined model to `out`, queues its update (with --outbox), draws the plot and
/// prints the JSON history, as the flags ask.
fn write_results(
    a: &Args,
    out: &Path,
    file: &ModelFile,
    model: &Model,
    history: &History,
    device: Option<&DeviceDir>,
) -> CliResult {
    let info = file.info();
    model.save(out, DType::F32, info.version, info.parent)?;
    println!("wrote {}", out.display());
    if let Some(device) = device {
        // Weighted by the examples the last round trained on, with the local accuracy
        // before and after.
        let update = history.update_report();
        let q = a.queue.queue(
            device,
            file,
            &model.merged()?,
            update.examples,
            &update.metrics,
        )?;
        println!("{}", queued_line(&q));
    }
    if let Some(path) = &a.plot {
        plot(path, history)?;
        println!("plot: {}", path.display());
    }
    if a.json {
        crate::output::print_json(&serde_json::to_string_pretty(history)?);
    }
    Ok(())
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
