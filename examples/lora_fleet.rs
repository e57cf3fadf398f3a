//! A decoder fleet: devices personalise SmolLM2-135M (frozen Q4_1 base) with LoRA on their
//! own Shakespeare play and sync through a real `pupil serve` (in-process, loopback). Each
//! device's query and value adapters are shared: every round it pushes their signed f16
//! delta, the server merges the devices' adapters (product rule by default) into a shared
//! adapter published as a version, and the device pulls it. Its output-projection adapter
//! is personal: it trains beside the shared one and never leaves the device. At the end the
//! example compares, per device, held-out perplexity on its own play for the base, for
//! training alone (the same steps, no sync) and for shared + personal adapters, and
//! general-text perplexity (the Lee news corpus).
//!
//!     cargo run --release --example lora_fleet -- [devices] [rounds] [windows] [merge] [skip-alone] [lr] [replay]
//!
//! defaults: 8 devices, 3 rounds, 8 training windows of 64 tokens per device, `product`
//! (or `factors`, the naive rule), the alone baseline (`skip-alone` skips it: it does not
//! depend on the merge rule), learning rate 2e-3, 2 anchors replayed per step. Runs on the
//! CPU backend.

use std::time::{Duration, Instant};

use pupil::format::ModelFile;
use pupil::import::{import_file, Target as Keep};
use pupil::models::llama::{CausalLm, LlamaLora, Target};
use pupil::refine::text::{perplexity, personalise, self_anchors, windows, TextConfig};
use pupil::Backend;
use pupil_sync::client::{Client, DeltaEncoding, DeviceDir, UpdateOptions};
use pupil_sync::lora_merge::Merge;
use pupil_sync::server::{finite_gate, serve, Server, ServerConfig};

#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

const ADMIN: &str = "fleet-admin";
const WINDOW: usize = 64;
const RANK: usize = 8;
const ALPHA: f32 = 16.0;
/// Anchor windows sampled from the base (at most; two per training window in short runs),
/// two replayed beside every step's four local ones.
const ANCHORS: usize = 16;

/// The plays in `plays.txt`: (title, text), split where a title is followed by
/// "by William Shakespeare".
fn plays(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let starts: Vec<usize> = (1..lines.len())
        .filter(|&i| lines[i].trim() == "by William Shakespeare")
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| {
            let end = starts.get(k + 1).map_or(lines.len(), |&e| e - 1);
            let title = lines[..s].iter().rev().find(|l| !l.trim().is_empty());
            let title = title.map_or("", |l| l.trim()).to_string();
            (title, lines[s + 1..end].join("\n"))
        })
        .collect()
}

/// One device: its play's training windows and held-out tokens, and its sync folder.
struct Device {
    name: String,
    train: Vec<Vec<u32>>,
    held: Vec<u32>,
    dir: DeviceDir,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (n_devices, rounds, n_windows) = (arg(0, 8), arg(1, 3), arg(2, 8));
    let skip_alone = args.get(4).is_some_and(|a| a == "skip-alone");
    let lr: f32 = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(2e-3);
    let replay = arg(6, 2);
    let merge = match args.get(3).map_or("product", String::as_str) {
        "factors" => Merge::Factors,
        _ => Merge::Product,
    };
    let started = Instant::now();
    let backend = Backend::Cpu;
    let gguf = fetch::cached("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let base = ModelFile::from_bytes(
        import_file(&gguf, "smollm2", Keep::Keep)?
            .builder
            .to_bytes()?,
    )?;
    let mut lm = CausalLm::load(&base, &backend)?;
    let cfg = lm.config().clone();
    let general_text = std::fs::read_to_string(fetch::cached("text", "lee_background.cor")?)?;
    let general: Vec<u32> = lm.tokenizer().encode(&general_text)?[..8 * (WINDOW + 1)].to_vec();
    // Replay anchors sampled from the base itself after generic one-word prompts: they hold
    // the adapters near the base's general English while they learn a play.
    let t = Instant::now();
    let prompts = ["The", "In", "A", "It", "When", "This", "One", "We"]
        .iter()
        .map(|p| lm.tokenizer().encode(p))
        .collect::<pupil::Result<Vec<_>>>()?;
    let anchors = self_anchors(lm.model(), &prompts, ANCHORS.min(2 * n_windows), WINDOW, 5)?;
    println!(
        "sampled {} anchor windows from the base in {:.0} s",
        anchors.len(),
        t.elapsed().as_secs_f64()
    );
    let plays_text = std::fs::read_to_string(fetch::cached("plays", "plays.txt")?)?;

    let root = tempfile::tempdir()?;
    let mut devices = Vec::new();
    for (title, text) in plays(&plays_text).into_iter().take(n_devices) {
        let tokens = lm.tokenizer().encode(&text)?;
        // The middle of the play: training windows, then 4 held-out windows further on.
        let at = tokens.len() / 3;
        let span = n_windows * (WINDOW + 1);
        let train = windows(&tokens[at..at + span], WINDOW);
        let held = tokens[at + span + 2000..at + span + 2000 + 4 * (WINDOW + 1)].to_vec();
        let name = format!("device-{}", devices.len() + 1);
        let dir = DeviceDir::open(&root.path().join(&name))?;
        println!("{name}: {title} ({} tokens)", tokens.len());
        devices.push(Device {
            name,
            train,
            held,
            dir,
        });
    }

    // What ships: the shared adapters (query and value), A random, B zero.
    let shared_targets = [Target::Q, Target::V];
    let shipped = LlamaLora::new(&cfg, &shared_targets, RANK, ALPHA, &backend, 1)?;
    let shipped = ModelFile::from_bytes(shipped.to_builder(&base)?.to_bytes()?)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let config = ServerConfig {
        min_updates: u64::MAX,
        deadline: Duration::from_secs(24 * 3600),
        admin_token: Some(ADMIN.into()),
        lora_merge: merge,
        ..ServerConfig::default()
    };
    let server = Server::open(&root.path().join("server"), config, finite_gate())?;
    server.import_model(shipped.as_bytes().to_vec())?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    runtime.spawn(serve(server.clone(), listener, std::future::pending()));
    let client = Client::new(&url);
    let server_key = client.server_key()?;
    for d in &devices {
        client.register(&d.name, &d.dir.key()?, Some(ADMIN))?;
        d.dir.set_device_id(&d.name)?;
    }

    let text_cfg = TextConfig {
        window: WINDOW,
        batch: 4,
        lr,
        rank: RANK,
        alpha: ALPHA,
        targets: vec![Target::Q, Target::V, Target::O],
        replay,
        ..TextConfig::default()
    };
    let personal: Vec<String> = (0..cfg.layers)
        .map(|i| format!("blk.{i}.{}.", Target::O.name()))
        .collect();
    let personal: Vec<&str> = personal.iter().map(String::as_str).collect();
    let shared_path = |d: &Device| d.dir.path().join("shared.pupil");
    // A device's adapters: the shared ones it pulled, its personal ones beside them.
    let adapters = |d: &Device, seed: u64| -> Result<LlamaLora, Box<dyn std::error::Error>> {
        let lora = LlamaLora::new(&cfg, &text_cfg.targets, RANK, ALPHA, &backend, seed)?;
        lora.params().load(&ModelFile::open(shared_path(d))?)?;
        if d.dir.personal_path().is_file() {
            lora.params()
                .load(&ModelFile::open(d.dir.personal_path())?)?;
        }
        Ok(lora)
    };

    let mut plan_bytes = 0;
    for round in 1..=rounds {
        let t = Instant::now();
        for d in &devices {
            client.pull(&shared_path(d), &server_key)?;
            lm.model_mut()
                .set_lora(Some(adapters(d, 100 + round as u64)?));
            let plan = personalise(lm.model_mut(), &d.train, &anchors, &text_cfg, |_| {})?;
            plan_bytes = plan.planned_bytes;
            let values = lm
                .model()
                .lora()
                .ok_or("no adapters")?
                .params()
                .export_values()?;
            d.dir.keep_personal(&values, &personal)?;
            let options = UpdateOptions {
                device_id: &d.name,
                encoding: DeltaEncoding::F16,
                num_examples: (d.train.len() * WINDOW) as u64,
                metrics: &[],
                personal: &personal,
            };
            d.dir
                .queue_update(&ModelFile::open(shared_path(d))?, &values, &options)?;
            client.push(&d.dir.outbox()?)?;
        }
        let record = server.run_round()?.ok_or("no updates")?;
        println!(
            "round {round}: {} updates, {} ({:.0} s)",
            record.updates,
            record.gate,
            t.elapsed().as_secs_f64()
        );
    }

    // Measure: base, shared + personal, and training alone for the same steps.
    let (mut base_ppl, mut fleet_ppl, mut alone_ppl) = (0.0, 0.0, 0.0);
    let mut fleet_general = 0.0;
    lm.model_mut().set_lora(None);
    let general_base = perplexity(lm.model(), &general, WINDOW)?;
    for d in &devices {
        client.pull(&shared_path(d), &server_key)?;
        lm.model_mut().set_lora(None);
        let b = perplexity(lm.model(), &d.held, WINDOW)?;
        lm.model_mut().set_lora(Some(adapters(d, 0)?));
        let f = perplexity(lm.model(), &d.held, WINDOW)?;
        fleet_general += perplexity(lm.model(), &general, WINDOW)? / devices.len() as f64;
        // Alone: fresh adapters (the same shipped initialisation), the same rounds of
        // training on the same text, nothing shared (skipped with `skip-alone`: it does
        // not depend on the merge rule).
        let a = if skip_alone {
            f64::NAN
        } else {
            let alone = LlamaLora::new(&cfg, &text_cfg.targets, RANK, ALPHA, &backend, 7)?;
            alone.params().load(&shipped)?;
            lm.model_mut().set_lora(Some(alone));
            for _ in 0..rounds {
                personalise(lm.model_mut(), &d.train, &anchors, &text_cfg, |_| {})?;
            }
            perplexity(lm.model(), &d.held, WINDOW)?
        };
        println!(
            "{}: held-out perplexity base {b:.2}, alone {a:.2}, shared + personal {f:.2}",
            d.name
        );
        let n = devices.len() as f64;
        (base_ppl, alone_ppl, fleet_ppl) = (base_ppl + b / n, alone_ppl + a / n, fleet_ppl + f / n);
    }
    println!(
        "mean held-out perplexity: base {base_ppl:.2}, alone {alone_ppl:.2}, shared + personal {fleet_ppl:.2} ({merge:?} merge)"
    );
    println!(
        "general perplexity: base {general_base:.2}, shared + personal {fleet_general:.2} ({:+.1} %)",
        (fleet_general / general_base - 1.0) * 100.0
    );
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(String::new(), |kib| {
            format!(", process peak {:.0} MiB", kib / 1024.0)
        });
    println!(
        "training plan {:.0} MiB per device{peak}; {} devices, {rounds} rounds in {:.0} s on the CPU backend",
        plan_bytes as f64 / (1 << 20) as f64,
        devices.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
