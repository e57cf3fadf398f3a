//! `pupil flower`: this machine as a Flower SuperNode. It joins a SuperLink's Fleet API
//! with its own key and answers the ServerApp's messages by training the classifier in
//! `--model` on its shard of `--data` (see `pupil_flower::supernode` and
//! `pupil_flower::classifier`; `interop/flower/` holds a ServerApp to run against it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pupil::models::classifier::{ClassifierSpec, Model, Train};
use pupil::models::llama::Llama;
use pupil::models::tokenizer::TextTokenizer;
use pupil::refine::text::{split_tail, windows, TextConfig};
use pupil_flower::classifier::ClassifierApp;
use pupil_flower::lora::LoraApp;
use pupil_flower::supernode::{self, App, Event, SuperNodeConfig};
use pupil_flower::{FleetClient, NodeKey};

use crate::CliResult;

/// Arguments of `pupil flower`.
#[derive(clap::Args)]
pub struct Args {
    /// The SuperLink's Fleet API, `HOST:PORT` (plain HTTP, as `flower-superlink --insecure`
    /// serves it on its `--port`) or an `https://` URL.
    #[arg(long, required_unless_present = "print_public_key")]
    superlink: Option<String>,
    /// The SuperLink's CA certificate (PEM) when it serves TLS (`--ssl-ca-certfile`
    /// there); `HOST:PORT` is then reached over HTTPS.
    #[arg(long)]
    root_certificates: Option<PathBuf>,
    /// Print the node's public key (OpenSSH form, for `flwr supernode register` on a
    /// SuperLink run with `--enable-supernode-auth`), making the key if needed, and exit.
    #[arg(long)]
    print_public_key: bool,
    /// Seconds between the heartbeats the node promises (Flower takes 10 to 1800); a
    /// crashed node is taken offline after two missed intervals.
    #[arg(long, default_value_t = 30.0)]
    heartbeat_interval: f64,
    /// The classifier to federate (a .pupil file); the ServerApp's arrays are matched to its
    /// parameters by name and shape.
    #[arg(long, default_value = "models/mnist-student.pupil")]
    model: PathBuf,
    /// Local examples: mnist, fashion, digits, or a folder of
    /// `{train,test}-{images,labels}.idx` files.
    #[arg(long, default_value = "mnist")]
    data: String,
    /// This node's part of the data, `I/N`: training and test examples I, I+N, I+2N, ...
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// At most this many training examples (after sharding).
    #[arg(long, default_value_t = 2000)]
    examples: usize,
    /// At most this many held-out examples for `evaluate` (after sharding).
    #[arg(long, default_value_t = 1000)]
    eval_examples: usize,
    /// Federate LoRA adapters of the decoder in `--model` (a .pupil, GGUF or model folder;
    /// frozen base, A frozen so FedAvg of the factors is exact) trained on this text: the
    /// node takes windows I, I+N, ... of its first 90 %, and measures perplexity on the rest.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Tokens per training window (with `--text`).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// At most this many training windows (with `--text`).
    #[arg(long, default_value_t = 16)]
    windows: usize,
    /// Adapter rank (with `--text`); every node of a run takes the same rank and `--fresh`
    /// seed, so all share A.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Start from freshly initialised weights of the model file's architecture (this seed;
    /// every node given the same seed starts alike) instead of the file's weights.
    #[arg(long)]
    fresh: Option<u64>,
    /// Where the node's key (`node.key`) and unsent replies live.
    #[arg(long, default_value = "pupil-flower")]
    state: PathBuf,
    /// Learning rate when the ServerApp's config sends no `lr`.
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Local epochs when the config sends no `local-epochs`.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Stop after this many seconds without a message (once one came); 0 runs until
    /// stopped.
    #[arg(long, default_value_t = 0.0)]
    exit_after_idle: f64,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
}

/// Parses `I/N` with I < N.
fn shard(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--shard {text:?}: write I/N with 0 <= I < N, e.g. 2/4");
    let (i, n) = text.split_once('/').ok_or_else(bad)?;
    let (i, n) = (
        i.parse::<usize>().map_err(|_| bad())?,
        n.parse::<usize>().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// Runs the SuperNode.
pub fn run(a: Args) -> CliResult {
    std::fs::create_dir_all(&a.state).map_err(|e| {
        format!(
            "--state {}: {e}; choose a writable folder",
            a.state.display()
        )
    })?;
    let key = NodeKey::load_or_create(&a.state.join("node.key"))?;
    let Some(superlink) = a.superlink.as_deref().filter(|_| !a.print_public_key) else {
        println!("{}", key.public_key_openssh());
        return Ok(());
    };
    let (i, n) = shard(&a.shard)?;
    let backend = pupil::Backend::auto(a.adapter.as_deref())?;
    let mut app: Box<dyn App> = match &a.text {
        Some(text) => Box::new(lora_app(&a, text, (i, n), &backend)?),
        None => Box::new(classifier_app(&a, (i, n), &backend)?),
    };
    let client = Arc::new(match &a.root_certificates {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--root-certificates {}: {e}", path.display()))?;
            FleetClient::with_root_certificates(superlink, key, &pem)?
        }
        None => FleetClient::new(superlink, key),
    });
    match client.register_node() {
        Ok(id) => eprintln!("pupil flower: registered as node {id}"),
        // Already registered (a restart), or the SuperLink admits listed keys only.
        Err(e) => eprintln!("pupil flower: not registering ({e}); activating the known key"),
    }
    let mut cfg = SuperNodeConfig::new(&a.state);
    cfg.heartbeat_interval = a.heartbeat_interval;
    if a.exit_after_idle > 0.0 {
        cfg.exit_after_idle = Some(Duration::from_secs_f64(a.exit_after_idle));
    }
    let answered = supernode::run(client, app.as_mut(), &cfg, &mut report)?;
    eprintln!("pupil flower: answered {answered} messages; node offline");
    Ok(())
}

/// The classifier in `--model` over shard `(i, n)` of `--data`.
fn classifier_app(
    a: &Args,
    (i, n): (usize, usize),
    backend: &pupil::Backend,
) -> Result<ClassifierApp, Box<dyn std::error::Error>> {
    let file = pupil::format::ModelFile::open(&a.model)
        .map_err(|e| format!("--model {}: {e}", a.model.display()))?;
    let model = match a.fresh {
        Some(seed) => {
            let spec = ClassifierSpec::from_file(&file)?;
            Model::new(file.info().model_id.as_str(), &spec, backend, seed)?
        }
        None => Model::open(&file, backend, Train::All)?,
    };
    let data = crate::fetch::dataset(&a.data)?;
    let part =
        |count: usize, most: usize| -> Vec<usize> { (i..count).step_by(n).take(most).collect() };
    let train = data.train.subset(&part(data.train.n, a.examples));
    let test = data.test.subset(&part(data.test.n, a.eval_examples));
    let mut app = ClassifierApp::new(model, train, test, i as u64);
    (app.lr, app.epochs) = (a.lr, a.epochs);
    Ok(app)
}

/// LoRA adapters of the decoder in `--model` over shard `(i, n)` of `text`'s windows.
fn lora_app(
    a: &Args,
    text: &Path,
    (i, n): (usize, usize),
    backend: &pupil::Backend,
) -> Result<LoraApp, Box<dyn std::error::Error>> {
    let file = pupil::import::load_model(&a.model)?;
    let lm = Llama::load(&file, backend)?;
    let words =
        std::fs::read_to_string(text).map_err(|e| format!("--text {}: {e}", text.display()))?;
    let tokens = TextTokenizer::from_model(&file, None)?.encode(&words)?;
    let (train, held) = split_tail(&tokens, 0.1);
    let train: Vec<Vec<u32>> = windows(train, a.window)
        .into_iter()
        .skip(i)
        .step_by(n)
        .take(a.windows)
        .collect();
    let cfg = TextConfig {
        window: a.window,
        lr: 1e-3,
        rank: a.rank,
        alpha: 2.0 * a.rank as f32,
        seed: a.fresh.unwrap_or(0),
        ..TextConfig::default()
    };
    let held = held[..held.len().min(8 * (a.window + 1))].to_vec();
    Ok(LoraApp::new(lm, train, held, cfg)?)
}

/// One line on stderr per event.
fn report(e: Event) {
    match e {
        Event::Online(id) => eprintln!("pupil flower: online as node {id}"),
        Event::Joined { run, app } => eprintln!("pupil flower: joined run {run} of {app}"),
        Event::Resent(n) => eprintln!("pupil flower: sent {n} replies kept from before a restart"),
        Event::Received { kind, run, group } if group.is_empty() => {
            eprintln!("pupil flower: run {run}: {kind}")
        }
        Event::Received { kind, run, group } => {
            eprintln!("pupil flower: run {run} group {group}: {kind}")
        }
        Event::Replied {
            kind,
            seconds,
            error: None,
        } => {
            eprintln!("pupil flower: replied to {kind} ({seconds:.2} s)")
        }
        Event::Replied {
            kind,
            error: Some(e),
            ..
        } => {
            eprintln!("pupil flower: refused {kind}: {e}")
        }
        Event::Retrying { what, wait } => {
            eprintln!(
                "pupil flower: {what} failed; retrying in {:.1} s",
                wait.as_secs_f64()
            )
        }
    }
}
