//! One simulated device of the demo: its own key, durable outbox and local digits in its
//! own style; each round it pulls the current version, refines it (with its personal layers in
//! place of the shared ones, when it keeps some) on local data and pushes a signed int8 delta
//! of the shared part.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use pupil::data::idx::{read_split, write_split};
use pupil::data::mnist::Mnist;
use pupil::data::shift::Style;
use pupil::data::Split;
use pupil::format::ModelFile;
use pupil::models::classifier::Personal;
use pupil::models::classifier::{Model, Train};
use pupil::refine::replay::Anchors;
use pupil::refine::select::{SelfTraining, Uncertainty};
use pupil::refine::{label_oracle, Active, Eval, RefineConfig, RoundReport, Session, UpdateReport};
use pupil::train;
use pupil::Backend;
use pupil_sync::client::{
    Client, DeltaEncoding, DeviceDir, NamedValues, Outbox, PullOutcome, UpdateOptions,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::Phases;

/// Labels a device's user gives per round.
const LABELS_PER_ROUND: usize = 10;

/// A device and its files under `dir`.
pub struct Device {
    /// Its id on the server.
    pub name: String,
    /// How its digits look.
    pub style: Style,
    dir: PathBuf,
    key: pupil_sync::KeyPair,
    outbox: Outbox,
    sync: DeviceDir,
    /// The layers it keeps to itself (never sent).
    personal: Personal,
    /// Unlabelled local pool (labels kept only to answer the few label requests).
    pool: Split,
    /// Labelled local test set (for measuring only).
    pub eval: Split,
}

/// What one device did in one round.
pub struct DeviceRound {
    /// Local accuracy of the version it pulled.
    pub before: f32,
    /// Local accuracy after its own refinement (before aggregation), of the model it runs.
    pub refined: f32,
    /// Labels it asked its user for.
    pub labels: usize,
    /// Pseudo-labels it trained on.
    pub pseudo: usize,
    /// Bytes of the signed update it pushed.
    pub update_bytes: usize,
    /// Whether its refinement passed its own quality gate.
    pub kept: bool,
}

impl Device {
    /// Open (or create) device `index` with `style`, writing its local data on first use;
    /// `personal` names the layers it keeps on the device.
    pub fn open(
        root: &Path,
        index: usize,
        style: Style,
        pool: usize,
        mnist: &Mnist,
        personal: Personal,
    ) -> Result<Device, Box<dyn std::error::Error>> {
        let name = format!("device-{}", index + 1);
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)?;
        let (images, labels) = (dir.join("images.idx"), dir.join("labels.idx"));
        let (eval_images, eval_labels) = (dir.join("eval-images.idx"), dir.join("eval-labels.idx"));
        if !(images.is_file() && eval_labels.is_file()) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(100 + index as u64);
            let mut train: Vec<usize> = (0..mnist.train.n).collect();
            train.shuffle(&mut rng);
            let mut test: Vec<usize> = (0..mnist.test.n).collect();
            test.shuffle(&mut rng);
            write_split(
                &style.apply_split(&mnist.train.subset(&train[..pool]))?,
                &images,
                Some(&labels),
            )?;
            write_split(
                &style.apply_split(&mnist.test.subset(&test[..1000]))?,
                &eval_images,
                Some(&eval_labels),
            )?;
        }
        let sync = DeviceDir::open(&dir)?;
        Ok(Device {
            key: sync.key()?,
            outbox: sync.outbox()?,
            sync,
            personal,
            pool: read_split(&images, Some(&labels))?,
            eval: read_split(&eval_images, Some(&eval_labels))?,
            name,
            style,
            dir,
        })
    }

    /// The device's key.
    pub fn key(&self) -> &pupil_sync::KeyPair {
        &self.key
    }

    /// Where its current model lives.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join("model.pupil")
    }

    /// The labels its user gave so far: (pool index, class).
    fn labels(&self) -> Result<Vec<(u32, u32)>, Box<dyn std::error::Error>> {
        match std::fs::read(self.dir.join("labels.json")) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps the labels its user gave (written atomically).
    fn save_labels(&self, labels: &[(u32, u32)]) -> Result<(), Box<dyn std::error::Error>> {
        let bytes = serde_json::to_vec(labels)?;
        Ok(pupil::format::write_atomic(
            &self.dir.join("labels.json"),
            &bytes,
        )?)
    }

    /// The model the device runs: the pulled version `shared` with its personal layers, if
    /// it keeps any.
    pub fn running(&self, shared: &ModelFile) -> Result<ModelFile, Box<dyn std::error::Error>> {
        Ok(self.sync.with_personal(shared)?)
    }

    /// Keeps the personal layers of `model` (refined on the device, its parameters
    /// `values`); returns their name prefixes, which its updates leave out.
    fn keep_personal(
        &self,
        model: &Model,
        values: &[NamedValues],
    ) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let prefixes = model.personal_prefixes(self.personal);
        if !prefixes.is_empty() {
            let names: Vec<&str> = prefixes.iter().map(String::as_str).collect();
            self.sync.keep_personal(values, &names)?;
        }
        Ok(prefixes)
    }

    /// Pull the current version (verified against the pinned `server_key`).
    pub fn pull(
        &self,
        client: &Client,
        server_key: &[u8; 32],
    ) -> Result<u64, Box<dyn std::error::Error>> {
        Ok(match client.pull(&self.model_path(), server_key)? {
            PullOutcome::UpToDate(m) | PullOutcome::Updated(m) => m.version,
        })
    }

    /// Fit the personal head to the shared version just pulled: a short head-only
    /// refinement on the device's confident pseudo-labels, the rest frozen (the first step of
    /// FedRep, Collins et al. 2021). Does nothing without personal layers or before the
    /// device has them.
    pub fn adapt_head(
        &self,
        backend: &Backend,
        round: u64,
    ) -> Result<(), Box<dyn std::error::Error>> {
        if self.personal == Personal::None || !self.sync.personal_path().is_file() {
            return Ok(());
        }
        let file = self.running(&ModelFile::open(self.model_path())?)?;
        let model = Model::open(&file, backend, Train::Head)?;
        let anchors = Anchors::from_file(&file)?.ok_or("the model carries no anchors")?;
        let cfg = RefineConfig {
            epochs: 2,
            lr: 1e-3,
            active: None,
            oracle_weight: 1,
            ..device_config(1000 + round)
        };
        let mut session = Session::new(
            &model,
            file.content_hash(),
            &self.pool,
            true,
            anchors,
            cfg,
            Eval::default(),
            None,
        )?;
        session.run(&mut |_| Vec::new(), &AtomicBool::new(false), &mut |_| {})?;
        self.keep_personal(&model, &model.merged()?)?;
        Ok(())
    }

    /// Refine the pulled model on local data and push a signed int8 delta. `before` is the
    /// pulled version's local accuracy, already measured when the version was published.
    pub fn refine_and_push(
        &self,
        client: &Client,
        backend: &Backend,
        round: u64,
        before: f32,
        phases: &mut Phases,
    ) -> Result<DeviceRound, Box<dyn std::error::Error>> {
        let t = Instant::now();
        let shared = ModelFile::open(self.model_path())?;
        let (model, report) = self.refine(&self.running(&shared)?, backend, round)?;
        let refined = train::accuracy(&model.net, &model.params, &self.eval, 500)?;
        phases.refine += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let update = UpdateReport::new(Some(&report), Some((before, refined)));
        let update_bytes = self.push(client, &shared, &model, &update)?;
        phases.sync += t.elapsed().as_secs_f64();
        Ok(DeviceRound {
            before,
            refined,
            labels: report.new_labels,
            pseudo: report.pseudo_labels,
            update_bytes,
            kept: report.accepted,
        })
    }

    /// One refinement round of the model it runs (`file`) on the local pool, asking its user
    /// for a few more labels and keeping them; the refined model and the round's report.
    fn refine(
        &self,
        file: &ModelFile,
        backend: &Backend,
        round: u64,
    ) -> Result<(Model, RoundReport), Box<dyn std::error::Error>> {
        let model = Model::open(file, backend, Train::All)?;
        let known = self.labels()?;
        let anchors = Anchors::from_file(file)?.ok_or("the model carries no anchors")?;
        let cfg = RefineConfig {
            epochs: 3,
            lr: 5e-4,
            active: Some(Active {
                per_round: LABELS_PER_ROUND,
                budget: known.len() + LABELS_PER_ROUND,
                by: Uncertainty::Margin,
            }),
            oracle_weight: 4,
            ..device_config(round)
        };
        let mut session = Session::new(
            &model,
            file.content_hash(),
            &self.pool,
            true,
            anchors,
            cfg,
            Eval::default(),
            None,
        )?;
        session.add_labels(&known)?;
        // The app's labelling callback: here, the user answers with the true digit.
        let mut oracle = label_oracle(&self.pool.labels);
        session.run(&mut oracle, &AtomicBool::new(false), &mut |_| {})?;
        self.save_labels(session.labels())?;
        let report = session.history().rounds.last().cloned().unwrap_or_default();
        Ok((model, report))
    }

    /// Queues the signed int8 delta of `model`'s shared layers to the `shared` version
    /// (keeping its personal ones here) and pushes it; the update's size in bytes.
    fn push(
        &self,
        client: &Client,
        shared: &ModelFile,
        model: &Model,
        update: &UpdateReport,
    ) -> Result<usize, Box<dyn std::error::Error>> {
        let values = model.merged()?;
        let prefixes = self.keep_personal(model, &values)?;
        let personal: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let options = UpdateOptions {
            device_id: &self.name,
            encoding: DeltaEncoding::Int8,
            num_examples: update.examples,
            metrics: &update.metrics,
            personal: &personal,
        };
        let queued = self
            .outbox
            .queue_update(&self.key, shared, &values, &options)?;
        let pushed = client.push(&self.key, &self.outbox)?;
        if let Some((_, why)) = pushed.rejected.first() {
            let seq = queued.seq;
            return Err(format!("{}: the server refused update {seq}: {why}", self.name).into());
        }
        Ok(queued.bytes)
    }
}

/// What both of a device's refinements share: one round, batches of 64 with 24 replayed
/// anchors, self-training at 0.9, a 2-point gate, no curriculum or checkpoints.
fn device_config(seed: u64) -> RefineConfig {
    RefineConfig {
        rounds: 1,
        epochs: 3,
        batch: 64,
        lr: 5e-4,
        self_training: Some(SelfTraining {
            threshold: 0.9,
            ..Default::default()
        }),
        active: None,
        curriculum: None,
        replay: 24,
        oracle_weight: 4,
        tolerance: 0.02,
        memory_budget: None,
        checkpoint_every: 0,
        seed,
    }
}
