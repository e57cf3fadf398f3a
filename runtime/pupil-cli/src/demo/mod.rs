//! `pupil demo`: the whole loop on one machine. An upstream server runs in-process on
//! loopback with its durable store; simulated devices, each with digits in its own style,
//! pull the shipped distilled student, measure it on their local data, generate training data
//! (a few labels asked of the user, confident pseudo-labels), refine on the device, push
//! signed deltas; the server aggregates them (FedAvg), gates the candidate on its holdout and
//! publishes the next version, which every device pulls. A second run continues.
//! `--task text` runs a decoder fleet instead ([`text`]).

mod device;
mod summary;
mod text;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use pupil::data::shift::Style;
use pupil::data::Split;
use pupil::format::ModelFile;
use pupil::models::classifier::Personal;
use pupil::models::classifier::{Model, Train};
use pupil::refine::gate::HoldoutGate;
use pupil::train;
use pupil::Backend;
use pupil_sync::client::Client;
use pupil_sync::server::{serve, Gate, Server, ServerConfig, Verdict};
use serde::{Deserialize, Serialize};

use crate::CliResult;
use device::Device;

/// The shipped student (`models/mnist-student.pupil`, made by `pupil distill`).
pub const STUDENT: &[u8] = include_bytes!("../../../../models/mnist-student.pupil");

/// Device styles, in order: rotation, stroke thickness and offset differ per device.
const STYLES: [&str; 8] = [
    "rot=25,thick=1",
    "rot=-20",
    "thick=2",
    "rot=15,dx=2,dy=2",
    "rot=-30,thick=1",
    "dx=-3,dy=1",
    "rot=35",
    "rot=-10,thick=1,dy=-2",
];

/// Arguments of `pupil demo`.
#[derive(clap::Args)]
#[command(
    after_help = "The first run creates DIR; later runs continue from what is stored there \
(server versions, device keys and outboxes, history). --reset starts over."
)]
pub struct Args {
    /// What the fleet learns: `digits` (a digit classifier, each device with its own
    /// handwriting style) or `text` (SmolLM2 personalised with LoRA, each device with its own
    /// Shakespeare play, the query and value adapters shared; a few minutes on 2 cores).
    #[arg(long, default_value = "digits")]
    task: String,
    /// Where the server store, the devices and the report live.
    #[arg(long, default_value = "pupil-demo")]
    dir: PathBuf,
    /// Simulated devices (at most 8).
    #[arg(long, default_value_t = 4)]
    devices: usize,
    /// Rounds to run now.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Unlabelled images per device.
    #[arg(long, default_value_t = 1000)]
    pool: usize,
    /// Delete DIR first.
    #[arg(long)]
    reset: bool,
    /// What each device keeps to itself, training it on the device and never sending it:
    /// `ends` (its first layer, where its digits' style lives, and its classification
    /// head), `head` (only the head) or `none` (everything is shared).
    #[arg(long, default_value = "ends")]
    personal: String,
    /// Text task: training windows of 64 tokens per device.
    #[arg(long, default_value_t = 8)]
    windows: usize,
    /// Text task: AdamW learning rate of the adapters.
    #[arg(long, default_value_t = 2e-3)]
    lr: f32,
    /// Text task: replay anchors (sampled from the base) in every step beside 4 local windows.
    #[arg(long, default_value_t = 2)]
    replay: usize,
    /// Text task: how the server merges adapters: `product` (the mean of B A, re-factored by
    /// truncated SVD) or `factors` (the naive mean of A and of B).
    #[arg(long, default_value = "product")]
    lora_merge: String,
    /// Text task: skip the training-alone baseline (it does not depend on the merge rule).
    #[arg(long)]
    skip_alone: bool,
    /// Text task: how far a device's personal adapter may raise perplexity on the base's own
    /// samples over the shared version's (0.08 = 8 %); it is scaled down until it does not
    /// (WiSE-FT blending).
    #[arg(long, default_value_t = 0.08)]
    max_drift: f64,
    /// Adapter (name, backend or cpu); default: the best GPU, else the CPU backend.
    #[arg(long)]
    adapter: Option<String>,
    /// Print the history (device styles, every version's measurements) as JSON on stdout;
    /// the report goes to stderr.
    #[arg(long)]
    json: bool,
}

/// Seconds spent per phase, summed over devices.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Phases {
    /// Pulling and verifying versions.
    pub pull: f64,
    /// Measuring the pulled model on local data.
    pub inference: f64,
    /// Data generation and refinement.
    pub refine: f64,
    /// Encoding, signing, queueing and pushing updates.
    pub sync: f64,
    /// Server-side aggregation, quality gate and publishing.
    pub aggregate: f64,
}

/// One published version as the demo measured it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionRow {
    /// Version number on the server.
    pub version: u64,
    /// Accuracy on MNIST's own test set.
    pub global: f32,
    /// Accuracy on each device's local test set of the model it runs (the version with its
    /// personal layers, when it keeps some).
    pub local: Vec<f32>,
    /// Accuracy on each device's local test set of the shared version alone.
    #[serde(default)]
    pub shared: Vec<f32>,
    /// Bytes of each device's update that produced it (empty for the shipped model).
    pub update_bytes: Vec<usize>,
    /// Each device's local accuracy right after its own refinement.
    pub refined: Vec<f32>,
    /// The server's quality gate.
    pub gate: String,
    /// Time per phase in the round that produced it.
    pub phases: Phases,
}

/// What the demo keeps between runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Device styles, in order.
    pub styles: Vec<String>,
    /// Measured versions, oldest first.
    pub versions: Vec<VersionRow>,
}

const ADMIN: &str = "pupil-demo-admin";

/// The server's quality gate ([`HoldoutGate`]): accuracy on MNIST test images the devices
/// never see must not fall by more than a point.
fn holdout_gate(holdout: Split) -> Gate {
    let gate = HoldoutGate {
        holdout,
        tolerance: 0.01,
    };
    Arc::new(move |candidate: &ModelFile, current: &ModelFile| {
        match gate.judge(candidate, current) {
            Ok(v) => Verdict {
                accept: v.accept,
                metrics: [("holdout_accuracy".to_string(), f64::from(v.after))].into(),
                reason: v.reason,
            },
            Err(e) => Verdict {
                accept: false,
                metrics: Default::default(),
                reason: format!("the candidate is not a readable classifier: {e}"),
            },
        }
    })
}

/// Run the demo.
pub fn run(a: Args) -> CliResult {
    crate::output::json_mode(a.json);
    match a.task.as_str() {
        "digits" => {}
        "text" => return text::run(&a, Backend::auto(a.adapter.as_deref())?),
        other => return Err(format!("--task {other:?}: use digits or text").into()),
    }
    let personal = Personal::from_name(&a.personal)
        .ok_or_else(|| format!("--personal {:?}: use ends, head or none", a.personal))?;
    if a.devices == 0 || a.devices > STYLES.len() {
        return Err(format!("--devices must be 1 to {}", STYLES.len()).into());
    }
    let (state_path, mut state) = open_state(&a)?;
    let backend = Backend::auto(a.adapter.as_deref())?;
    println!(
        "pupil demo: {} devices, {} rounds, data in {}",
        a.devices,
        a.rounds,
        a.dir.display()
    );
    println!("backend: {}", backend.describe());
    let mnist = crate::fetch::mnist()?;
    let holdout = mnist.test.subset(&(8000..10_000).collect::<Vec<_>>());
    let (_runtime, server, url) = start_server(&a, holdout)?;

    let client = Client::new(&url);
    let server_key = client.server_key()?;
    let mut devices = Vec::new();
    for (i, style) in STYLES.iter().enumerate().take(a.devices) {
        let style = Style::parse(style)?;
        let d = Device::open(&a.dir, i, style, a.pool, &mnist, personal)?;
        client.register(&d.name, d.key(), Some(ADMIN))?;
        devices.push(d);
    }
    state.styles = devices.iter().map(|d| d.style.to_string()).collect();
    let fleet = Fleet {
        server: &server,
        client: &client,
        server_key: &server_key,
        devices: &devices,
        backend: &backend,
        test: &mnist.test,
    };
    if state.versions.is_empty() {
        let mut phases = Phases::default();
        state.versions.push(fleet.measure(&mut phases)?);
        state.versions[0].gate = "shipped student".into();
        std::fs::write(&state_path, serde_json::to_vec_pretty(&state)?)?;
    } else {
        println!(
            "continuing from version {} (pass --reset to start over)",
            state.versions.last().map_or(1, |v| v.version)
        );
    }
    print_row(&state.versions[state.versions.len() - 1], &devices);
    for _ in 0..a.rounds {
        fleet.round(&mut state)?;
        std::fs::write(&state_path, serde_json::to_vec_pretty(&state)?)?;
    }
    report(&a, &state, &devices, &state_path)
}

/// The demo's history in `a.dir` (created, or emptied with `--reset`), checked against the
/// fleet size asked for.
fn open_state(a: &Args) -> Result<(PathBuf, State), Box<dyn std::error::Error>> {
    if a.reset && a.dir.exists() {
        std::fs::remove_dir_all(&a.dir)?;
    }
    std::fs::create_dir_all(&a.dir)?;
    let state_path = a.dir.join("state.json");
    let state: State = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is unreadable ({e}); pass --reset to start over",
                state_path.display()
            )
        })?,
        Err(_) => State::default(),
    };
    if !state.styles.is_empty() && state.styles.len() != a.devices {
        return Err(format!(
            "{} holds a fleet of {} devices; pass --devices {} or --reset",
            a.dir.display(),
            state.styles.len(),
            state.styles.len()
        )
        .into());
    }
    Ok((state_path, state))
}

/// The in-process server on a free loopback port (its store in `a.dir`), holding the
/// shipped student as version 1 and gating rounds on `holdout`: the runtime that serves
/// it, the server and its URL.
fn start_server(
    a: &Args,
    holdout: Split,
) -> Result<(tokio::runtime::Runtime, Arc<Server>, String), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let config = ServerConfig {
        min_updates: u64::MAX,
        deadline: Duration::from_secs(24 * 3600),
        admin_token: Some(ADMIN.into()),
        ..ServerConfig::default()
    };
    let server = Server::open(&a.dir.join("server"), config, holdout_gate(holdout))?;
    let first = server.import_model(STUDENT.to_vec())?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    runtime.spawn(serve(server.clone(), listener, std::future::pending()));
    println!(
        "server: {url} (store {}), current version {}",
        a.dir.join("server").display(),
        server.current_meta().map_or(first.version, |m| m.version)
    );

    Ok((runtime, server, url))
}

/// What one round works with.
struct Fleet<'a> {
    server: &'a Arc<Server>,
    client: &'a Client,
    server_key: &'a [u8; 32],
    devices: &'a [Device],
    backend: &'a Backend,
    test: &'a Split,
}

impl Fleet<'_> {
    /// Every device refines and pushes, the server aggregates, and a published version is
    /// measured and added to `state`.
    fn round(&self, state: &mut State) -> Result<(), Box<dyn std::error::Error>> {
        let (server, client, server_key, devices, backend) = (
            self.server,
            self.client,
            self.server_key,
            self.devices,
            self.backend,
        );
        let round = server.store().last_round()? + 1;
        let mut phases = Phases::default();
        let bar = ProgressBar::new(devices.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("round {msg} [{bar:20}] {pos}/{len} devices refined")?
                .progress_chars("=> "),
        );
        bar.set_message(round.to_string());
        // Devices run the last published version, measured when it was published.
        let current = state
            .versions
            .last()
            .map(|v| v.local.clone())
            .unwrap_or_default();
        let mut results = Vec::new();
        for (d, &before) in devices.iter().zip(&current) {
            let t = Instant::now();
            d.pull(client, server_key)?;
            phases.pull += t.elapsed().as_secs_f64();
            results.push(d.refine_and_push(client, backend, round, before, &mut phases)?);
            bar.inc(1);
        }
        bar.finish_and_clear();
        for (d, r) in devices.iter().zip(&results) {
            println!(
                    "  {}: local {:.1}% -> refined {:.1}% ({} labels asked, {} pseudo-labels, {}), update {} bytes",
                    d.name,
                    r.before * 100.0,
                    r.refined * 100.0,
                    r.labels,
                    r.pseudo,
                    if r.kept { "kept" } else { "rolled back on device" },
                    r.update_bytes
                );
        }
        let t = Instant::now();
        let record = server
            .run_round()?
            .ok_or("the server had no updates to aggregate")?;
        phases.aggregate += t.elapsed().as_secs_f64();
        println!(
            "  server round {}: {} updates, gate {}",
            record.round, record.updates, record.gate
        );
        let mut row = self.measure(&mut phases)?;
        row.update_bytes = results.iter().map(|r| r.update_bytes).collect();
        row.refined = results.iter().map(|r| r.refined).collect();
        row.gate = record.gate.clone();
        row.phases = phases;
        if record.published.is_some() {
            print_row(&row, devices);
            state.versions.push(row);
        } else {
            println!(
                "  the candidate was rejected; devices keep version {}",
                row.version
            );
        }
        Ok(())
    }

    /// Every device pulls the current version; measure it.
    fn measure(&self, phases: &mut Phases) -> Result<VersionRow, Box<dyn std::error::Error>> {
        measure(
            self.devices,
            self.client,
            self.server_key,
            self.backend,
            self.test,
            phases,
        )
    }
}

/// The summary table, the plot, where the files are and what to try next (and the JSON).
fn report(a: &Args, state: &State, devices: &[Device], state_path: &std::path::Path) -> CliResult {
    println!(
        "\n{}",
        summary::table(
            state,
            &devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>()
        )
    );
    let plot_path = a.dir.join("demo.png");
    summary::plot(&plot_path, state)?;
    println!("files:\n  server store   {}\n  devices        {}/device-N (key, outbox, local data, model)\n  history        {}\n  plot           {}", a.dir.join("server").display(), a.dir.display(), state_path.display(), plot_path.display());
    println!("next:\n  run the same command again to continue from version {} (or add --reset)\n  refine one device by hand: pupil refine --model {}/device-1/model.pupil --data {}/device-1 --labels {}/device-1/labels.idx --plot refine.png\n  compare with everything shared: pupil demo --dir {}-shared --personal none", state.versions.last().map_or(1, |v| v.version), a.dir.display(), a.dir.display(), a.dir.display(), a.dir.display());
    if a.json {
        crate::output::print_json(&serde_json::to_string_pretty(&state)?);
    }
    Ok(())
}

/// Every device pulls the current version; measure it on each device's data and globally.
fn measure(
    devices: &[Device],
    client: &Client,
    server_key: &[u8; 32],
    backend: &Backend,
    test: &Split,
    phases: &mut Phases,
) -> Result<VersionRow, Box<dyn std::error::Error>> {
    let mut version = 0;
    let (mut local, mut shared) = (Vec::new(), Vec::new());
    let mut global = 0.0;
    for (i, d) in devices.iter().enumerate() {
        let t = Instant::now();
        version = d.pull(client, server_key)?;
        phases.pull += t.elapsed().as_secs_f64();
        let t = Instant::now();
        d.adapt_head(backend, version)?;
        phases.refine += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let file = ModelFile::open(d.model_path())?;
        let m = Model::open(&file, backend, Train::All)?;
        shared.push(train::accuracy(&m.net, &m.params, &d.eval, 500)?);
        let own = Model::open(&d.running(&file)?, backend, Train::All)?;
        local.push(train::accuracy(&own.net, &own.params, &d.eval, 500)?);
        // Every device holds the same version: measure the original test set once.
        if i == 0 {
            global = train::accuracy(&m.net, &m.params, test, 1000)?;
        }
        phases.inference += t.elapsed().as_secs_f64();
    }
    Ok(VersionRow {
        version,
        global,
        local,
        shared,
        update_bytes: Vec::new(),
        refined: Vec::new(),
        gate: String::new(),
        phases: Phases::default(),
    })
}

fn print_row(row: &VersionRow, devices: &[Device]) {
    let local: Vec<String> = devices
        .iter()
        .zip(&row.local)
        .map(|(d, a)| format!("{} {:.1}%", d.name, a * 100.0))
        .collect();
    let mean = row.local.iter().sum::<f32>() / row.local.len().max(1) as f32;
    println!(
        "version {}: global {:.2}%, mean local {:.2}% ({})",
        row.version,
        row.global * 100.0,
        mean * 100.0,
        local.join(", ")
    );
}
