//! Retention: a busy server keeps the newest versions (and the current one, the last
//! rollback's target and version 1), turns consumed updates into digests after a grace,
//! compacts its store at startup, and still answers a resent update "duplicate" and a
//! reused sequence number "conflict" once the bytes are gone.

mod common;

use std::time::Duration;

use common::*;
use pupil_format::{ModelBuilder, ModelFile};
use pupil_sync::client::Client;
use pupil_sync::server::{finite_gate, Server, ServerConfig, Submitted};
use pupil_sync::store::Retention;
use pupil_sync::KeyPair;

/// Tensor `w` of 256 × 256 (256 KiB of f32): versions weigh something on disk.
const WIDTH: u64 = 256;

fn wide_model() -> Vec<u8> {
    let mut b = ModelBuilder::new("tiny", "mlp").unwrap();
    b.add_f32("w", &[WIDTH, WIDTH], &vec![0.5; (WIDTH * WIDTH) as usize])
        .unwrap();
    b.to_bytes().unwrap()
}

fn config(versions: u64, update_grace_secs: u64) -> ServerConfig {
    ServerConfig {
        max_staleness: 1_000_000,
        retention: Retention {
            versions,
            update_grace_secs,
        },
        ..quiet()
    }
}

/// Update `seq` of device `d`: every weight of `w` moved by `step`.
fn update(key: &KeyPair, seq: u64, base: [u8; 32], step: f32) -> Vec<u8> {
    let values = vec![step; (WIDTH * WIDTH) as usize];
    signed(
        key,
        &body("d", seq, base, &[("w", &[WIDTH, WIDTH], &values)]),
    )
}

/// A server with `config` serving the wide model, device `d` registered with its key,
/// and the model's content hash (the base of every update).
fn start_registered(config: ServerConfig) -> (TestServer, KeyPair, [u8; 32]) {
    let t = start_with(config, wide_model());
    let key = KeyPair::from_seed([7; 32]);
    Client::new(&t.url)
        .register("d", &key, Some(TOKEN))
        .unwrap();
    let base = ModelFile::from_bytes(wide_model()).unwrap().content_hash();
    (t, key, base)
}

#[test]
fn old_versions_and_consumed_update_bytes_are_pruned_and_resent_updates_still_answer() {
    let (t, key, base) = start_registered(config(3, 0));
    let rounds = 30;
    for seq in 1..=rounds {
        let env = update(&key, seq, base, 1e-3);
        assert_eq!(t.server.submit(&env).unwrap(), Submitted::Accepted);
        let record = t.server.run_round().unwrap().unwrap();
        assert_eq!(record.published, Some(seq + 1), "{record:?}");
    }
    let store = t.server.store();
    let kept: Vec<u64> = store
        .versions()
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(kept, [1, 29, 30, 31], "version 1 and the newest three");
    assert_eq!(store.version_bytes(2).unwrap(), None);
    assert_eq!(store.update_keys().unwrap().len(), rounds as usize);
    assert_eq!(store.get_update("d", 1).unwrap(), None, "bytes pruned");

    // A resent update whose bytes are gone is still a duplicate; new content under a
    // used number is still refused; its base, version 1, is still known.
    let resent = update(&key, 1, base, 1e-3);
    assert_eq!(t.server.submit(&resent).unwrap(), Submitted::Duplicate);
    let other = update(&key, 1, base, 2e-3);
    assert_eq!(t.server.submit(&other).unwrap_err().kind, "seq_conflict");

    // A rollback's target survives a restart with a tighter retention, and the store
    // is compacted: about three versions of 256 KiB, not thirty.
    assert!(t.server.rollback(29).unwrap());
    let dir = t.dir.path().to_owned();
    let TestServer {
        server,
        runtime,
        dir: _keep,
        ..
    } = t;
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(server);
    let before = std::fs::metadata(dir.join("store.redb")).unwrap().len();
    let reopened = Server::open(&dir, config(1, 0), finite_gate()).unwrap();
    let kept: Vec<u64> = reopened
        .store()
        .versions()
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(
        kept,
        [1, 29, 31],
        "version 1, the current (rolled back) and the newest"
    );
    assert_eq!(reopened.current_meta().unwrap().version, 29);
    let after = std::fs::metadata(dir.join("store.redb")).unwrap().len();
    // A store holding version 1 only, compacted the same way, is the floor.
    let fresh = tempfile::tempdir().unwrap();
    Server::open(fresh.path(), config(1, 0), finite_gate())
        .unwrap()
        .import_model(wide_model())
        .unwrap();
    drop(Server::open(fresh.path(), config(1, 0), finite_gate()).unwrap());
    let floor = std::fs::metadata(fresh.path().join("store.redb"))
        .unwrap()
        .len();
    let model = wide_model().len() as u64;
    eprintln!("store: {before} bytes before the restart, {after} after; one version alone {floor}");
    assert!(
        after <= floor + 3 * model,
        "store {after} bytes after compaction (was {before}; one version alone: {floor})"
    );
}

#[test]
fn consumed_updates_keep_their_bytes_during_the_grace() {
    let (t, key, base) = start_registered(config(32, 3600));
    let env = update(&key, 1, base, 1e-3);
    t.server.submit(&env).unwrap();
    t.server.run_round().unwrap().unwrap();
    assert_eq!(t.server.store().get_update("d", 1).unwrap(), Some(env));
}
