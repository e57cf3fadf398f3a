//! A round's memory follows the model and the updates' bytes, not one model-sized copy
//! per update: 200 sparse updates of a 4 MiB tensor, under FedAvg and under the
//! coordinate-wise median, with the peak of live heap bytes counted by the allocator.
//! (Before rounds streamed their updates, 200 updates of 192 bytes took a median
//! round to 738 MiB.)

mod common;

use common::*;
use pupil_format::{ModelBuilder, ModelFile};
use pupil_sync::aggregate::Rule;
use pupil_sync::server::{finite_gate, Server, ServerConfig, Submitted};
use pupil_sync::KeyPair;
use pupil_wire::update::{EncodedDelta, UpdateDraft};

#[path = "../../../tests/support/counting_alloc.rs"]
mod counting_alloc;

const ROWS: u64 = 1024;
const COLS: u64 = 1024;
const UPDATES: u64 = 200;

fn model() -> Vec<u8> {
    let mut b = ModelBuilder::new("tiny", "mlp").unwrap();
    b.add_f32("w", &[ROWS, COLS], &vec![0.0; (ROWS * COLS) as usize])
        .unwrap();
    b.to_bytes().unwrap()
}

/// Device `i`'s update: 8 of the tensor's 2^20 weights (top-k).
fn sparse_update(key: &KeyPair, device: &str, i: u64, base: [u8; 32]) -> Vec<u8> {
    let mut values = vec![0.0f32; (ROWS * COLS) as usize];
    for j in 0..8u64 {
        values[((i * 7919 + j * 104_729) % (ROWS * COLS)) as usize] = 1e-2;
    }
    let top = EncodedDelta::top_k("w", &[ROWS, COLS], &values, None, 8).unwrap();
    let body = UpdateDraft {
        model_id: "tiny",
        base_version: base,
        device_id: device,
        seq: 1,
        num_examples: 10,
        metrics: &[],
        deltas: &[top.delta.as_delta()],
    }
    .encode()
    .unwrap();
    signed(key, &body)
}

/// The peak of live heap bytes above the level before, during one round of `rule`
/// over [`UPDATES`] sparse updates.
fn round_peak(rule: Rule) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig { rule, ..quiet() };
    let server = Server::open(dir.path(), config, finite_gate()).unwrap();
    server.import_model(model()).unwrap();
    let base = ModelFile::from_bytes(model()).unwrap().content_hash();
    for i in 0..UPDATES {
        let device = format!("d{i}");
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i + 1).to_le_bytes());
        let key = KeyPair::from_seed(seed);
        server
            .store()
            .register(&device, &key.public(), &key.key_id())
            .unwrap();
        let env = sparse_update(&key, &device, i, base);
        assert_eq!(server.submit(&env).unwrap(), Submitted::Accepted);
    }
    let (record, peak) = counting_alloc::peak_during(|| server.run_round().unwrap().unwrap());
    assert_eq!(record.updates, UPDATES, "{record:?}");
    assert!(record.published.is_some(), "{record:?}");
    peak
}

#[test]
fn a_round_of_sparse_updates_costs_a_few_models_not_one_per_update() {
    let model_bytes = (ROWS * COLS * 4) as usize;
    for rule in [Rule::FedAvg, Rule::Median { clip_norm: 10.0 }] {
        let peak = round_peak(rule);
        eprintln!(
            "{rule:?}: peak {:.1} MiB over the round ({} updates, model {:.1} MiB)",
            peak as f64 / (1 << 20) as f64,
            UPDATES,
            model_bytes as f64 / (1 << 20) as f64
        );
        assert!(
            peak < 16 * model_bytes,
            "{rule:?}: a round took {peak} bytes, {}× the model",
            peak / model_bytes
        );
    }
}
