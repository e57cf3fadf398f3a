//! Push and pull updates: a device sends a signed delta to an upstream server, the server
//! aggregates it into a new version, and the device pulls and verifies that version.
//!
//!     cargo run --release --example sync_updates
//!
//! The server runs in this process on loopback with its store in a temporary folder; point
//! `Client::new` at a real `pupil serve` instead.

use std::time::Duration;

use pupil::format::ModelFile;
use pupil_sync::client::{Client, DeltaEncoding, Outbox, PullOutcome, UpdateOptions};
use pupil_sync::server::{finite_gate, serve, Server, ServerConfig};
use pupil_sync::KeyPair;
use pupil_wire::Metric;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let student = include_bytes!("../models/mnist-student.pupil").to_vec();

    // Upstream: a durable store, a signing key, version 1 = the shipped student.
    let config = ServerConfig {
        min_updates: 1,
        deadline: Duration::from_secs(3600),
        admin_token: Some("secret".into()),
        ..Default::default()
    };
    let server = Server::open(&dir.path().join("server"), config, finite_gate())?;
    server.import_model(student.clone())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    runtime.spawn(serve(server.clone(), listener, std::future::pending()));

    // The device: its own key, registered once; the server's key pinned once.
    let client = Client::new(&url);
    let key = KeyPair::load_or_create(&dir.path().join("device.key"))?;
    client.register("phone-1", &key, Some("secret"))?;
    let server_key = client.server_key()?;

    // A refined head: here a small nudge to the last layer's bias. One call builds the
    // delta of what changed, encodes it (int8 per row), signs it and queues it durably.
    let base = ModelFile::from_bytes(student)?;
    let mut bias = base.to_f32("mlp.2.bias")?;
    bias.iter_mut().for_each(|b| *b += 0.01);
    let refined = vec![("mlp.2.bias".to_string(), vec![10], bias)];
    let outbox = Outbox::open(&dir.path().join("outbox"))?;
    let options = UpdateOptions {
        device_id: "phone-1",
        encoding: DeltaEncoding::Int8,
        num_examples: 100,
        metrics: &[Metric {
            name: "loss",
            value: 0.1,
        }],
        personal: &[],
    };
    let seq = outbox.queue_update(&key, &base, &refined, &options)?.seq;
    // Queued durably first: a crash now loses nothing; push retries with backoff.
    let report = client.push(&key, &outbox)?;
    println!("update {seq}: accepted {:?}", report.accepted);

    // The server's round policy (1 update) aggregates and publishes version 2.
    let model_path = dir.path().join("model.pupil");
    for _ in 0..100 {
        if client.latest(&server_key)?.meta.version == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match client.pull(&model_path, &server_key)? {
        PullOutcome::Updated(m) | PullOutcome::UpToDate(m) => {
            println!("pulled version {} (signature and hash verified)", m.version)
        }
    }
    let bias = ModelFile::open(&model_path)?.to_f32("mlp.2.bias")?;
    let before = base.to_f32("mlp.2.bias")?;
    println!("bias[0]: {:.4} -> {:.4}", before[0], bias[0]);
    Ok(())
}
