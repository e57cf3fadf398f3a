//! `pupil demo --task text`: a decoder fleet. Devices personalise SmolLM2-135M (frozen Q4_1
//! base) with LoRA on their own Shakespeare play and sync through a real `pupil serve`
//! (in-process, loopback). Each device's query and value adapters are shared: every round it
//! pushes their signed f16 delta, the server merges the devices' adapters (product rule by
//! default, `--lora-merge factors` for the naive one) into a shared adapter published as a
//! version, and the device pulls it. Its output-projection adapter is personal: it trains
//! beside the shared one and never leaves the device; the device runs it blended in at the
//! largest scale that keeps its perplexity on the base's own samples within `--max-drift`
//! (`pupil::refine::blend`). Per round the demo measures held-out
//! perplexity on each device's own play for shared + personal and for training alone (the
//! same steps, nothing shared), and general-text perplexity (the Lee news corpus).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pupil::format::ModelFile;
use pupil::import::{import_file, Target as Keep};
use pupil::models::llama::{CausalLm, LlamaLora, Target};
use pupil::refine::blend::{blend_personal, Blend};
use pupil::refine::text::{perplexity, personalise, self_anchors, windows, TextConfig};
use pupil::Backend;
use pupil_sync::client::{Client, DeltaEncoding, DeviceDir, UpdateOptions};
use pupil_sync::lora_merge::Merge;
use pupil_sync::server::{finite_gate, serve, Server, ServerConfig};

use super::Args;
use crate::plot::{draw, Panel, Series};
use crate::CliResult;

const ADMIN: &str = "pupil-demo-admin";
/// Tokens per training and evaluation window.
const WINDOW: usize = 64;
const RANK: usize = 8;
const ALPHA: f32 = 16.0;
/// Anchor windows sampled from the base (at most; two per training window in short runs).
const ANCHORS: usize = 16;
/// Held-out windows per device, taken 2,000 tokens after its training text.
const HELD_WINDOWS: usize = 4;
/// General-text windows (the Lee news corpus).
const GENERAL_WINDOWS: usize = 8;
/// Probe windows sampled from the base, apart from the anchors: the drift bound of the
/// personal adapter's blend is measured on them.
const PROBE_WINDOWS: usize = 4;
/// The personal adapter's scales a device tries, largest first.
const BLEND_SCALES: [f32; 8] = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0];
/// The projections that are shared; the output projection stays on the device.
const SHARED: [Target; 2] = [Target::Q, Target::V];
const TRAINED: [Target; 3] = [Target::Q, Target::V, Target::O];

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

/// One device: its play, training windows, held-out tokens and sync folder.
struct Device {
    name: String,
    title: String,
    train: Vec<Vec<u32>>,
    held: Vec<u32>,
    dir: DeviceDir,
}

impl Device {
    /// Where the device keeps the shared version it pulled.
    fn shared_path(&self) -> std::path::PathBuf {
        self.dir.path().join("shared.pupil")
    }
}

/// Mean perplexities after each round (index 0: before training).
#[derive(Default)]
struct Curves {
    fleet: Vec<f64>,
    alone: Vec<f64>,
    general: Vec<f64>,
}

/// What the fleet works with: the model, its settings, the anchors and the server.
struct TextFleet {
    lm: CausalLm,
    backend: Backend,
    shipped: ModelFile,
    train: TextConfig,
    anchors: Vec<Vec<u32>>,
    personal: Vec<String>,
    general: Vec<u32>,
    /// The base's own samples, held apart from the anchors.
    probe: Vec<Vec<u32>>,
    /// Largest rise of the probe perplexity a personal blend may cause.
    max_drift: f64,
}

impl TextFleet {
    /// A device's adapters: the shared ones it pulled and its personal ones beside them.
    fn adapters(&self, d: &Device, seed: u64) -> Result<LlamaLora, Box<dyn std::error::Error>> {
        let cfg = self.lm.config();
        let lora = LlamaLora::new(cfg, &TRAINED, RANK, ALPHA, &self.backend, seed)?;
        lora.params().load(&ModelFile::open(d.shared_path())?)?;
        if d.dir.personal_path().is_file() {
            lora.params()
                .load(&ModelFile::open(d.dir.personal_path())?)?;
        }
        Ok(lora)
    }

    /// The device pulls, trains one epoch on its play, keeps its personal adapter and
    /// queues and pushes the shared ones' delta.
    fn refine_and_push(
        &mut self,
        d: &Device,
        client: &Client,
        server_key: &[u8; 32],
        round: u64,
    ) -> Result<u64, Box<dyn std::error::Error>> {
        client.pull(&d.shared_path(), server_key)?;
        let lora = self.adapters(d, 100 + round)?;
        self.lm.model_mut().set_lora(Some(lora));
        let plan = personalise(
            self.lm.model_mut(),
            &d.train,
            &self.anchors,
            &self.train,
            |_| {},
        )?;
        let values = self
            .lm
            .model()
            .lora()
            .ok_or("no adapters")?
            .params()
            .export_values()?;
        let personal: Vec<&str> = self.personal.iter().map(String::as_str).collect();
        d.dir.keep_personal(&values, &personal)?;
        let options = UpdateOptions {
            device_id: &d.name,
            encoding: DeltaEncoding::F16,
            num_examples: (d.train.len() * WINDOW) as u64,
            metrics: &[],
            personal: &personal,
        };
        d.dir
            .queue_update(&ModelFile::open(d.shared_path())?, &values, &options)?;
        d.dir.push(client)?;
        Ok(plan.planned_bytes)
    }

    /// The model `d` runs: the shared adapters with its personal ones blended in as far as
    /// the drift bound allows; returns the blend.
    fn device_model(&mut self, d: &Device) -> Result<Blend, Box<dyn std::error::Error>> {
        let lora = self.adapters(d, 0)?;
        self.lm.model_mut().set_lora(Some(lora));
        let personal = |name: &str| self.personal.iter().any(|p| name.starts_with(p.as_str()));
        Ok(blend_personal(
            self.lm.model(),
            personal,
            &self.probe,
            WINDOW,
            self.max_drift,
            &BLEND_SCALES,
        )?)
    }

    /// Held-out perplexity of the model `d` runs on its play, general perplexity, and the
    /// scale of its personal adapter.
    fn measure_device(
        &mut self,
        d: &Device,
    ) -> Result<(f64, f64, f32), Box<dyn std::error::Error>> {
        let blend = self.device_model(d)?;
        let own = perplexity(self.lm.model(), &d.held, WINDOW)?;
        let general = perplexity(self.lm.model(), &self.general, WINDOW)?;
        Ok((own, general, blend.scale))
    }
}

/// The in-process server (its store in `dir`, holding `shipped` as version 1, merging
/// adapters by `merge`) with the devices registered, and a client for it.
struct Upstream {
    server: Arc<Server>,
    client: Client,
    server_key: [u8; 32],
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    fn start(
        dir: &Path,
        merge: Merge,
        shipped: &ModelFile,
        devices: &[Device],
    ) -> Result<Upstream, Box<dyn std::error::Error>> {
        let runtime = tokio::runtime::Runtime::new()?;
        let config = ServerConfig {
            min_updates: u64::MAX,
            deadline: Duration::from_secs(24 * 3600),
            admin_token: Some(ADMIN.into()),
            lora_merge: merge,
            ..ServerConfig::default()
        };
        let server = Server::open(&dir.join("server"), config, finite_gate())?;
        server.import_model(shipped.as_bytes().to_vec())?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        runtime.spawn(serve(server.clone(), listener, std::future::pending()));
        println!("server: {url} (store {})", dir.join("server").display());
        let client = Client::new(&url);
        let server_key = client.server_key()?;
        for d in devices {
            client.register(&d.name, &d.dir.key()?, Some(ADMIN))?;
            d.dir.set_device_id(&d.name)?;
        }
        Ok(Upstream {
            server,
            client,
            server_key,
            _runtime: runtime,
        })
    }
}

/// The base model, the general text, the devices with their plays, the self-sampled
/// anchors and what ships (the shared adapters, A random, B zero).
fn load(
    a: &Args,
    backend: Backend,
    dir: &Path,
) -> Result<(TextFleet, Vec<Device>), Box<dyn std::error::Error>> {
    let gguf = crate::fetch::cached("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let imported = import_file(&gguf, "smollm2", Keep::Keep)?;
    let base = ModelFile::from_bytes(imported.builder.to_bytes()?)?;
    let lm = CausalLm::load(&base, &backend)?;
    let general_text =
        std::fs::read_to_string(crate::fetch::cached("text", "lee_background.cor")?)?;
    let mut general = lm.tokenizer().encode(&general_text)?;
    general.truncate(GENERAL_WINDOWS * (WINDOW + 1));
    let plays_text = std::fs::read_to_string(crate::fetch::cached("plays", "plays.txt")?)?;
    let devices = open_devices(dir, &lm, &plays_text, a.devices, a.windows)?;
    let t = Instant::now();
    let prompts = ["The", "In", "A", "It", "When", "This", "One", "We"]
        .iter()
        .map(|p| lm.tokenizer().encode(p))
        .collect::<pupil::Result<Vec<_>>>()?;
    let anchors = self_anchors(lm.model(), &prompts, ANCHORS.min(2 * a.windows), WINDOW, 5)?;
    let probe = self_anchors(lm.model(), &prompts, PROBE_WINDOWS, WINDOW, 6)?;
    println!(
        "sampled {} anchor and {} probe windows from the base in {:.0} s (anchors hold general English in training; the probe bounds the personal blend)",
        anchors.len(),
        probe.len(),
        t.elapsed().as_secs_f64()
    );
    let cfg = lm.config().clone();
    let shipped = LlamaLora::new(&cfg, &SHARED, RANK, ALPHA, &backend, 1)?;
    let shipped = ModelFile::from_bytes(shipped.to_builder(&base)?.to_bytes()?)?;
    let fleet = TextFleet {
        lm,
        backend,
        shipped,
        train: TextConfig {
            window: WINDOW,
            batch: 4,
            lr: a.lr,
            rank: RANK,
            alpha: ALPHA,
            targets: TRAINED.to_vec(),
            replay: a.replay,
            ..TextConfig::default()
        },
        anchors,
        personal: (0..cfg.layers)
            .map(|i| format!("blk.{i}.{}.", Target::O.name()))
            .collect(),
        general,
        probe,
        max_drift: a.max_drift,
    };
    Ok((fleet, devices))
}

/// What the demo measured.
struct Outcome {
    /// Held-out perplexity of the base per device, and its general perplexity.
    base: Vec<f64>,
    general_base: f64,
    /// After the last round, per device: held-out and general perplexity of shared +
    /// personal.
    fleet: Vec<f64>,
    general: Vec<f64>,
    /// Each device's personal scale after the last round.
    scales: Vec<f64>,
    /// General perplexity of the published shared adapter alone.
    general_shared: f64,
    /// Held-out perplexity per device after training alone (empty with `--skip-alone`).
    alone: Vec<f64>,
    curves: Curves,
    planned_bytes: u64,
}

/// The rounds: every device refines and pushes, the server merges and publishes, every
/// device pulls and is measured; then the baselines.
fn rounds(
    a: &Args,
    fleet: &mut TextFleet,
    devices: &[Device],
    up: &Upstream,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    fleet.lm.model_mut().set_lora(None);
    let base: Vec<f64> = devices
        .iter()
        .map(|d| perplexity(fleet.lm.model(), &d.held, WINDOW))
        .collect::<pupil::Result<_>>()?;
    let general_base = perplexity(fleet.lm.model(), &fleet.general, WINDOW)?;
    let mut curves = Curves {
        fleet: vec![mean(&base)],
        general: vec![general_base],
        ..Curves::default()
    };
    let (mut planned_bytes, mut own, mut general, mut scales) =
        (0, Vec::new(), Vec::new(), Vec::new());
    for round in 1..=a.rounds as u64 {
        let t = Instant::now();
        for d in devices {
            planned_bytes = fleet.refine_and_push(d, &up.client, &up.server_key, round)?;
        }
        let record = up.server.run_round()?.ok_or("the server had no updates")?;
        (own, general, scales) = (Vec::new(), Vec::new(), Vec::new());
        for d in devices {
            up.client.pull(&d.shared_path(), &up.server_key)?;
            let (o, g, s) = fleet.measure_device(d)?;
            own.push(o);
            general.push(g);
            scales.push(f64::from(s));
        }
        println!(
            "round {round}: {} updates, {}; mean held-out perplexity {:.2}, general {:.2}, personal scale {:.2} ({:.0} s)",
            record.updates,
            record.gate,
            mean(&own),
            mean(&general),
            mean(&scales),
            t.elapsed().as_secs_f64()
        );
        curves.fleet.push(mean(&own));
        curves.general.push(mean(&general));
    }
    let general_shared = published_general(fleet, &devices[0])?;
    let alone = if a.skip_alone {
        Vec::new()
    } else {
        train_alone(fleet, devices, a.rounds, &mut curves)?
    };
    Ok(Outcome {
        base,
        general_base,
        fleet: own,
        general,
        scales,
        general_shared,
        alone,
        curves,
        planned_bytes,
    })
}

/// Run the text demo in `a.dir`/text (started fresh every time).
pub fn run(a: &Args, backend: Backend) -> CliResult {
    let dir = a.dir.join("text");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let merge = match a.lora_merge.as_str() {
        "product" => Merge::Product,
        "factors" => Merge::Factors,
        other => return Err(format!("--lora-merge {other:?}: use product or factors").into()),
    };
    let started = Instant::now();
    println!(
        "pupil demo --task text: {} devices, {} rounds, {} windows of {WINDOW} tokens each, {merge:?} merge, data in {}",
        a.devices,
        a.rounds,
        a.windows,
        dir.display()
    );
    println!("backend: {}", backend.describe());
    let (mut fleet, devices) = load(a, backend, &dir)?;
    let up = Upstream::start(&dir, merge, &fleet.shipped, &devices)?;
    let outcome = rounds(a, &mut fleet, &devices, &up)?;
    report(a, &dir, merge, &devices, &outcome)?;
    println!(
        "{} devices, {} rounds in {:.0} s",
        devices.len(),
        a.rounds,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The table, the general-text line, the plot, the JSON (with `--json`), where the files
/// are and what to try next.
fn report(a: &Args, dir: &Path, merge: Merge, devices: &[Device], o: &Outcome) -> CliResult {
    print_table(devices, &o.base, &o.alone, &o.fleet);
    println!(
        "general perplexity: base {:.2}, shared version {:.2} ({:+.1} %), shared + personal {:.2} ({:+.1} %; personal adapters blended at mean scale {:.2}, drift bound {:.0} % on the base's samples)",
        o.general_base,
        o.general_shared,
        change(o.general_base, o.general_shared),
        mean(&o.general),
        change(o.general_base, mean(&o.general)),
        mean(&o.scales),
        a.max_drift * 100.0
    );
    let plot_path = dir.join("demo-text.png");
    plot(&plot_path, &o.curves)?;
    println!(
        "training plan {:.0} MiB per device{}",
        o.planned_bytes as f64 / (1 << 20) as f64,
        peak_resident().map_or(String::new(), |m| format!(", process peak {m:.0} MiB")),
    );
    if a.json {
        let per_device: Vec<serde_json::Value> = devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                serde_json::json!({ "device": d.name, "play": d.title, "base": o.base[i],
                    "alone": o.alone.get(i), "shared_personal": o.fleet[i], "general": o.general[i],
                    "personal_scale": o.scales[i] })
            })
            .collect();
        let alone = (!o.alone.is_empty()).then(|| mean(&o.alone));
        let report = serde_json::json!({
            "merge": format!("{merge:?}"), "devices": per_device,
            "mean": { "base": mean(&o.base), "alone": alone, "shared_personal": mean(&o.fleet) },
            "general": { "base": o.general_base, "shared_version": o.general_shared, "shared_personal": mean(&o.general) },
            "curves": { "shared_personal": o.curves.fleet, "alone": o.curves.alone, "general": o.curves.general },
            "planned_bytes": o.planned_bytes,
        });
        crate::output::print_json(&serde_json::to_string_pretty(&report)?);
    }
    println!("files:\n  server store   {}\n  devices        {}/device-N (key, outbox, shared.pupil, personal adapter)\n  plot           {}", dir.join("server").display(), dir.display(), plot_path.display());
    println!("next:\n  compare the naive merge: pupil demo --task text --lora-merge factors --skip-alone\n  the issue's fleet: pupil demo --task text --devices 8 --windows 16\n  a personalised model by hand: pupil refine-text --model smollm2.pupil --data play.txt --general news.txt --out lora.pupil, then pupil generate --model smollm2.pupil --lora lora.pupil");
    Ok(())
}

/// The fleet's devices: one play each, `n_windows` training windows from a third of the
/// way in and held-out windows 2,000 tokens further on.
fn open_devices(
    dir: &Path,
    lm: &CausalLm,
    plays_text: &str,
    n: usize,
    n_windows: usize,
) -> Result<Vec<Device>, Box<dyn std::error::Error>> {
    let mut devices = Vec::new();
    for (title, text) in plays(plays_text).into_iter().take(n) {
        let tokens = lm.tokenizer().encode(&text)?;
        let at = tokens.len() / 3;
        let span = n_windows * (WINDOW + 1);
        let held_at = at + span + 2000;
        let held_end = held_at + HELD_WINDOWS * (WINDOW + 1);
        if held_end > tokens.len() {
            return Err(format!(
                "{title} has {} tokens, too few for {n_windows} windows: lower --windows",
                tokens.len()
            )
            .into());
        }
        let name = format!("device-{}", devices.len() + 1);
        println!("{name}: {title} ({} tokens)", tokens.len());
        devices.push(Device {
            dir: DeviceDir::open(&dir.join(&name))?,
            name,
            title,
            train: windows(&tokens[at..at + span], WINDOW),
            held: tokens[held_at..held_end].to_vec(),
        });
    }
    if devices.len() < n {
        return Err(format!("plays.txt holds only {} plays", devices.len()).into());
    }
    Ok(devices)
}

/// General perplexity of the published shared adapter alone: what a new device starts from.
fn published_general(fleet: &mut TextFleet, d: &Device) -> Result<f64, Box<dyn std::error::Error>> {
    let cfg = fleet.lm.config();
    let published = LlamaLora::new(cfg, &SHARED, RANK, ALPHA, &fleet.backend, 0)?;
    published
        .params()
        .load(&ModelFile::open(d.shared_path())?)?;
    fleet.lm.model_mut().set_lora(Some(published));
    Ok(perplexity(fleet.lm.model(), &fleet.general, WINDOW)?)
}

/// Training alone: per device, fresh adapters (the shipped initialisation), the same epochs
/// on the same text, nothing shared; returns each device's final held-out perplexity and
/// adds the mean after each epoch to `curves.alone`.
fn train_alone(
    fleet: &mut TextFleet,
    devices: &[Device],
    rounds: usize,
    curves: &mut Curves,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let mut per_epoch = vec![vec![0.0; devices.len()]; rounds];
    for (i, d) in devices.iter().enumerate() {
        let cfg = fleet.lm.config();
        let alone = LlamaLora::new(cfg, &TRAINED, RANK, ALPHA, &fleet.backend, 7)?;
        alone.params().load(&fleet.shipped)?;
        fleet.lm.model_mut().set_lora(Some(alone));
        for epoch in per_epoch.iter_mut() {
            personalise(
                fleet.lm.model_mut(),
                &d.train,
                &fleet.anchors,
                &fleet.train,
                |_| {},
            )?;
            epoch[i] = perplexity(fleet.lm.model(), &d.held, WINDOW)?;
        }
    }
    curves.alone = std::iter::once(curves.fleet[0])
        .chain(per_epoch.iter().map(|e| mean(e)))
        .collect();
    Ok(per_epoch.last().cloned().unwrap_or_default())
}

/// Per device: held-out perplexity of the base, training alone and shared + personal.
fn print_table(devices: &[Device], base: &[f64], alone: &[f64], fleet: &[f64]) {
    println!(
        "\n{:<10} {:<32} {:>8} {:>8} {:>18}",
        "device", "play", "base", "alone", "shared + personal"
    );
    let cell = |v: Option<&f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for (i, d) in devices.iter().enumerate() {
        println!(
            "{:<10} {:<32} {:>8.2} {:>8} {:>18}",
            d.name,
            d.title,
            base[i],
            cell(alone.get(i)),
            cell(fleet.get(i))
        );
    }
    let alone_mean = (!alone.is_empty()).then(|| mean(alone));
    println!(
        "{:<10} {:<32} {:>8.2} {:>8} {:>18.2}\n",
        "mean",
        "",
        mean(base),
        cell(alone_mean.as_ref()),
        mean(fleet)
    );
}

/// Mean held-out perplexity per round for the fleet and for training alone, and general
/// perplexity, as a PNG.
fn plot(path: &Path, curves: &Curves) -> CliResult {
    let points = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect()
    };
    let mut series = vec![Series {
        name: "shared + personal (held-out, own play)".into(),
        points: points(&curves.fleet),
    }];
    if !curves.alone.is_empty() {
        series.push(Series {
            name: "training alone (held-out, own play)".into(),
            points: points(&curves.alone),
        });
    }
    draw(
        path,
        &[
            Panel {
                title: "mean held-out perplexity on each device's own play".into(),
                x_label: "round".into(),
                y_label: "perplexity".into(),
                series,
            },
            Panel {
                title: "general-text perplexity (news), shared + personal".into(),
                x_label: "round".into(),
                y_label: "perplexity".into(),
                series: vec![Series {
                    name: "mean over devices".into(),
                    points: points(&curves.general),
                }],
            },
        ],
    )?;
    Ok(())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn change(before: f64, after: f64) -> f64 {
    (after / before - 1.0) * 100.0
}

/// The process's peak resident memory in MiB, where /proc tells it.
fn peak_resident() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_split_at_their_bylines() {
        let text = "Hamlet\n\nby William Shakespeare\nACT I\nline\n\nMacbeth\nby William Shakespeare\nACT I\nthunder";
        let p = plays(text);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, "Hamlet");
        assert_eq!(p[0].1, "ACT I\nline\n");
        assert_eq!(p[1], ("Macbeth".to_string(), "ACT I\nthunder".to_string()));
    }
}
