//! Devices queue updates, push them, the server aggregates a round, devices
//! pull the verified new version; rollback brings the old one back.

mod common;

use std::time::Duration;

use common::*;
use pupil_sync::aggregate::ServerOpt;
use pupil_sync::client::{ChunkPolicy, Client, Outbox, PullOutcome, RetryPolicy};
use pupil_sync::server::{finite_gate, Server, ServerConfig};
use pupil_sync::KeyPair;

#[test]
fn push_aggregate_pull_and_roll_back() {
    let t = start(ServerConfig {
        min_updates: 2,
        deadline: Duration::from_secs(3600),
        ..ServerConfig::default()
    });
    let client = Client::new(&t.url);
    let server_key = client.server_key().unwrap();
    assert_eq!(server_key, t.server.public_key());
    let base = base_hash();
    let deltas: [[f32; 3]; 2] = [[0.5, 0.0, -0.5], [0.25, 1.0, 0.5]];
    for (i, d) in deltas.iter().enumerate() {
        let device = format!("dev{i}");
        let key = KeyPair::from_seed([10 + i as u8; 32]);
        client.register(&device, &key, Some(TOKEN)).unwrap();
        let outbox = Outbox::open(&t.dir.path().join(format!("outbox{i}"))).unwrap();
        let seq = outbox
            .enqueue(&key, |seq| Ok(body(&device, seq, base, &[("b", &[3], d)])))
            .unwrap();
        assert_eq!(seq, 1);
        let report = client.push(&key, &outbox).unwrap();
        assert_eq!(report.accepted, [1]);
        assert!(outbox.status().unwrap().queued.is_empty());
    }
    assert!(
        wait_for(10, || t.server.current_meta().unwrap().version == 2),
        "no round ran"
    );

    let model = t.dir.path().join("device.pupil");
    let PullOutcome::Updated(meta) = client.pull(&model, &server_key).unwrap() else {
        panic!("expected an update");
    };
    assert_eq!(meta.version, 2);
    assert_eq!(meta.metrics["device.loss"], 0.5);
    // Equal example counts: the mean delta is added to the base weights.
    let expected: Vec<f32> = (0..3)
        .map(|i| B[i] + (deltas[0][i] + deltas[1][i]) / 2.0)
        .collect();
    assert!(tensor_close(&model, "b", &expected, 1e-3));
    assert!(tensor_close(&model, "w", &W, 0.0));
    let m = pupil_format::ModelFile::open(&model).unwrap();
    assert_eq!(m.info().parent, Some(base));
    assert!(matches!(
        client.pull(&model, &server_key).unwrap(),
        PullOutcome::UpToDate(_)
    ));

    // A model signed by another key is refused and the local file is kept.
    std::fs::remove_file(&model).unwrap();
    let err = client
        .pull(&model, &KeyPair::from_seed([99; 32]).public())
        .unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    assert!(!model.exists());

    let (s, _) = post(
        &format!("{}/v1/rollback", t.url),
        br#"{"version":1}"#,
        Some(TOKEN),
    );
    assert_eq!(s, 200);
    client.pull(&model, &server_key).unwrap();
    assert!(tensor_close(&model, "b", &B, 0.0));
    let (s, j) = post(
        &format!("{}/v1/rollback", t.url),
        br#"{"version":9}"#,
        Some(TOKEN),
    );
    assert_eq!((s, j["error"].as_str()), (404, Some("no_such_version")));

    let mut resp = agent()
        .get(&format!("{}/v1/metrics", t.url))
        .call()
        .unwrap();
    let metrics: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        (
            metrics["updates_stored"].as_u64(),
            metrics["rounds"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(metrics["versions"].as_u64(), Some(2));
}

#[test]
fn push_keeps_updates_queued_while_the_server_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::from_seed([20; 32]);
    let outbox = Outbox::open(dir.path()).unwrap();
    outbox
        .enqueue(&key, |seq| Ok(body("d", seq, [0; 32], &[])))
        .unwrap();
    let retry = RetryPolicy {
        attempts: 3,
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    };
    // Port 9 (discard) on localhost is closed on test machines.
    let err = Client::new("http://127.0.0.1:9")
        .with_retry(retry)
        .push(&key, &outbox)
        .unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    assert_eq!(outbox.status().unwrap().queued, [1]);
}

/// Pushing before registering keeps the updates queued, whole or chunked, and says
/// why; once registered they go. Updates refused for good wait in `rejected/`
/// until requeued.
#[test]
fn push_before_registering_keeps_updates_queued_and_rejected_ones_requeue() {
    let t = start(quiet());
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::from_seed([21; 32]);
    let outbox = Outbox::open(dir.path()).unwrap();
    for _ in 0..2 {
        outbox
            .enqueue(&key, |seq| {
                Ok(body("d", seq, base_hash(), &[("b", &[3], &[0.1; 3])]))
            })
            .unwrap();
    }
    let whole = Client::new(&t.url);
    let chunked = Client::new(&t.url).with_chunks(ChunkPolicy {
        threshold: 0,
        size: 64,
    });
    for client in [&whole, &chunked] {
        let report = client.push(&key, &outbox).unwrap();
        let kept = report.kept.as_ref().expect("the push stops at update 1");
        assert_eq!((kept.seq, kept.kind.as_str()), (1, "unknown_device"));
        assert!(kept.message.contains("pupil sync register"), "{kept:?}");
        assert!(report.rejected.is_empty() && report.accepted.is_empty());
        let status = outbox.status().unwrap();
        assert_eq!((status.queued, status.rejected), (vec![1, 2], vec![]));
    }
    whole.register("d", &key, Some(TOKEN)).unwrap();
    let report = chunked.push(&key, &outbox).unwrap();
    assert_eq!((report.accepted, report.kept), (vec![1, 2], None));

    // An update for another model is refused for good, moved aside, and requeued by hand.
    outbox
        .enqueue(&key, |seq| {
            Ok(model_body(
                "other",
                "d",
                seq,
                base_hash(),
                &[("b", &[3], &[0.1; 3])],
            ))
        })
        .unwrap();
    let report = whole.push(&key, &outbox).unwrap();
    assert_eq!(report.rejected, [(3, "wrong_model".to_owned())]);
    assert_eq!(outbox.status().unwrap().rejected, [3]);
    assert_eq!(outbox.requeue(&[]).unwrap(), [3]);
    assert_eq!(outbox.status().unwrap().queued, [3]);
}

/// The server optimizer's state is stored with the version it produced, so a restarted
/// server continues its momentum instead of starting from zero.
#[test]
fn server_momentum_survives_a_restart() {
    let config = ServerConfig {
        min_updates: 1,
        deadline: Duration::from_secs(3600),
        opt: ServerOpt::Momentum {
            lr: 1.0,
            beta: 0.5,
            velocity: Vec::new(),
        },
        ..ServerConfig::default()
    };
    let t = start(config.clone());
    let client = Client::new(&t.url);
    let key = KeyPair::from_seed([42; 32]);
    client.register("m", &key, Some(TOKEN)).unwrap();
    let outbox = Outbox::open(&t.dir.path().join("outbox")).unwrap();
    outbox
        .enqueue(&key, |seq| {
            Ok(body(
                "m",
                seq,
                base_hash(),
                &[("b", &[3], &[0.5, 0.25, -1.0])],
            ))
        })
        .unwrap();
    client.push(&key, &outbox).unwrap();
    assert!(
        wait_for(10, || t.server.current_meta().unwrap().version == 2),
        "no round ran"
    );
    let before = t.server.optimizer();
    let ServerOpt::Momentum { velocity, .. } = &before else {
        panic!("not momentum")
    };
    assert_eq!(velocity.len(), 3);

    let TestServer {
        dir,
        server,
        runtime,
        ..
    } = t;
    drop(runtime);
    drop(server);
    let mut config = config;
    config.admin_token = Some(TOKEN.into());
    let reopened = Server::open(dir.path(), config, finite_gate()).unwrap();
    assert_eq!(reopened.optimizer(), before);
    assert_eq!(reopened.current_meta().unwrap().version, 2);
}
