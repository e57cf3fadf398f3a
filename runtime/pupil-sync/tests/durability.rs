//! The server runs as a child process and is SIGKILLed while devices upload
//! and while it aggregates; after restarts on the same store every
//! acknowledged update is there exactly once, every round counted its updates
//! once, and every published version is intact.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use pupil_format::ModelFile;
use pupil_sync::client::{ChunkPolicy, Client, Outbox, RetryPolicy};
use pupil_sync::store::Store;
use pupil_sync::KeyPair;

const DEVICES: usize = 6;
const PER_DEVICE: u64 = 25;

/// Starts the server binary on `store`; returns it and its URL.
fn spawn(store: &Path, model: &Path, min_updates: u64) -> (Child, String) {
    let min_updates = min_updates.to_string();
    // Every update refines version 1; rounds must not make them stale.
    let args = [
        "--min-updates",
        &min_updates,
        "--deadline-ms",
        "50",
        "--max-staleness",
        "1000000",
    ];
    spawn_server(store, model, &args)
}

/// A client that uploads updates longer than 64 bytes in 64-byte chunks when `chunked`.
fn client(url: &str, chunked: bool) -> Client {
    let client = Client::new(url);
    if chunked {
        client.with_chunks(ChunkPolicy {
            threshold: 64,
            size: 64,
        })
    } else {
        client
    }
}

/// Pushes every device's outbox (signed with its key) until `stop`, the first `chunked`
/// devices in 64-byte chunks; errors (the server is gone) are retried.
fn pusher(
    url: String,
    keys: Arc<Vec<KeyPair>>,
    outboxes: Arc<Vec<Outbox>>,
    chunked: usize,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let retry = RetryPolicy {
            attempts: 2,
            base: Duration::from_millis(5),
            max: Duration::from_millis(10),
        };
        let whole = client(&url, false).with_retry(retry);
        let chunks = client(&url, true).with_retry(retry);
        while !stop.load(Ordering::Relaxed) {
            for (i, (k, o)) in keys.iter().zip(outboxes.iter()).enumerate() {
                let client = if i < chunked { &chunks } else { &whole };
                let _ = client.push(k, o);
            }
        }
    })
}

/// Waits until the server at `url` has no update pending.
fn wait_until_aggregated(url: &str) {
    assert!(wait_for(10, || {
        let mut resp = agent().get(&format!("{url}/v1/metrics")).call().unwrap();
        let m: serde_json::Value =
            serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        m["updates_pending"].as_u64() == Some(0)
    }));
}

/// Checks that `s` holds updates 1..=`per_device` of devices `dev0`.. `dev{devices-1}`,
/// each once, and that rounds aggregated each once.
fn assert_each_update_once(s: &Store, devices: usize, per_device: u64) {
    let mut expected: Vec<(String, u64)> = (0..devices)
        .flat_map(|i| (1..=per_device).map(move |seq| (format!("dev{i}"), seq)))
        .collect();
    expected.sort();
    assert_eq!(
        s.update_keys().unwrap(),
        expected,
        "every acknowledged update is stored exactly once"
    );
    let [stored, pending, _, _] = s.counts().unwrap();
    let aggregated: u64 = s.rounds().unwrap().iter().map(|r| r.updates).sum();
    assert_eq!(
        aggregated + pending,
        stored,
        "each update is aggregated exactly once"
    );
}

#[test]
fn sigkill_loses_no_acknowledged_update_and_counts_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let model = dir.path().join("model.pupil");
    std::fs::write(&model, model_bytes()).unwrap();
    let base = base_hash();

    let (mut server, url) = spawn(&store, &model, 4);
    let keys: Vec<KeyPair> = (0..DEVICES)
        .map(|i| KeyPair::from_seed([40 + i as u8; 32]))
        .collect();
    let outboxes: Vec<Outbox> = (0..DEVICES)
        .map(|i| Outbox::open(&dir.path().join(format!("outbox{i}"))).unwrap())
        .collect();
    for (i, (key, outbox)) in keys.iter().zip(&outboxes).enumerate() {
        let device = format!("dev{i}");
        Client::new(&url)
            .register(&device, key, Some(TOKEN))
            .unwrap();
        for _ in 0..PER_DEVICE {
            outbox
                .enqueue(key, |seq| {
                    Ok(body(
                        &device,
                        seq,
                        base,
                        &[("b", &[3], &[0.001, 0.0, -0.001])],
                    ))
                })
                .unwrap();
        }
    }
    let keys = Arc::new(keys);
    let outboxes = Arc::new(outboxes);
    let mut url = url;
    // Kill the server three times while devices upload and rounds run.
    for kill in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = pusher(url.clone(), keys.clone(), outboxes.clone(), 0, stop.clone());
        thread::sleep(Duration::from_millis(150 + 100 * kill));
        server.kill().unwrap();
        server.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
        (server, url) = spawn(&store, &model, 4);
    }
    // Finish uploading against the last server.
    let client = Client::new(&url);
    for (k, o) in keys.iter().zip(outboxes.iter()) {
        client.push(k, o).unwrap();
        let status = o.status().unwrap();
        assert!(
            status.queued.is_empty() && status.rejected.is_empty(),
            "{status:?}"
        );
    }
    wait_until_aggregated(&url);
    server.kill().unwrap();
    server.wait().unwrap();

    let s = Store::open(&store).unwrap();
    assert_each_update_once(&s, DEVICES, PER_DEVICE);
    assert!(s.counts().unwrap()[2] >= 2, "rounds published versions");
    let mut hashes = Vec::new();
    for v in s.versions().unwrap() {
        let bytes = s.version_bytes(v.version).unwrap().unwrap();
        let m = ModelFile::from_bytes(bytes).unwrap();
        assert_eq!(
            pupil_sync::hex::encode(&m.content_hash()),
            v.hash,
            "version {} intact",
            v.version
        );
        if let Some(parent) = &v.parent {
            assert!(
                hashes.contains(parent),
                "version {}'s parent was published before",
                v.version
            );
        }
        hashes.push(v.hash);
    }
}

#[test]
fn many_sigkills_under_whole_and_chunked_pushes_leave_every_device_able_to_upload() {
    const KILLS: u64 = 25;
    const MIXED: usize = 8;
    const EACH: u64 = 80;
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let model = dir.path().join("model.pupil");
    std::fs::write(&model, model_bytes()).unwrap();
    let base = base_hash();
    let (mut server, mut url) = spawn(&store, &model, 4);
    let keys: Vec<KeyPair> = (0..MIXED)
        .map(|i| KeyPair::from_seed([80 + i as u8; 32]))
        .collect();
    let outboxes: Vec<Outbox> = (0..MIXED)
        .map(|i| Outbox::open(&dir.path().join(format!("outbox{i}"))).unwrap())
        .collect();
    let enqueue = |i: usize, key: &KeyPair, outbox: &Outbox| {
        let device = format!("dev{i}");
        outbox
            .enqueue(key, |seq| {
                Ok(body(
                    &device,
                    seq,
                    base,
                    &[("w", &[2, 3], &[1e-3, 0.0, -1e-3, 2e-3, 0.0, -2e-3])],
                ))
            })
            .unwrap();
    };
    for (i, (key, outbox)) in keys.iter().zip(&outboxes).enumerate() {
        Client::new(&url)
            .register(&format!("dev{i}"), key, Some(TOKEN))
            .unwrap();
        (0..EACH).for_each(|_| enqueue(i, key, outbox));
    }
    let keys = Arc::new(keys);
    let outboxes = Arc::new(outboxes);
    let mut under_load = 0;
    for kill in 0..KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = pusher(
            url.clone(),
            keys.clone(),
            outboxes.clone(),
            MIXED / 2,
            stop.clone(),
        );
        // Kill at varied points: mid-chunk, mid-commit, mid-round.
        thread::sleep(Duration::from_millis(20 + (kill * 37) % 90));
        server.kill().unwrap();
        server.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
        (server, url) = spawn(&store, &model, 4);
        let queued: usize = outboxes
            .iter()
            .map(|o| o.status().unwrap().queued.len())
            .sum();
        under_load += u64::from(queued > 0);
    }
    // Every device can still upload: what is queued goes, and so does a new update.
    for (i, (k, o)) in keys.iter().zip(outboxes.iter()).enumerate() {
        enqueue(i, k, o);
        let report = client(&url, i < MIXED / 2).push(k, o).unwrap();
        let status = o.status().unwrap();
        assert!(
            status.queued.is_empty() && status.rejected.is_empty(),
            "device {i}: {status:?} after {report:?}"
        );
    }
    wait_until_aggregated(&url);
    server.kill().unwrap();
    server.wait().unwrap();

    let s = Store::open(&store).unwrap();
    assert_each_update_once(&s, MIXED, EACH + 1);
    assert_eq!(
        s.uploads().unwrap(),
        [],
        "no upload left behind to hold a slot"
    );
    eprintln!(
        "{KILLS} SIGKILLs ({under_load} with updates still queued), {} updates ({} chunked) in {:.1} s",
        MIXED * (EACH as usize + 1),
        (EACH as usize + 1) * MIXED / 2,
        started.elapsed().as_secs_f64()
    );
}
