//! The upstream server: device registration, authenticated and validated
//! updates (whole, or in resumable chunks), rounds of robust aggregation
//! behind a quality gate, signed model versions with history, rollback and
//! deltas between versions, and metrics. [`Server::router`] is the axum app;
//! the handlers' logic is plain methods, so tests can call it directly.

mod api_error;
mod auth;
mod delta;
mod guard;
mod http;
mod http_upload;
mod listen;
mod round;
mod submit;
mod update_source;
mod upload;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use pupil_format::ModelFile;

pub(crate) use crate::protocol::unix_now;
pub use crate::protocol::{
    version_signing_message, Latest, OpenUpload, Rollback, UploadState, MAX_UPLOAD_CHUNKS,
    VERSION_SIGNING_CONTEXT,
};
pub use api_error::ApiError;
pub use http::{serve, serve_tls};
pub use listen::Tls;
pub use submit::Submitted;
pub use upload::Opened;

use crate::aggregate::{Rule, ServerOpt};
use crate::hex;
use crate::keys::KeyPair;
use crate::lora_merge::Merge;
use crate::store::{Retention, Store, VersionMeta};
use crate::SyncError;

/// A quality gate's verdict on a candidate version.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Whether to publish the candidate.
    pub accept: bool,
    /// Holdout metrics, stored with the version.
    pub metrics: BTreeMap<String, f64>,
    /// Why, in words.
    pub reason: String,
}

/// Evaluates `(candidate, current)` on a server-side holdout.
pub type Gate = Arc<dyn Fn(&ModelFile, &ModelFile) -> Verdict + Send + Sync>;

/// A gate that accepts every candidate whose values are all finite.
pub fn finite_gate() -> Gate {
    Arc::new(|candidate: &ModelFile, _: &ModelFile| {
        let finite = candidate
            .tensors()
            .all(|t| t.to_f32().iter().all(|v| v.is_finite()));
        Verdict {
            accept: finite,
            metrics: BTreeMap::new(),
            reason: if finite {
                "finite".into()
            } else {
                "non-finite weights".into()
            },
        }
    })
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Aggregate once this many updates are pending.
    pub min_updates: u64,
    /// ... or once this long passed since the last round with at least one pending.
    pub deadline: Duration,
    /// How often the round policy is checked.
    pub tick: Duration,
    /// Most versions an update's base may lag behind the current one.
    pub max_staleness: u64,
    /// Largest L2 norm of one update's delta.
    pub max_norm: f64,
    /// Most examples one update counts for in FedAvg: a device claiming more
    /// weighs as much as one with this many (the robust rules ignore counts).
    pub max_examples: u64,
    /// Largest request body in bytes (a larger declared length gets 413
    /// before the body is read).
    pub max_body: usize,
    /// Largest body of a request without a registered device's signature
    /// header or the admin token (larger ones get 401 before the body is read).
    pub max_anonymous_body: usize,
    /// Most bytes of signed request bodies held at once (then 503: retry).
    pub signed_body_budget: usize,
    /// Most bytes of anonymous request bodies held at once (then 503: retry).
    pub anonymous_body_budget: usize,
    /// Most connections served at once; the next wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has for a TLS handshake and for each request's headers.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in.
    pub body_timeout: Duration,
    /// How rounds combine deltas.
    pub rule: Rule,
    /// How FedAvg rounds combine LoRA adapters (`X.lora_a` / `X.lora_b` pairs): the
    /// product of the factors (sound) or each factor apart (the naive rule).
    pub lora_merge: Merge,
    /// The server optimizer applying each round's aggregate.
    pub opt: ServerOpt,
    /// Token for admin requests (`Authorization: Bearer ...`); none disables them.
    pub admin_token: Option<String>,
    /// Whether devices may register without the admin token.
    pub open_registration: bool,
    /// Unfinished chunked uploads are removed this long after they were opened.
    pub upload_ttl: Duration,
    /// Unfinished chunked uploads that received nothing for this long are removed.
    pub upload_idle: Duration,
    /// Most chunked uploads one device may have open.
    pub max_uploads_per_device: u64,
    /// Most bytes all open chunked uploads may declare together (then 507: retry
    /// later); bounds the disk that unfinished uploads hold.
    pub max_upload_bytes: u64,
    /// Which versions and update bytes the store keeps; applied after every round
    /// and at startup, when the store is also compacted.
    pub retention: Retention,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            min_updates: 8,
            deadline: Duration::from_secs(60),
            tick: Duration::from_millis(100),
            max_staleness: 4,
            max_norm: 1e3,
            max_examples: 100_000,
            max_body: pupil_wire::MAX_ENVELOPE_LEN,
            max_anonymous_body: 256 << 10,
            signed_body_budget: 256 << 20,
            anonymous_body_budget: 32 << 20,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            rule: Rule::FedAvg,
            lora_merge: Merge::Product,
            opt: ServerOpt::Plain,
            admin_token: None,
            open_registration: false,
            upload_ttl: Duration::from_secs(24 * 3600),
            upload_idle: Duration::from_secs(3600),
            max_uploads_per_device: 4,
            max_upload_bytes: 4 << 30,
            retention: Retention::default(),
        }
    }
}

/// The current version, decoded.
struct Current {
    meta: VersionMeta,
    model: Arc<ModelFile>,
    /// The signed marker of the rollback that made it current, if one did.
    rollback: Option<Rollback>,
}

/// The server's state. Share it as `Arc<Server>`.
pub struct Server {
    store: Store,
    key: KeyPair,
    config: ServerConfig,
    gate: Gate,
    opt: Mutex<ServerOpt>,
    current: RwLock<Option<Arc<Current>>>,
    hashes: RwLock<BTreeMap<[u8; 32], u64>>,
    counters: Mutex<BTreeMap<String, u64>>,
    last_round: Mutex<Instant>,
    round_lock: Mutex<()>,
    budgets: guard::Budgets,
}

impl Server {
    /// Opens the store in `dir` and the server key `dir/server.key` (created
    /// on first use).
    pub fn open(dir: &Path, config: ServerConfig, gate: Gate) -> Result<Arc<Self>, SyncError> {
        let mut store = Store::open(dir)?;
        let pruned = store.prune(&config.retention, unix_now())?;
        if pruned != Default::default() {
            tracing::info!(
                versions = pruned.versions,
                updates = pruned.updates,
                "pruned the store"
            );
        }
        store.compact()?;
        let key = KeyPair::load_or_create(&dir.join("server.key"))?;
        // Continue the optimizer a previous run persisted with its last version, when it
        // is the same kind of optimizer as configured now.
        let opt = match store.optimizer()? {
            Some(bytes) => serde_json::from_slice::<ServerOpt>(&bytes)
                .ok()
                .filter(|saved| {
                    std::mem::discriminant(saved) == std::mem::discriminant(&config.opt)
                })
                .unwrap_or_else(|| config.opt.clone()),
            None => config.opt.clone(),
        };
        let server = Server {
            budgets: guard::Budgets::new(config.signed_body_budget, config.anonymous_body_budget),
            store,
            key,
            opt: Mutex::new(opt),
            config,
            gate,
            current: RwLock::new(None),
            hashes: RwLock::new(BTreeMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            last_round: Mutex::new(Instant::now()),
            round_lock: Mutex::new(()),
        };
        server.sign_again()?;
        server.reload()?;
        Ok(Arc::new(server))
    }

    /// Signs again, under the current scheme, every version whose metadata
    /// this key did not sign that way (a store written before versions were
    /// signed with their model id, number and parent).
    fn sign_again(&self) -> Result<(), SyncError> {
        for mut meta in self.store.versions()? {
            if meta.verifies(&self.key.public()) {
                continue;
            }
            let Some(bytes) = self.store.version_bytes(meta.version)? else {
                continue;
            };
            meta.model_id = ModelFile::from_bytes(bytes)?.info().model_id.to_string();
            if let Some(message) = meta.signing_message() {
                meta.signature = hex::encode(&self.key.sign(&message));
                self.store.put_version_meta(&meta)?;
            }
        }
        Ok(())
    }

    /// Reloads the current version and the hash index from the store.
    fn reload(&self) -> Result<(), SyncError> {
        let mut hashes = BTreeMap::new();
        for v in self.store.versions()? {
            if let Some(h) = hex::decode::<32>(&v.hash) {
                hashes.insert(h, v.version);
            }
        }
        let current = match self.store.current()? {
            Some(meta) => {
                let bytes =
                    self.store
                        .version_bytes(meta.version)?
                        .ok_or_else(|| SyncError::Corrupt {
                            what: format!("version {}", meta.version),
                            detail: "its model bytes are missing".into(),
                        })?;
                let model = Arc::new(ModelFile::from_bytes(bytes)?);
                let rollback = self
                    .store
                    .rollback_marker()?
                    .filter(|r| r.to == meta.version);
                Some(Arc::new(Current {
                    meta,
                    model,
                    rollback,
                }))
            }
            None => None,
        };
        *self.hashes.write().unwrap_or_else(PoisonError::into_inner) = hashes;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = current;
        Ok(())
    }

    /// The server's public key, which devices pin to verify models.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The current version's metadata and model.
    fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The server optimizer's current state.
    pub fn optimizer(&self) -> ServerOpt {
        self.opt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current version's metadata.
    pub fn current_meta(&self) -> Option<VersionMeta> {
        self.current().map(|c| c.meta.clone())
    }

    /// The current version's signed metadata with the rollback marker that
    /// made it current, if one did: what `GET /v1/models/latest` answers.
    pub fn latest(&self) -> Option<Latest> {
        self.current().map(|c| Latest {
            meta: c.meta.clone(),
            rollback: c.rollback.clone(),
        })
    }

    /// The version number published with content hash `hash`.
    fn version_of(&self, hash: &[u8; 32]) -> Option<u64> {
        self.hashes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash)
            .copied()
    }

    /// Adds one to counter `name`.
    fn count(&self, name: &str) {
        self.add(name, 1);
    }

    /// Adds `n` to counter `name`.
    fn add(&self, name: &str, n: u64) {
        *self
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default() += n;
    }

    /// The counters since this process started: accepted, duplicate,
    /// rejected.KIND, uploads.{opened,resumed,committed},
    /// pulls.{full,delta} and pulls.{full,delta}_bytes.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes `bytes` (a valid model file) as the first version when the
    /// store has none; returns the current version.
    pub fn import_model(&self, bytes: Vec<u8>) -> Result<VersionMeta, SyncError> {
        if let Some(c) = self.current_meta() {
            return Ok(c);
        }
        let model = ModelFile::from_bytes(bytes)?;
        let meta = self.version_meta(&model, 1, None, None, BTreeMap::new());
        self.store.add_version(&meta, model.as_bytes())?;
        self.reload()?;
        Ok(meta)
    }

    /// The metadata of `model` published as version `n`.
    fn version_meta(
        &self,
        model: &ModelFile,
        n: u64,
        parent: Option<[u8; 32]>,
        round: Option<u64>,
        metrics: BTreeMap<String, f64>,
    ) -> VersionMeta {
        let hash = model.content_hash();
        let model_id = model.info().model_id.to_string();
        let message = version_signing_message(&model_id, n, parent.as_ref(), &hash);
        VersionMeta {
            model_id,
            version: n,
            hash: hex::encode(&hash),
            parent: parent.map(|p| hex::encode(&p)),
            published_unix: unix_now(),
            signature: hex::encode(&self.key.sign(&message)),
            size: model.as_bytes().len() as u64,
            round,
            metrics,
        }
    }

    /// Makes existing version `n` current again, with a signed rollback
    /// marker that lets devices running a later version go back to it; false
    /// when there is none.
    pub fn rollback(&self, n: u64) -> Result<bool, SyncError> {
        let _round = self
            .round_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(hash) = self
            .store
            .version_meta(n)?
            .and_then(|m| hex::decode::<32>(&m.hash))
        else {
            return Ok(false);
        };
        let from = self.store.last_version()?;
        let marker = Rollback {
            to: n,
            to_hash: hex::encode(&hash),
            from,
            signature: hex::encode(&self.key.sign(&Rollback::signing_message(n, &hash, from))),
        };
        let found = self.store.set_current(n, &marker)?;
        if found {
            self.reload()?;
        }
        Ok(found)
    }
}
