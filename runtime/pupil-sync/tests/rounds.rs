//! What a round does with updates it cannot use: deltas to integer or data
//! tensors are refused at submit and, when stored anyway, set aside without
//! stopping the round; and no device outweighs the others by claiming more
//! examples than the cap.

mod common;

use common::*;
use pupil_format::{DType, ModelBuilder, ModelFile};
use pupil_sync::client::Client;
use pupil_sync::server::{ServerConfig, Submitted};
use pupil_sync::KeyPair;

/// The test model plus what a converted model or a refined student carries
/// beside its weights: a U8 tokenizer, I8 and I32 tensors, and F32 replay labels.
fn model_with_data() -> Vec<u8> {
    let mut b = ModelBuilder::new("tiny", "mlp").unwrap();
    b.add_f32("b", &[3], &B).unwrap();
    b.add_f32("w", &[2, 3], &W).unwrap();
    b.add_tensor("tokenizer.json", DType::U8, &[4], b"{}  ".to_vec())
        .unwrap();
    b.add_tensor("q", DType::I8, &[2], vec![1, 2]).unwrap();
    b.add_tensor("ids", DType::I32, &[1], 7i32.to_le_bytes().to_vec())
        .unwrap();
    b.add_f32("replay.labels", &[2], &[3.0, 5.0]).unwrap();
    b.to_bytes().unwrap()
}

/// An update body from `device` claiming `examples` examples, with f16 deltas.
fn body_with(
    device: &str,
    seq: u64,
    base: [u8; 32],
    examples: u64,
    deltas: &[(&str, &[u64], &[f32])],
) -> Vec<u8> {
    claiming_body("tiny", device, seq, base, examples, deltas)
}

/// The values of tensor `name` of the current version.
fn current(t: &TestServer, name: &str) -> Vec<f32> {
    let v = t.server.current_meta().unwrap().version;
    let bytes = t.server.store().version_bytes(v).unwrap().unwrap();
    ModelFile::from_bytes(bytes).unwrap().to_f32(name).unwrap()
}

/// Registers `device` with `key` on `t`.
fn register(t: &TestServer, device: &str, key: &KeyPair) {
    Client::new(&t.url)
        .register(device, key, Some(TOKEN))
        .unwrap();
}

#[test]
fn deltas_to_integer_and_data_tensors_are_refused_at_submit() {
    let t = start_with(quiet(), model_with_data());
    let key = KeyPair::from_seed([1; 32]);
    register(&t, "d", &key);
    let base = t.server.current_meta().unwrap().hash;
    let base = pupil_sync::hex::decode::<32>(&base).unwrap();
    let refused: [(&str, &[u64], &[f32]); 5] = [
        ("tokenizer.json", &[4], &[1.0; 4]),
        ("q", &[2], &[1.0; 2]),
        ("ids", &[1], &[1.0]),
        ("replay.labels", &[2], &[1.0; 2]),
        // One bad delta beside a good one spoils the whole update.
        ("replay.labels", &[2], &[0.5; 2]),
    ];
    for (seq, (name, shape, values)) in (1..).zip(refused) {
        let mut deltas = vec![(name, shape, values)];
        if seq == 5 {
            deltas.insert(0, ("b", &[3], &[0.1; 3]));
        }
        let env = signed(&key, &body_with("d", seq, base, 10, &deltas));
        let (status, json) = post(&format!("{}/v1/updates", t.url), &env, None);
        assert_eq!(
            (status, json["error"].as_str()),
            (422, Some("not_trainable")),
            "{name}: {json}"
        );
        let message = json["message"].as_str().unwrap();
        assert!(message.contains(name), "{message}");
    }
    assert_eq!(t.server.store().counts().unwrap()[..2], [0, 0]);
    let good = signed(
        &key,
        &body_with("d", 6, base, 10, &[("b", &[3], &[0.1; 3])]),
    );
    assert_eq!(t.server.submit(&good).unwrap(), Submitted::Accepted);
}

#[test]
fn an_update_a_round_cannot_use_is_set_aside_and_the_round_goes_on() {
    let t = start_with(quiet(), model_with_data());
    let (alice, bob) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
    register(&t, "alice", &alice);
    register(&t, "bob", &bob);
    let base = pupil_sync::hex::decode::<32>(&t.server.current_meta().unwrap().hash).unwrap();
    let store = t.server.store();
    // Updates an older server let through: deltas to the tokenizer and to the labels,
    // and bytes that do not decode.
    let tokenizer = signed(
        &bob,
        &body_with("bob", 1, base, 10, &[("tokenizer.json", &[4], &[1.0; 4])]),
    );
    let labels = signed(
        &bob,
        &body_with("bob", 2, base, 10, &[("replay.labels", &[2], &[1.0; 2])]),
    );
    store.insert_update("bob", 1, &tokenizer).unwrap();
    store.insert_update("bob", 2, &labels).unwrap();
    store.insert_update("bob", 3, b"not an update").unwrap();
    let good = signed(
        &alice,
        &body_with("alice", 1, base, 10, &[("b", &[3], &[1.0, 1.0, 1.0])]),
    );
    assert_eq!(t.server.submit(&good).unwrap(), Submitted::Accepted);

    let record = t.server.run_round().unwrap().unwrap();
    assert_eq!((record.updates, record.set_aside), (1, 3), "{record:?}");
    assert_eq!(record.published, Some(2), "{record:?}");
    assert_eq!(store.counts().unwrap()[1], 0, "nothing is left pending");
    let aside = store.set_aside().unwrap();
    let keys: Vec<_> = aside.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        keys,
        [("bob".into(), 1), ("bob".into(), 2), ("bob".into(), 3)]
    );
    assert!(aside[0].1.contains("tokenizer.json"), "{aside:?}");
    assert!(aside[1].1.contains("data tensor"), "{aside:?}");
    assert!(aside[2].1.contains("does not decode"), "{aside:?}");
    let b = current(&t, "b");
    assert!(
        b.iter()
            .zip(B)
            .all(|(got, was)| (got - was - 1.0).abs() < 1e-3),
        "{b:?}"
    );
    assert_eq!(current(&t, "replay.labels"), [3.0, 5.0]);
    let metrics = get_json(&format!("{}/v1/metrics", t.url));
    assert_eq!(metrics["updates_set_aside"], 3, "{metrics}");

    // The next round runs as usual.
    let v2 = pupil_sync::hex::decode::<32>(&t.server.current_meta().unwrap().hash).unwrap();
    let next = signed(
        &alice,
        &body_with("alice", 2, v2, 10, &[("b", &[3], &[1.0, 1.0, 1.0])]),
    );
    assert_eq!(t.server.submit(&next).unwrap(), Submitted::Accepted);
    let record = t.server.run_round().unwrap().unwrap();
    assert_eq!((record.published, record.set_aside), (Some(3), 0));
}

/// GETs `url` as JSON.
fn get_json(url: &str) -> serde_json::Value {
    let text = agent()
        .get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn no_device_outweighs_the_cap_on_examples() {
    let t = start(ServerConfig {
        max_examples: 10,
        ..quiet()
    });
    let (honest, greedy) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
    register(&t, "honest", &honest);
    register(&t, "greedy", &greedy);
    let up = signed(
        &honest,
        &body_with("honest", 1, base_hash(), 10, &[("b", &[3], &[1.0; 3])]),
    );
    let down = signed(
        &greedy,
        &body_with(
            "greedy",
            1,
            base_hash(),
            u64::MAX,
            &[("b", &[3], &[-1.0; 3])],
        ),
    );
    t.server.submit(&up).unwrap();
    t.server.submit(&down).unwrap();
    let record = t.server.run_round().unwrap().unwrap();
    assert_eq!(record.published, Some(2), "{record:?}");
    // Both count for 10 examples: the deltas cancel.
    let b = current(&t, "b");
    assert!(
        b.iter().zip(B).all(|(got, was)| (got - was).abs() < 1e-3),
        "{b:?} should stay at {B:?}"
    );
}

/// An adapter file: `x.lora_a` `[2, 3]` and `x.lora_b` `[4, 2]`.
const A0: [f32; 6] = [1.0, 0.0, 0.5, 0.0, 1.0, -0.5];
const B0: [f32; 8] = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.5, -1.0];

fn adapter_model() -> Vec<u8> {
    let mut b = ModelBuilder::new("tiny", "llama-lora").unwrap();
    b.add_f32("x.lora_a", &[2, 3], &A0).unwrap();
    b.add_f32("x.lora_b", &[4, 2], &B0).unwrap();
    b.to_bytes().unwrap()
}

/// `b a` of `[4, 2]` and `[2, 3]` factors.
fn product(b: &[f32], a: &[f32]) -> Vec<f32> {
    (0..12)
        .map(|k| (0..2).map(|j| b[k / 3 * 2 + j] * a[j * 3 + k % 3]).sum())
        .collect()
}

/// Two devices learned the same `B0 A0` in different bases (`B0 D`, `D^-1 A0`); the
/// round's adapter keeps that product with the product rule and loses it by averaging
/// the factors apart.
fn merged_product(rule: pupil_sync::lora_merge::Merge) -> Vec<f32> {
    let t = start_with(
        ServerConfig {
            lora_merge: rule,
            ..quiet()
        },
        adapter_model(),
    );
    let base = pupil_sync::hex::decode::<32>(&t.server.current_meta().unwrap().hash).unwrap();
    for (i, d) in [[2.0f32, -1.0], [-1.0, 0.5]].iter().enumerate() {
        let name = format!("d{i}");
        let key = KeyPair::from_seed([i as u8 + 1; 32]);
        register(&t, &name, &key);
        let db: Vec<f32> = (0..8).map(|k| B0[k] * d[k % 2] - B0[k]).collect();
        let da: Vec<f32> = (0..6).map(|k| A0[k] / d[k / 3] - A0[k]).collect();
        let deltas: [(&str, &[u64], &[f32]); 2] =
            [("x.lora_a", &[2, 3], &da), ("x.lora_b", &[4, 2], &db)];
        let env = signed(&key, &body_with(&name, 1, base, 10, &deltas));
        assert_eq!(t.server.submit(&env).unwrap(), Submitted::Accepted);
    }
    let record = t.server.run_round().unwrap().unwrap();
    assert_eq!(record.published, Some(2), "{record:?}");
    product(&current(&t, "x.lora_b"), &current(&t, "x.lora_a"))
}

#[test]
fn lora_rounds_merge_the_products_of_the_factors() {
    use pupil_sync::lora_merge::Merge;
    let want = product(&B0, &A0);
    let err = |got: &[f32]| {
        got.iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max)
    };
    let sound = merged_product(Merge::Product);
    assert!(err(&sound) < 1e-3, "product rule: {sound:?} vs {want:?}");
    let naive = merged_product(Merge::Factors);
    assert!(
        err(&naive) > 0.5,
        "factor averaging kept the product: {naive:?}"
    );
}
