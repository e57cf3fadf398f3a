//! `pupil serve`: the server's command-line arguments and entry point, shared
//! by the `pupil-sync-server` binary and the `pupil` CLI.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::aggregate::Rule;
use crate::dp::GaussianParams;
use crate::error::io_err;
use crate::lora_merge::Merge;
use crate::server::{self, finite_gate, Server, ServerConfig, Tls};
use crate::store::Retention;
use crate::SyncError;

/// Arguments of `pupil serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Directory of the durable store (created if missing).
    #[arg(long, default_value = "pupil-store")]
    pub store: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: String,
    /// Model file to publish as version 1 when the store has none.
    #[arg(long)]
    pub init_model: Option<PathBuf>,
    /// Aggregate once this many updates are pending.
    #[arg(long, default_value_t = 8)]
    pub min_updates: u64,
    /// ... or this many milliseconds after the last round, with at least one pending.
    #[arg(long, default_value_t = 60_000)]
    pub deadline_ms: u64,
    /// Most versions an update's base may lag behind.
    #[arg(long, default_value_t = 4)]
    pub max_staleness: u64,
    /// Largest L2 norm of one update.
    #[arg(long, default_value_t = 1e3)]
    pub max_norm: f64,
    /// Most examples one update counts for in FedAvg (larger claims are capped).
    #[arg(long, default_value_t = 100_000)]
    pub max_examples: u64,
    /// Aggregation rule: fedavg, trimmed (clip + 20% trimmed mean), median (clip +
    /// median) or dp (DP-FedAvg: clip to --clip-norm, sum, add Gaussian noise of standard
    /// deviation --dp-noise × --clip-norm, divide by --dp-expected).
    #[arg(long, default_value = "fedavg")]
    pub rule: String,
    /// With --rule dp: the noise multiplier z.
    #[arg(long, default_value_t = 1.0)]
    pub dp_noise: f32,
    /// With --rule dp: the updates expected per round (devices × their participation
    /// rate), the fixed denominator of the noised mean.
    #[arg(long)]
    pub dp_expected: Option<f64>,
    /// How FedAvg merges LoRA adapters (`*.lora_a`/`*.lora_b` pairs): product (the mean
    /// of each device's B A, re-factored by truncated SVD) or factors (A and B averaged
    /// apart: biased, for comparison).
    #[arg(long, default_value = "product")]
    pub lora_merge: String,
    /// Clip norm of the robust rules and of --rule dp.
    #[arg(long, default_value_t = 10.0)]
    pub clip_norm: f32,
    /// Admin token (registration, rollback).
    #[arg(long, env = "PUPIL_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Let devices register without the admin token (each still proves its key).
    #[arg(long)]
    pub open_registration: bool,
    /// TLS certificate chain (PEM): serve https with it and --tls-key. Devices pin it
    /// with `pupil sync ... --pin-cert FILE`.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body in bytes (a larger declared length gets 413 unread).
    #[arg(long, default_value_t = pupil_wire::MAX_ENVELOPE_LEN)]
    pub max_body: usize,
    /// Largest body in bytes of a request not signed by a registered device (or the
    /// admin); larger ones get 401 before their body is read.
    #[arg(long, default_value_t = 256 << 10)]
    pub max_anonymous_body: usize,
    /// Most MiB of signed request bodies held in memory at once (then 503: retry).
    #[arg(long, default_value_t = 256)]
    pub signed_body_budget_mib: usize,
    /// Most MiB of anonymous request bodies held in memory at once (then 503: retry).
    #[arg(long, default_value_t = 32)]
    pub anonymous_body_budget_mib: usize,
    /// Most connections served at once; the next wait in the listen backlog.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a client has for a TLS handshake and for each request's headers.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body.
    #[arg(long, default_value_t = 60)]
    pub body_timeout_secs: u64,
    /// Newest versions the store keeps with their files (the current one, the last
    /// rollback's target and version 1 stay besides); older ones are removed.
    #[arg(long, default_value_t = 32)]
    pub keep_versions: u64,
    /// Seconds an aggregated update keeps its bytes; then only its SHA-256 stays (a
    /// resent update is still answered "duplicate").
    #[arg(long, default_value_t = 24 * 3600)]
    pub keep_updates_secs: u64,
    /// Most MiB that all unfinished chunked uploads may declare together (then 507).
    #[arg(long, default_value_t = 4096)]
    pub max_upload_mib: u64,
    /// Seconds an unfinished chunked upload may go without a chunk before it is removed.
    #[arg(long, default_value_t = 3600)]
    pub upload_idle_secs: u64,
}

impl ServeArgs {
    /// The aggregation rule of `--rule` and its flags.
    fn rule(&self) -> Result<Rule, SyncError> {
        if self.rule == "dp" {
            let expected_updates = self.dp_expected.ok_or_else(|| {
                SyncError::InvalidArgument(
                    "--rule dp needs --dp-expected N: the updates expected per round".into(),
                )
            })?;
            let params = GaussianParams {
                clip_norm: self.clip_norm,
                noise_multiplier: self.dp_noise,
                expected_updates,
            };
            params
                .check()
                .map_err(|e| SyncError::InvalidArgument(e.to_string()))?;
            return Ok(Rule::DpFedAvg(params));
        }
        Rule::from_name(&self.rule, self.clip_norm).ok_or_else(|| {
            SyncError::InvalidArgument(format!(
                "unknown rule {:?}; use fedavg, trimmed, median or dp",
                self.rule
            ))
        })
    }

    /// The server settings these arguments describe.
    pub fn config(&self) -> Result<ServerConfig, SyncError> {
        let rule = self.rule()?;
        let lora_merge = match self.lora_merge.as_str() {
            "product" => Merge::Product,
            "factors" => Merge::Factors,
            other => {
                return Err(SyncError::InvalidArgument(format!(
                    "unknown --lora-merge {other:?}; use product or factors"
                )))
            }
        };
        Ok(ServerConfig {
            min_updates: self.min_updates,
            deadline: Duration::from_millis(self.deadline_ms),
            max_staleness: self.max_staleness,
            max_norm: self.max_norm,
            max_examples: self.max_examples,
            rule,
            lora_merge,
            admin_token: self.admin_token.clone(),
            open_registration: self.open_registration,
            max_body: self.max_body,
            max_anonymous_body: self.max_anonymous_body,
            signed_body_budget: self.signed_body_budget_mib.saturating_mul(1 << 20),
            anonymous_body_budget: self.anonymous_body_budget_mib.saturating_mul(1 << 20),
            max_connections: self.max_connections,
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            retention: Retention {
                versions: self.keep_versions,
                update_grace_secs: self.keep_updates_secs,
            },
            max_upload_bytes: self.max_upload_mib.saturating_mul(1 << 20),
            upload_idle: Duration::from_secs(self.upload_idle_secs),
            ..ServerConfig::default()
        })
    }
}

/// Runs the server until Ctrl-C or SIGTERM; prints `listening on ADDR` and the server's
/// public key once bound.
pub fn run_serve(args: &ServeArgs) -> Result<(), SyncError> {
    // One line per request and per round on stderr; RUST_LOG filters (default: info).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Tls::from_pem_files(cert, key)?),
        _ => None,
    };
    let server = Server::open(&args.store, args.config()?, finite_gate())?;
    if let Some(path) = &args.init_model {
        let bytes = std::fs::read(path).map_err(io_err("read", path))?;
        server.import_model(bytes)?;
    }
    let runtime = tokio::runtime::Runtime::new()
        .map_err(io_err("start the async runtime for", &args.store))?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&args.addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                SyncError::AddrInUse {
                    addr: args.addr.clone(),
                }
            } else {
                io_err("listen on", args.addr.as_ref())(e)
            }
        })?;
        let addr = listener
            .local_addr()
            .map_err(io_err("listen on", args.addr.as_ref()))?;
        println!(
            "listening on {addr}{}",
            if tls.is_some() { " (https)" } else { "" }
        );
        println!(
            "server key {} (devices pin it: pupil sync register --server-key ...)",
            crate::hex::encode(&server.public_key())
        );
        match tls {
            Some(tls) => server::serve_tls(server, listener, tls, shutdown()).await,
            None => server::serve(server, listener, shutdown()).await,
        }
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        // Without a signal handler the server runs until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn config(flags: &[&str]) -> Result<ServerConfig, SyncError> {
        let argv = ["serve", "--store", "s"];
        Serve::try_parse_from(argv.iter().chain(flags))
            .map_err(|e| SyncError::InvalidArgument(e.to_string()))?
            .args
            .config()
    }

    #[test]
    fn the_dp_rule_takes_its_flags_and_needs_the_expected_count() {
        let c = config(&[
            "--rule",
            "dp",
            "--clip-norm",
            "2",
            "--dp-noise",
            "0.8",
            "--dp-expected",
            "50",
        ])
        .unwrap();
        assert_eq!(
            c.rule,
            Rule::DpFedAvg(GaussianParams {
                clip_norm: 2.0,
                noise_multiplier: 0.8,
                expected_updates: 50.0,
            })
        );
        let err = config(&["--rule", "dp"]).unwrap_err().to_string();
        assert!(err.contains("--dp-expected"), "{err}");
        let err = config(&["--rule", "dp", "--dp-expected", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid"), "{err}");
        assert!(config(&["--rule", "nope"])
            .unwrap_err()
            .to_string()
            .contains("dp"));
    }
}
