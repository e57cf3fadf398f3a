//! Load benchmark skeleton: an in-process server on a random local port and
//! N concurrent devices, each uploading M signed updates. Prints updates/s,
//! p50/p99 latency and the lost/duplicated counts (both must be 0) as JSON.
//!
//! `cargo run --release -p pupil-sync --example load -- --devices 1000 --updates 2`

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use pupil_format::{ModelBuilder, ModelFile};
use pupil_sync::client::sign_envelope;
use pupil_sync::server::{finite_gate, serve, Server, ServerConfig};
use pupil_sync::KeyPair;
use pupil_wire::update::{EncodedDelta, UpdateDraft};

/// The value after `flag` in the arguments, or `default`.
fn arg(flag: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let devices = arg("--devices", 1000);
    let per_device = arg("--updates", 2) as u64;
    let width = arg("--width", 256) as u64;
    let dir = tempfile::tempdir()?;
    let config = ServerConfig {
        min_updates: u64::MAX,
        deadline: Duration::from_secs(3600),
        ..ServerConfig::default()
    };
    let server = Server::open(dir.path(), config, finite_gate())?;
    let mut b = ModelBuilder::new("load", "mlp")?;
    b.add_f32("w", &[width, width], &vec![0.0; (width * width) as usize])?;
    let base = ModelFile::from_bytes(b.to_bytes()?)?.content_hash();
    server.import_model(b.to_bytes()?)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}/v1/updates", listener.local_addr()?);
    runtime.spawn(serve(server.clone(), listener, std::future::pending()));

    // Prepare every signed update before the clock starts.
    let delta = vec![0.001f32; (width * width) as usize];
    let mut work = Vec::with_capacity(devices);
    for d in 0..devices {
        let mut seed = [7u8; 32];
        seed[..8].copy_from_slice(&(d as u64).to_le_bytes());
        let key = KeyPair::from_seed(seed);
        let id = format!("dev{d}");
        server.store().register(&id, &key.public(), &key.key_id())?;
        let mut envelopes = Vec::new();
        for seq in 1..=per_device {
            let e = EncodedDelta::top_k("w", &[width, width], &delta, None, 1024)?;
            let view = e.delta.as_delta();
            let body = UpdateDraft {
                model_id: "load",
                base_version: base,
                device_id: &id,
                seq,
                num_examples: 1,
                metrics: &[],
                deltas: &[view],
            }
            .encode()?;
            envelopes.push(sign_envelope(&key, &body)?);
        }
        work.push(envelopes);
    }

    let barrier = Arc::new(Barrier::new(devices + 1));
    let handles: Vec<_> = work
        .into_iter()
        .map(|envelopes| {
            let (url, barrier) = (url.clone(), barrier.clone());
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    barrier.wait();
                    let mut latencies = Vec::new();
                    let mut retries = 0u64;
                    let mut acked = 0u64;
                    for env in envelopes {
                        let t = Instant::now();
                        for attempt in 0..6u32 {
                            match agent.post(&url).send(env.as_slice()) {
                                Ok(r) if r.status() == 200 => {
                                    latencies.push(t.elapsed());
                                    acked += 1;
                                    break;
                                }
                                _ => {
                                    retries += 1;
                                    thread::sleep(Duration::from_millis(20 << attempt));
                                }
                            }
                        }
                    }
                    (latencies, retries, acked)
                })
        })
        .collect::<Result<_, _>>()?;
    barrier.wait();
    let start = Instant::now();
    let mut latencies = Vec::new();
    let (mut retries, mut acked) = (0, 0);
    for h in handles {
        let (l, r, a) = h.join().map_err(|_| "a device thread panicked")?;
        latencies.extend(l);
        retries += r;
        acked += a;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
    };
    let keys = server.store().update_keys()?;
    let mut unique = keys.clone();
    unique.dedup();
    let sent = devices as u64 * per_device;
    // Keys are unique by construction; more stored than sent would be duplication.
    let extra = (unique.len() as u64).saturating_sub(sent);
    println!(
        "{}",
        serde_json::json!({
            "devices": devices,
            "updates": sent,
            "seconds": elapsed.as_secs_f64(),
            "updates_per_s": latencies.len() as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.5).map(|d| d.as_secs_f64() * 1e3),
            "p99_ms": pct(0.99).map(|d| d.as_secs_f64() * 1e3),
            "acknowledged": acked,
            "retried_requests": retries,
            "lost": acked.saturating_sub(unique.len() as u64),
            "duplicated": (keys.len() - unique.len()) as u64 + extra,
        })
    );
    Ok(())
}
