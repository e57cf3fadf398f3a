//! `pupil simulate`: federated learning on MNIST with N simulated devices against a real
//! server on loopback (signed updates over HTTP, the server's rounds with FedAvg, a robust
//! rule or DP-FedAvg), after McMahan et al. 2017: each round a fraction C of the devices
//! pull the current version, train E local epochs with batch B and SGD, and push their
//! deltas. With `--dp-noise`, devices take part by Poisson sampling and the round is
//! differentially private at the ε printed (see `pupil_sync::dp`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use pupil::data::mnist::{self, Mnist};
use pupil::data::Split;
use pupil::format::{DType, ModelFile};
use pupil::models::classifier::{Arch, ClassifierSpec, Model, Train};
use pupil::{train, Backend};
use pupil_sync::aggregate::{clip_norm, Rule as AggRule};
use pupil_sync::client::{Client, DeltaEncoding, NamedValues, Outbox, UpdateOptions};
use pupil_sync::dp::{GaussianParams, RdpAccountant};
use pupil_sync::server::{finite_gate, serve, Server, ServerConfig};
use pupil_sync::KeyPair;
use pupil_wire::Metric;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::plot::{draw, Panel, Series};
use crate::CliResult;

/// Arguments of `pupil simulate`.
#[derive(clap::Args)]
#[command(
    after_help = "McMahan et al. 2017's 2NN setting: pupil simulate --devices 100 --fraction 0.1 \
--local-epochs 1 --batch 10 --rounds 200 --target 0.97 [--non-iid]\n\
DP-FedAvg, 94 % at ε = 7.9 (δ = 1e-5): pupil simulate --devices 1000 --fraction 0.1 \
--local-epochs 5 --lr 0.1 --rounds 100 --dp-noise 1.0 --dp-clip 1.0"
)]
pub struct Args {
    /// Simulated devices (MNIST's 60,000 training images split among them).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Fraction of devices taking part in each round (C).
    #[arg(long, default_value_t = 0.1)]
    fraction: f32,
    /// Local epochs per round (E).
    #[arg(long, default_value_t = 1)]
    local_epochs: usize,
    /// Local batch size (B).
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Most rounds.
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Stop once the global test accuracy reaches this.
    #[arg(long)]
    target: Option<f32>,
    /// Pathological non-IID split: sorted by label, 2 shards of 300 per device.
    #[arg(long)]
    non_iid: bool,
    /// Local SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Aggregation: fedavg, trimmed (clip + 20% trimmed mean) or median (clip + median).
    #[arg(long, default_value = "fedavg")]
    rule: String,
    /// Clip norm of the robust rules.
    #[arg(long, default_value_t = 5.0)]
    clip_norm: f32,
    /// Fraction of devices that attack (they send their deltas sign-flipped and scaled).
    #[arg(long, default_value_t = 0.0)]
    attackers: f32,
    /// Attackers multiply their delta by this (negative flips the sign).
    #[arg(long, default_value_t = -10.0, allow_hyphen_values = true)]
    attack_scale: f32,
    /// PNG of test accuracy per round.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print the per-round figures as JSON.
    #[arg(long)]
    json: bool,
    /// Seed of the split, the selection and the initial weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Adapter (name, backend or cpu) the devices train on.
    #[arg(long)]
    adapter: Option<String>,
    /// Differential privacy (DP-FedAvg): the noise multiplier z. Devices take part with
    /// probability C each round (Poisson sampling), clip their delta to --dp-clip, and
    /// the server clips again, adds Gaussian noise of standard deviation z × clip to the
    /// sum and divides by the expected count; ε is printed per round.
    #[arg(long, requires = "dp_clip")]
    dp_noise: Option<f32>,
    /// Differential privacy: the clip norm of one device's delta (with --dp-noise).
    #[arg(long, requires = "dp_noise")]
    dp_clip: Option<f32>,
    /// Differential privacy: the δ at which ε is reported.
    #[arg(long, default_value_t = 1e-5)]
    dp_delta: f64,
}

/// The differential-privacy run: its mechanism and the privacy spent so far.
struct Privacy {
    params: GaussianParams,
    accountant: RdpAccountant,
    q: f64,
    delta: f64,
}

impl Privacy {
    /// The mechanism of `--dp-noise`/`--dp-clip`, if given, with nothing spent yet.
    fn of(a: &Args) -> Result<Option<Privacy>, Box<dyn std::error::Error>> {
        let (Some(noise_multiplier), Some(clip_norm)) = (a.dp_noise, a.dp_clip) else {
            return Ok(None);
        };
        let params = GaussianParams {
            clip_norm,
            noise_multiplier,
            expected_updates: f64::from(a.fraction) * a.devices as f64,
        };
        params.check()?;
        let privacy = Privacy {
            params,
            accountant: RdpAccountant::default(),
            q: f64::from(a.fraction),
            delta: a.dp_delta,
        };
        privacy.accountant.epsilon(a.dp_delta)?;
        Ok(Some(privacy))
    }

    /// Accounts one more round; returns ε so far.
    fn spend_round(&mut self) -> Result<f64, Box<dyn std::error::Error>> {
        let noise = f64::from(self.params.noise_multiplier);
        self.accountant.compose_sampled_gaussian(self.q, noise, 1)?;
        Ok(self.accountant.epsilon(self.delta)?.0)
    }
}

#[derive(Serialize)]
struct RoundRow {
    round: usize,
    accuracy: f32,
    seconds: f64,
    /// ε at --dp-delta after this round (with --dp-noise).
    #[serde(skip_serializing_if = "Option::is_none")]
    epsilon: Option<f64>,
}

/// Each device's example indices into the training split.
fn partition(train: &Split, devices: usize, non_iid: bool, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..train.n).collect();
    order.shuffle(&mut rng);
    if !non_iid {
        let per = train.n / devices;
        return (0..devices)
            .map(|d| order[d * per..(d + 1) * per].to_vec())
            .collect();
    }
    order.sort_by_key(|&i| train.labels[i]);
    let shards = devices * 2;
    let size = train.n / shards;
    let mut ids: Vec<usize> = (0..shards).collect();
    ids.shuffle(&mut rng);
    (0..devices)
        .map(|d| {
            ids[2 * d..2 * d + 2]
                .iter()
                .flat_map(|&s| order[s * size..(s + 1) * size].iter().copied())
                .collect()
        })
        .collect()
}

/// Run the simulation.
pub fn run(a: Args) -> CliResult {
    if a.devices == 0 || !(0.0..=1.0).contains(&a.fraction) {
        return Err("--devices must be positive and --fraction in [0, 1]".into());
    }
    let mut privacy = Privacy::of(&a)?;
    let rule = match &privacy {
        Some(p) => AggRule::DpFedAvg(p.params),
        None => AggRule::from_name(&a.rule, a.clip_norm)
            .ok_or_else(|| format!("--rule {:?}: use fedavg, trimmed or median", a.rule))?,
    };
    crate::output::json_mode(a.json);
    if let Some(path) = &a.plot {
        crate::output::check_writable("--plot", path)?;
    }
    let dir = tempfile::tempdir()?;
    let mut sim = Simulation::start(&a, dir.path(), rule, privacy.as_ref().map(|p| p.params))?;
    println!(
        "simulate: {} devices ({}), C={} ({} per round), E={}, B={}, lr={}, rule {}, {} attackers; devices train on {}",
        a.devices,
        if a.non_iid { "non-IID, 2 label shards each" } else { "IID" },
        a.fraction,
        sim.per_round,
        a.local_epochs,
        a.batch,
        a.lr,
        privacy.as_ref().map_or(a.rule.as_str(), |_| "dp-fedavg"),
        sim.attackers,
        sim.backend.describe()
    );
    let mut rows = Vec::new();
    let bar = ProgressBar::new(a.rounds as u64);
    bar.set_style(
        ProgressStyle::with_template("round {pos}/{len} [{bar:30}] {msg} eta {eta}")?
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut reached = None;
    for round in 1..=a.rounds {
        let accuracy = sim.round(round)?;
        let epsilon = privacy.as_mut().map(Privacy::spend_round).transpose()?;
        let spent = epsilon.map_or(String::new(), |e| {
            format!("  ε = {e:.2} at δ = {:e}", a.dp_delta)
        });
        rows.push(RoundRow {
            round,
            accuracy,
            seconds: start.elapsed().as_secs_f64(),
            epsilon,
        });
        bar.set_position(round as u64);
        bar.set_message(format!("accuracy {:.2}%", accuracy * 100.0));
        bar.suspend(|| {
            println!(
                "round {round:>4}  test accuracy {:.2}%{spent}",
                accuracy * 100.0
            )
        });
        if a.target.is_some_and(|t| accuracy >= t) {
            reached = Some(round);
            break;
        }
    }
    bar.finish_and_clear();
    match (a.target, reached) {
        (Some(t), Some(r)) => println!(
            "reached {:.1}% in {r} rounds ({:.0} s)",
            t * 100.0,
            start.elapsed().as_secs_f64()
        ),
        (Some(t), None) => println!("did not reach {:.1}% in {} rounds", t * 100.0, a.rounds),
        _ => {}
    }
    if let Some(path) = &a.plot {
        plot(path, &a, &rows)?;
        println!("plot: {}", path.display());
    }
    if a.json {
        crate::output::print_json(&serde_json::to_string(&rows)?);
    }
    Ok(())
}

/// A real server on loopback and the simulated devices registered with it.
struct Simulation<'a> {
    a: &'a Args,
    backend: Backend,
    mnist: Mnist,
    /// Each device's example indices into MNIST's training split.
    parts: Vec<Vec<usize>>,
    /// Devices taking part in each round.
    per_round: usize,
    /// Devices `0..attackers` attack.
    attackers: usize,
    /// With differential privacy: the mechanism (devices clip to its norm and take part
    /// with probability C).
    privacy: Option<GaussianParams>,
    server: std::sync::Arc<Server>,
    /// Runs the server; kept for as long as the simulation.
    _runtime: tokio::runtime::Runtime,
    client: Client,
    server_key: [u8; 32],
    keys: Vec<KeyPair>,
    outboxes: Vec<Outbox>,
    /// Where the devices pull the current version to.
    model_path: PathBuf,
    /// Chooses each round's devices.
    rng: rand::rngs::StdRng,
}

impl<'a> Simulation<'a> {
    /// Splits MNIST among the devices, starts the server in `dir` with a freshly
    /// initialised MLP as version 1 and registers every device.
    fn start(
        a: &'a Args,
        dir: &Path,
        rule: AggRule,
        privacy: Option<GaussianParams>,
    ) -> Result<Simulation<'a>, Box<dyn std::error::Error>> {
        let backend = Backend::auto(a.adapter.as_deref())?;
        let mnist = crate::fetch::mnist()?;
        let parts = partition(&mnist.train, a.devices, a.non_iid, a.seed);
        let per_round = ((a.fraction * a.devices as f32).round() as usize).max(1);
        let attackers = (a.attackers * a.devices as f32).round() as usize;
        // Rounds run when the simulation says (`Server::run_round`), not by the server's loop.
        let config = ServerConfig {
            min_updates: u64::MAX,
            deadline: Duration::from_secs(24 * 3600),
            tick: Duration::from_millis(2),
            max_norm: 1e6,
            rule,
            open_registration: true,
            ..ServerConfig::default()
        };
        let server = Server::open(dir, config, finite_gate())?;
        let spec = ClassifierSpec::new(Arch::Mlp, &mnist::SHAPE, mnist::CLASSES);
        let init = Model::new("mnist", &spec, &Backend::Cpu, a.seed)?;
        server.import_model(init.to_builder(DType::F32, 1, None)?.to_bytes()?)?;
        let runtime = tokio::runtime::Runtime::new()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        runtime.spawn(serve(server.clone(), listener, std::future::pending()));
        let client = Client::new(&url);
        let server_key = client.server_key()?;
        let keys = device_keys(a.devices, a.seed);
        for (d, k) in keys.iter().enumerate() {
            client.register(&format!("sim-{d}"), k, None)?;
        }
        let outboxes = (0..a.devices)
            .map(|d| Outbox::open(&dir.join("devices").join(format!("sim-{d}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Simulation {
            a,
            backend,
            mnist,
            parts,
            per_round,
            attackers,
            privacy,
            server,
            _runtime: runtime,
            client,
            server_key,
            keys,
            outboxes,
            model_path: dir.join("global.pupil"),
            rng: rand::rngs::StdRng::seed_from_u64(a.seed ^ 0x5EED),
        })
    }

    /// The devices taking part in a round: C × devices of them at random, or with
    /// differential privacy each one independently with probability C.
    fn choose(&mut self) -> Vec<usize> {
        if self.privacy.is_some() {
            let q = f64::from(self.a.fraction);
            return (0..self.a.devices)
                .filter(|_| self.rng.random_bool(q))
                .collect();
        }
        let mut chosen: Vec<usize> = (0..self.a.devices).collect();
        chosen.shuffle(&mut self.rng);
        chosen.truncate(self.per_round);
        chosen
    }

    /// One round: the chosen devices pull the current version, train on their data and
    /// push; the server aggregates them and publishes; the new version's test accuracy.
    fn round(&mut self, round: usize) -> Result<f32, Box<dyn std::error::Error>> {
        self.client.pull(&self.model_path, &self.server_key)?;
        let file = ModelFile::open(&self.model_path)?;
        for d in self.choose() {
            self.push_update(d, &file, round)?;
        }
        // A round without updates (possible with Poisson sampling) publishes nothing.
        if let Some(record) = self.server.run_round()? {
            if record.published.is_none() {
                return Err(format!(
                    "round {round}: the server published no new version ({})",
                    record.gate
                )
                .into());
            }
        }
        self.client.pull(&self.model_path, &self.server_key)?;
        let global = Model::open(
            &ModelFile::open(&self.model_path)?,
            &self.backend,
            Train::All,
        )?;
        Ok(train::accuracy(
            &global.net,
            &global.params,
            &self.mnist.test,
            1000,
        )?)
    }

    /// Device `d` trains the pulled `file` on its data and pushes its delta, signed.
    fn push_update(&self, d: usize, file: &ModelFile, round: usize) -> CliResult {
        let a = self.a;
        let model = Model::open(file, &self.backend, Train::All)?;
        let before = model.params.trainable_values()?.to_vec()?;
        let local = self.mnist.train.subset(&self.parts[d]);
        let seed = a.seed + (round * 1000) as u64;
        train::sgd_epochs(
            &model.net,
            &model.params,
            &local,
            a.local_epochs,
            a.batch,
            a.lr,
            seed,
        )?;
        let after = model.params.trainable_values()?.to_vec()?;
        // An attacker scales its honest delta; with differential privacy a device clips
        // its own delta before it leaves (the server clips again).
        let mut scale = if d < self.attackers {
            a.attack_scale
        } else {
            1.0
        };
        if let Some(p) = &self.privacy {
            let mut delta: Vec<f32> = after.iter().zip(&before).map(|(x, y)| x - y).collect();
            scale *= clip_norm(&mut delta, p.clip_norm);
        }
        let refined = scaled_update(&model, &before, &after, scale);
        let metrics = [Metric {
            name: "examples",
            value: self.parts[d].len() as f32,
        }];
        let options = UpdateOptions {
            device_id: &format!("sim-{d}"),
            encoding: DeltaEncoding::F16,
            num_examples: self.parts[d].len() as u64,
            metrics: &metrics,
            personal: &[],
        };
        self.outboxes[d].queue_update(&self.keys[d], file, &refined, &options)?;
        self.client.push(&self.keys[d], &self.outboxes[d])?;
        Ok(())
    }
}

/// Distinct deterministic device keys: the device index and the seed.
fn device_keys(devices: usize, seed: u64) -> Vec<KeyPair> {
    (0..devices)
        .map(|d| {
            let mut bytes = [7u8; 32];
            bytes[..8].copy_from_slice(&(d as u64).to_le_bytes());
            bytes[8..16].copy_from_slice(&seed.to_le_bytes());
            KeyPair::from_seed(bytes)
        })
        .collect()
}

/// `model`'s parameters moved from `before` by `scale` times the step to `after`.
fn scaled_update(model: &Model, before: &[f32], after: &[f32], scale: f32) -> Vec<NamedValues> {
    model
        .params
        .infos()
        .iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let values = (p.offset..p.offset + n)
                .map(|i| before[i] + (after[i] - before[i]) * scale)
                .collect();
            let shape = p.shape.iter().map(|&x| x as u64).collect();
            (p.name.clone(), shape, values)
        })
        .collect()
}

/// The test accuracy per round.
fn plot(path: &Path, a: &Args, rows: &[RoundRow]) -> CliResult {
    draw(
        path,
        &[Panel {
            title: format!(
                "FedAvg on MNIST: {} devices, C={}, E={}, B={}{}",
                a.devices,
                a.fraction,
                a.local_epochs,
                a.batch,
                if a.non_iid { ", non-IID" } else { ", IID" }
            ),
            x_label: "round".into(),
            y_label: "test accuracy %".into(),
            series: vec![Series {
                name: format!("{} (lr {})", a.rule, a.lr),
                points: rows
                    .iter()
                    .map(|r| (r.round as f64, f64::from(r.accuracy) * 100.0))
                    .collect(),
            }],
        }],
    )
}
