//! `pupil serve` and `pupil sync register|push|pull|status`.

use std::fs;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use pupil_sync::cli::{run_serve, ServeArgs};
use pupil_sync::client::{Client, Outbox, PullOutcome, Transfer};
use pupil_sync::{hex, KeyPair};

use crate::CliResult;

/// Runs `pupil serve`.
pub fn serve(args: ServeArgs) -> CliResult {
    Ok(run_serve(&args)?)
}

/// Where a device keeps its sync state and which server it talks to.
#[derive(clap::Args)]
pub struct Device {
    /// Device directory: `device.key`, `outbox/`, `server.pub` (the pinned server key).
    #[arg(long, default_value = "pupil-device")]
    dir: PathBuf,
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    server: String,
}

impl Device {
    /// The device key, created on first use.
    fn key(&self) -> Result<KeyPair, pupil_sync::SyncError> {
        KeyPair::load_or_create(&self.dir.join("device.key"))
    }

    /// The outbox.
    fn outbox(&self) -> Result<Outbox, pupil_sync::SyncError> {
        Outbox::open(&self.dir.join("outbox"))
    }
}

/// Device-side sync commands.
#[derive(Subcommand)]
pub enum Sync {
    /// Register this device's public key with the server.
    Register {
        #[command(flatten)]
        device: Device,
        /// The device id to register.
        #[arg(long)]
        device_id: String,
        /// The server's admin token (unless it allows open registration).
        #[arg(long, env = "PUPIL_ADMIN_TOKEN")]
        admin_token: Option<String>,
    },
    /// Upload every queued update (retrying with backoff, large ones in resumable chunks); acknowledged ones leave the outbox.
    Push {
        #[command(flatten)]
        device: Device,
    },
    /// Fetch the latest model version (as a delta from the local file where possible), verify it and swap it in atomically.
    Pull {
        #[command(flatten)]
        device: Device,
        /// The model file to update.
        #[arg(long)]
        model: PathBuf,
        /// The server's public key (hex); pinned in `server.pub` on first use.
        #[arg(long)]
        server_key: Option<String>,
    },
    /// Show the outbox and the device key.
    Status {
        #[command(flatten)]
        device: Device,
    },
}

/// The pinned server key: `given` (then pinned) or the one pinned before.
fn server_key(dir: &Path, given: Option<&str>) -> Result<[u8; 32], Box<dyn std::error::Error>> {
    let pinned = dir.join("server.pub");
    let text = match given {
        Some(k) => {
            fs::create_dir_all(dir)?;
            fs::write(&pinned, k)?;
            k.to_owned()
        }
        None => fs::read_to_string(&pinned).map_err(|_| {
            format!("no server key pinned in {}; pass --server-key once (from the server's /v1/server-key, over a trusted channel)", pinned.display())
        })?,
    };
    Ok(hex::decode(text.trim()).ok_or("the server key must be 64 hex digits")?)
}

/// Runs a `pupil sync` command.
pub fn run(cmd: Sync) -> CliResult {
    match cmd {
        Sync::Register {
            device,
            device_id,
            admin_token,
        } => {
            let key = device.key()?;
            Client::new(&device.server).register(
                &device_id,
                &key.public(),
                admin_token.as_deref(),
            )?;
            println!(
                "registered {device_id} with key {}",
                hex::encode(&key.public())
            );
        }
        Sync::Push { device } => {
            let report = Client::new(&device.server)
                .with_device_key(device.key()?)
                .push(&device.outbox()?)?;
            println!(
                "accepted {}, duplicates {}, rejected {}; sent {} bytes",
                report.accepted.len(),
                report.duplicates.len(),
                report.rejected.len(),
                report.bytes_sent
            );
            for (seq, offset) in &report.resumed {
                println!("  update {seq} resumed at byte {offset} (held by the server)");
            }
            for (seq, kind) in &report.rejected {
                println!("  update {seq} rejected: {kind} (kept in outbox/rejected)");
            }
        }
        Sync::Pull {
            device,
            model,
            server_key: given,
        } => {
            let key = server_key(&device.dir, given.as_deref())?;
            let report = Client::new(&device.server).pull_report(&model, &key)?;
            match report.outcome {
                PullOutcome::UpToDate(m) => {
                    println!("up to date: version {} ({})", m.version, m.hash)
                }
                PullOutcome::Updated(m) => {
                    println!("updated to version {} ({})", m.version, m.hash)
                }
            }
            match report.transfer {
                Some(Transfer::Delta { bytes }) => {
                    println!("pulled a delta: {bytes} bytes transferred")
                }
                Some(Transfer::Full {
                    bytes,
                    delta_refused,
                }) => {
                    println!("pulled the full file: {bytes} bytes transferred");
                    if let Some(why) = delta_refused {
                        println!("  (no delta: {why})");
                    }
                }
                None => {}
            }
        }
        Sync::Status { device } => {
            let status = device.outbox()?.status()?;
            println!("device key  {}", hex::encode(&device.key()?.public()));
            println!("queued      {:?}", status.queued);
            println!("rejected    {:?}", status.rejected);
            println!("next seq    {}", status.next_seq);
        }
    }
    Ok(())
}
