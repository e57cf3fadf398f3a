//! `pupil serve` and `pupil sync register|queue|push|requeue|pull|status|versions|rollback`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use pupil::format::ModelFile;
use pupil_sync::cli::{run_serve, ServeArgs};
use pupil_sync::client::{
    Client, DeltaEncoding, DeviceDir, PullOutcome, PullReport, PushReport, Transfer, UpdateOptions,
};
use pupil_sync::hex;
use serde_json::json;

use crate::CliResult;

/// Runs `pupil serve`.
pub fn serve(args: ServeArgs) -> CliResult {
    Ok(run_serve(&args)?)
}

/// Where a device keeps its sync state and which server it talks to.
#[derive(clap::Args)]
pub struct Device {
    /// Device directory: `device.key`, `device.id`, `server.pub` (the pinned server key),
    /// `outbox/`.
    #[arg(long, default_value = "pupil-device")]
    dir: PathBuf,
    /// Server URL (`https://` when `pupil serve` has --tls-cert).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    server: String,
    /// Trust only this server certificate (PEM, the server's --tls-cert file) for an
    /// `https://` server, instead of the web's certificate authorities.
    #[arg(long, env = "PUPIL_PIN_CERT")]
    pin_cert: Option<PathBuf>,
    /// Print one JSON object on stdout instead of lines of text.
    #[arg(long)]
    json: bool,
}

impl Device {
    /// The device directory.
    fn open(&self) -> Result<DeviceDir, pupil_sync::SyncError> {
        DeviceDir::open(&self.dir)
    }

    /// A client of the server, pinned to --pin-cert when given.
    fn client(&self) -> Result<Client, Box<dyn std::error::Error>> {
        let client = Client::new(&self.server);
        match &self.pin_cert {
            None => Ok(client),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!(
                        "cannot read --pin-cert {}: {e}; pass the server's certificate file",
                        path.display()
                    )
                })?;
                Ok(client.with_pinned_cert(&pem)?)
            }
        }
    }
}

/// What a queued update carries, as `pupil refine --outbox` and `pupil sync queue` take it.
#[derive(clap::Args)]
pub struct QueueOptions {
    /// Delta encoding: f16, int8 (per-row scales) or topk:FRACTION (error feedback kept on
    /// the device).
    #[arg(long, default_value = "int8")]
    pub encoding: String,
    /// Tensor name prefixes that stay on the device (personal heads or adapters),
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub personal: Vec<String>,
}

impl QueueOptions {
    /// Builds the update from `base` to `refined` and queues it in `device`'s outbox;
    /// returns a line saying what was queued.
    pub fn queue(
        &self,
        device: &DeviceDir,
        base: &ModelFile,
        refined: &[pupil_sync::client::NamedValues],
        num_examples: u64,
        metrics: &[pupil_wire::Metric<'_>],
    ) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
        let personal: Vec<&str> = self.personal.iter().map(String::as_str).collect();
        let options = UpdateOptions {
            device_id: "",
            encoding: DeltaEncoding::parse(&self.encoding)?,
            num_examples,
            metrics,
            personal: &personal,
        };
        let q = device.queue_update(base, refined, &options)?;
        Ok(json!({
            "seq": q.seq,
            "bytes": q.bytes,
            "tensors": q.tensors,
            "outbox": device.outbox()?.dir(),
        }))
    }
}

/// Device-side sync commands.
#[derive(Subcommand)]
pub enum Sync {
    /// Register this device's public key with the server, signing the server's challenge
    /// with the device key; saves the device id and pins the server's key (pass
    /// --server-key to check it against one given out of band).
    Register {
        #[command(flatten)]
        device: Device,
        /// The device id to register.
        #[arg(long)]
        device_id: String,
        /// The server's admin token (unless it allows open registration).
        #[arg(long, env = "PUPIL_ADMIN_TOKEN")]
        admin_token: Option<String>,
        /// The server's public key (hex), as `pupil serve` prints it.
        #[arg(long)]
        server_key: Option<String>,
    },
    /// Queue the delta from a base version to a refined model as a signed update.
    Queue {
        #[command(flatten)]
        device: Device,
        /// The version the refinement started from (the file `pupil sync pull` keeps).
        #[arg(long)]
        base: PathBuf,
        /// The refined model.
        #[arg(long)]
        model: PathBuf,
        /// Local examples the refinement saw (the server's FedAvg weight).
        #[arg(long, default_value_t = 1)]
        examples: u64,
        #[command(flatten)]
        options: QueueOptions,
    },
    /// Upload every queued update (retrying with backoff, large ones in resumable chunks);
    /// acknowledged ones leave the outbox. Exits non-zero when the server refused any:
    /// for good (moved to outbox/rejected) or until the device is fixed (kept queued).
    Push {
        #[command(flatten)]
        device: Device,
    },
    /// Move updates the server rejected (outbox/rejected) back into the queue, to push
    /// them again once the cause is fixed.
    Requeue {
        #[command(flatten)]
        device: Device,
        /// Only this update (repeatable); all rejected ones when not given.
        #[arg(long = "seq")]
        seqs: Vec<u64>,
    },
    /// Fetch the latest model version (as a delta from the local file where possible),
    /// verify it and swap it in atomically.
    Pull {
        #[command(flatten)]
        device: Device,
        /// The model file to update.
        #[arg(long)]
        model: PathBuf,
        /// The server's public key (hex); pinned in `server.pub` once checked.
        #[arg(long)]
        server_key: Option<String>,
    },
    /// Show the device, its outbox and the server's current version.
    Status {
        #[command(flatten)]
        device: Device,
    },
    /// List the server's published versions.
    Versions {
        #[command(flatten)]
        device: Device,
    },
    /// Make an earlier version the current one again (admin).
    Rollback {
        #[command(flatten)]
        device: Device,
        /// The version to return to.
        #[arg(long)]
        to: u64,
        /// The server's admin token.
        #[arg(long, env = "PUPIL_ADMIN_TOKEN")]
        admin_token: String,
    },
}

/// Prints `value` as JSON when `json`, else the text `lines` make.
fn print(json: bool, value: &serde_json::Value, lines: impl FnOnce() -> Vec<String>) {
    if json {
        crate::output::print_json(&value.to_string());
    } else {
        lines().iter().for_each(|l| println!("{l}"));
    }
}

/// Runs a `pupil sync` command.
pub fn run(cmd: Sync) -> CliResult {
    match cmd {
        Sync::Register {
            device,
            device_id,
            admin_token,
            server_key,
        } => register(&device, &device_id, admin_token.as_deref(), server_key),
        Sync::Queue {
            device,
            base,
            model,
            examples,
            options,
        } => queue(&device, &base, &model, examples, &options),
        Sync::Push { device } => {
            let dir = device.open()?;
            let report = dir.push(&device.client()?)?;
            print(device.json, &push_json(&report), || push_lines(&report));
            push_result(&report)
        }
        Sync::Requeue { device, seqs } => {
            let outbox = device.open()?.outbox()?;
            let moved = outbox.requeue(&seqs)?;
            let value = json!({ "requeued": moved, "outbox": outbox.dir() });
            print(device.json, &value, || {
                vec![format!(
                    "requeued {} update(s) {moved:?}; run `pupil sync push` to send them",
                    moved.len()
                )]
            });
            Ok(())
        }
        Sync::Pull {
            device,
            model,
            server_key,
        } => pull(&device, &model, server_key),
        Sync::Status { device } => status(&device),
        Sync::Versions { device } => versions(&device),
        Sync::Rollback {
            device,
            to,
            admin_token,
        } => {
            device.client()?.rollback(to, &admin_token)?;
            print(device.json, &json!({ "current": to }), || {
                vec![format!("version {to} is current again")]
            });
            Ok(())
        }
    }
}

/// The line saying what `pupil sync queue` or `pupil refine --outbox` queued.
pub fn queued_line(q: &serde_json::Value) -> String {
    format!(
        "queued update {} ({} bytes, {} tensors) in {}",
        q["seq"],
        q["bytes"],
        q["tensors"].as_array().map_or(0, Vec::len),
        q["outbox"].as_str().unwrap_or("")
    )
}

/// `pupil sync queue`: the delta from `base` to every tensor of `model`.
fn queue(
    device: &Device,
    base: &Path,
    model: &Path,
    examples: u64,
    options: &QueueOptions,
) -> CliResult {
    let (base, refined) = (ModelFile::open(base)?, ModelFile::open(model)?);
    let values: Vec<_> = refined
        .tensors()
        .map(|t| (t.name.to_owned(), t.shape.to_vec(), t.to_f32()))
        .collect();
    let q = options.queue(&device.open()?, &base, &values, examples, &[])?;
    print(device.json, &q, || vec![queued_line(&q)]);
    Ok(())
}

/// `pupil sync versions`.
fn versions(device: &Device) -> CliResult {
    let versions = device.client()?.versions()?;
    print(device.json, &json!(versions), || {
        versions
            .iter()
            .map(|v| {
                format!(
                    "version {:>4}  {}  round {:>5}  {} bytes",
                    v.version,
                    &v.hash[..16.min(v.hash.len())],
                    v.round.map_or("-".into(), |r| r.to_string()),
                    v.size
                )
            })
            .collect()
    });
    Ok(())
}

/// `pupil sync register`.
fn register(
    device: &Device,
    device_id: &str,
    admin_token: Option<&str>,
    given_key: Option<String>,
) -> CliResult {
    let dir = device.open()?;
    let client = device.client()?;
    let announced = client.server_key()?;
    if let Some(given) = &given_key {
        let parsed: [u8; 32] = hex::decode(given.trim())
            .ok_or("--server-key must be 64 hex digits, as `pupil serve` prints it")?;
        if parsed != announced {
            return Err(format!(
                "the server at {} announces key {}, not the --server-key given: \
                 check the address (someone may be in between)",
                device.server,
                hex::encode(&announced)
            )
            .into());
        }
    }
    match dir.server_key()? {
        Some(pinned) if pinned != announced => {
            return Err(format!(
                "the server announces key {} but {} pins {}; if the server was replaced on \
                 purpose, delete that file and register again",
                hex::encode(&announced),
                dir.server_key_path().display(),
                hex::encode(&pinned)
            )
            .into())
        }
        Some(_) => {}
        None => {
            dir.pin_server_key(&hex::encode(&announced))?;
        }
    }
    let key = dir.key()?;
    client.register(device_id, &key, admin_token)?;
    dir.set_device_id(device_id)?;
    let value = json!({
        "device_id": device_id,
        "public_key": hex::encode(&key.public()),
        "server_key": hex::encode(&announced),
        "dir": dir.path(),
    });
    print(device.json, &value, || {
        vec![
            format!(
                "registered {device_id} with key {}",
                hex::encode(&key.public())
            ),
            format!(
                "server key {} pinned in {}{}",
                hex::encode(&announced),
                dir.server_key_path().display(),
                if given_key.is_some() {
                    " (checked against --server-key)"
                } else {
                    " (trusted on first use: compare it with `pupil serve`'s output)"
                }
            ),
        ]
    });
    Ok(())
}

/// `pupil sync pull`.
fn pull(device: &Device, model: &std::path::Path, given_key: Option<String>) -> CliResult {
    let dir = device.open()?;
    let key = match given_key {
        Some(k) => dir.pin_server_key(&k)?,
        None => dir.server_key()?.ok_or_else(|| {
            format!(
                "no server key pinned in {}; run `pupil sync register` or pass --server-key \
                 once (as `pupil serve` prints it)",
                dir.server_key_path().display()
            )
        })?,
    };
    let report = device.client()?.pull_report(model, &key).map_err(|e| {
        format!(
            "{e} (the server key is pinned in {})",
            dir.server_key_path().display()
        )
    })?;
    print(device.json, &pull_json(&report), || pull_lines(&report));
    Ok(())
}

/// `pupil sync status`.
fn status(device: &Device) -> CliResult {
    let dir = device.open()?;
    let status = dir.outbox()?.status()?;
    let id = dir.device_id().ok();
    let latest = match dir.server_key()? {
        Some(key) => device.client()?.latest(&key).map(|l| l.meta),
        None => Err(pupil_sync::SyncError::InvalidArgument(format!(
            "no server key pinned in {} to verify its answer; run `pupil sync register`",
            dir.server_key_path().display()
        ))),
    };
    let value = json!({
        "device_id": id,
        "device_key": hex::encode(&dir.key()?.public()),
        "server": device.server,
        "server_key": dir.server_key()?.map(|k| hex::encode(&k)),
        "queued": status.queued,
        "rejected": status.rejected,
        "next_seq": status.next_seq,
        "server_version": latest.as_ref().ok().map(|v| v.version),
        "server_error": latest.as_ref().err().map(ToString::to_string),
    });
    print(device.json, &value, || {
        vec![
            format!(
                "device id   {}",
                id.as_deref().unwrap_or("(not registered)")
            ),
            format!("device key  {}", value["device_key"].as_str().unwrap_or("")),
            format!("queued      {:?}", status.queued),
            format!("rejected    {:?}", status.rejected),
            format!("next seq    {}", status.next_seq),
            match &latest {
                Ok(v) => format!("server      {} at version {}", device.server, v.version),
                Err(e) => format!("server      {} unreachable: {e}", device.server),
            },
        ]
    });
    Ok(())
}

/// A push report as JSON.
fn push_json(r: &PushReport) -> serde_json::Value {
    json!({
        "accepted": r.accepted,
        "duplicates": r.duplicates,
        "rejected": r.rejected.iter().map(|(s, k)| json!({"seq": s, "error": k})).collect::<Vec<_>>(),
        "bytes_sent": r.bytes_sent,
        "resumed": r.resumed.iter().map(|(s, o)| json!({"seq": s, "offset": o})).collect::<Vec<_>>(),
        "kept": r.kept.as_ref().map(|k| json!({"seq": k.seq, "error": k.kind, "message": k.message})),
    })
}

/// The push's exit: an error when the server refused an update, for good or until the
/// device is fixed, so scripts notice.
fn push_result(r: &PushReport) -> CliResult {
    if let Some(k) = &r.kept {
        return Err(format!("update {} was refused ({}): {}", k.seq, k.kind, k.message).into());
    }
    if !r.rejected.is_empty() {
        let seqs: Vec<u64> = r.rejected.iter().map(|(s, _)| *s).collect();
        return Err(format!(
            "the server rejected update(s) {seqs:?} for good; they were moved to outbox/rejected: \
             fix the cause, then `pupil sync requeue` to send them again"
        )
        .into());
    }
    Ok(())
}

/// A push report as lines.
fn push_lines(r: &PushReport) -> Vec<String> {
    let mut out = vec![format!(
        "accepted {}, duplicates {}, rejected {}; sent {} bytes",
        r.accepted.len(),
        r.duplicates.len(),
        r.rejected.len(),
        r.bytes_sent
    )];
    for (seq, offset) in &r.resumed {
        out.push(format!(
            "  update {seq} resumed at byte {offset} (held by the server)"
        ));
    }
    for (seq, kind) in &r.rejected {
        out.push(format!(
            "  update {seq} rejected: {kind} (kept in outbox/rejected)"
        ));
    }
    if let Some(k) = &r.kept {
        out.push(format!(
            "  update {} refused: {} (still queued, with the ones after it)",
            k.seq, k.kind
        ));
    }
    out
}

/// A pull report as JSON.
fn pull_json(r: &PullReport) -> serde_json::Value {
    let (updated, meta) = match &r.outcome {
        PullOutcome::UpToDate(m) => (false, m),
        PullOutcome::Updated(m) => (true, m),
    };
    let transfer = match &r.transfer {
        Some(Transfer::Delta { bytes }) => json!({"kind": "delta", "bytes": bytes}),
        Some(Transfer::Full {
            bytes,
            delta_refused,
        }) => json!({"kind": "full", "bytes": bytes, "delta_refused": delta_refused}),
        None => serde_json::Value::Null,
    };
    json!({ "updated": updated, "version": meta.version, "hash": meta.hash, "transfer": transfer })
}

/// A pull report as lines.
fn pull_lines(r: &PullReport) -> Vec<String> {
    let mut out = vec![match &r.outcome {
        PullOutcome::UpToDate(m) => format!("up to date: version {} ({})", m.version, m.hash),
        PullOutcome::Updated(m) => format!("updated to version {} ({})", m.version, m.hash),
    }];
    match &r.transfer {
        Some(Transfer::Delta { bytes }) => {
            out.push(format!("pulled a delta: {bytes} bytes transferred"))
        }
        Some(Transfer::Full {
            bytes,
            delta_refused,
        }) => {
            out.push(format!("pulled the full file: {bytes} bytes transferred"));
            if let Some(why) = delta_refused {
                out.push(format!("  (no delta: {why})"));
            }
        }
        None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use pupil_sync::client::Kept;

    use super::*;

    #[test]
    fn push_fails_when_an_update_was_refused() {
        assert!(push_result(&PushReport {
            accepted: vec![1],
            ..PushReport::default()
        })
        .is_ok());
        let rejected = PushReport {
            rejected: vec![(2, "wrong_model".into())],
            ..PushReport::default()
        };
        let err = push_result(&rejected).unwrap_err().to_string();
        assert!(
            err.contains("[2]") && err.contains("pupil sync requeue"),
            "{err}"
        );
        let kept = PushReport {
            kept: Some(Kept {
                seq: 1,
                kind: "unknown_device".into(),
                message: "register the device".into(),
            }),
            ..PushReport::default()
        };
        let err = push_result(&kept).unwrap_err().to_string();
        assert!(
            err.contains("unknown_device") && err.contains("register"),
            "{err}"
        );
    }
}
