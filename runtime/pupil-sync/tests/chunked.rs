//! Chunked uploads of large updates: an upload cut off by a SIGKILLed server
//! continues from the bytes the restarted server holds, and is stored once;
//! hostile chunk requests each get their own rejection and change nothing.

mod common;

use std::path::Path;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pupil_format::ModelFile;
use pupil_sync::client::{ChunkPolicy, Client, Outbox, RetryPolicy};
use pupil_sync::server::ServerConfig;
use pupil_sync::store::Store;
use pupil_sync::KeyPair;

/// Starts the server binary with rounds effectively off.
fn spawn_quiet(store: &Path, model: &Path) -> (Child, String) {
    spawn_server(
        store,
        model,
        &["--min-updates", "1000000", "--deadline-ms", "3600000"],
    )
}

/// A large update of the shipped student: f16 deltas of its two hidden layers
/// (about 385 KiB signed).
fn large_update(device: &str, seq: u64, base: [u8; 32]) -> Vec<u8> {
    let w0 = vec![1e-4f32; 200 * 784];
    let w1 = vec![-1e-4f32; 200 * 200];
    model_body(
        "mnist",
        device,
        seq,
        base,
        &[
            ("mlp.0.weight", &[200, 784], &w0),
            ("mlp.1.weight", &[200, 200], &w1),
        ],
    )
}

/// Opens an upload of `envelope` as `key`'s update `seq`; returns its id and offset.
fn open(url: &str, key: &KeyPair, seq: u64, envelope: &[u8]) -> (String, u64) {
    let (status, json) = signed_request(
        url,
        "POST",
        "/v1/uploads",
        Some(key),
        now(),
        &open_body(seq, envelope),
    );
    assert!(status == 200 || status == 201, "{status} {json}");
    (
        json["upload_id"].as_str().unwrap().to_owned(),
        json["offset"].as_u64().unwrap(),
    )
}

#[test]
fn an_upload_cut_off_by_a_sigkill_resumes_from_the_servers_offset_and_counts_once() {
    const CHUNK: usize = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let model = dir.path().join("student.pupil");
    std::fs::write(&model, student_bytes()).unwrap();
    let base = ModelFile::open(&model).unwrap().content_hash();
    let (mut server, url) = spawn_quiet(&store, &model);
    // Device `big` is cut off by hand after three chunks; device `cut` while
    // its client pushes.
    let devices = ["big", "cut"];
    let keys = [KeyPair::from_seed([60; 32]), KeyPair::from_seed([61; 32])];
    let mut outboxes = Vec::new();
    for (device, key) in devices.iter().zip(&keys) {
        Client::new(&url)
            .register(device, key, Some(TOKEN))
            .unwrap();
        let outbox = Outbox::open(&dir.path().join(device)).unwrap();
        outbox
            .enqueue(key, |seq| Ok(large_update(device, seq, base)))
            .unwrap();
        outboxes.push(outbox);
    }
    let envelopes = [outboxes[0].read(1).unwrap(), outboxes[1].read(1).unwrap()];
    let len = envelopes[0].len() as u64;
    assert!(len > 256 << 10, "{len}");

    // `big`: three chunks are acknowledged, then the server is SIGKILLed.
    let (id, offset) = open(&url, &keys[0], 1, &envelopes[0]);
    assert_eq!(offset, 0);
    for i in 0..3 {
        let at = i * CHUNK;
        let path = format!("/v1/uploads/{id}?offset={at}");
        let chunk = &envelopes[0][at..at + CHUNK];
        let (status, json) = signed_request(&url, "PUT", &path, Some(&keys[0]), now(), chunk);
        assert_eq!(
            (status, json["offset"].as_u64()),
            (200, Some((at + CHUNK) as u64))
        );
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let (mut server, url) = spawn_quiet(&store, &model);
    let held = Client::new(&url)
        .upload_state(&keys[0], &id)
        .unwrap()
        .offset;
    assert_eq!(
        held,
        3 * CHUNK as u64,
        "acknowledged chunks survive the kill"
    );

    // `cut`: its client is uploading in small chunks when the server dies.
    let (id2, _) = open(&url, &keys[1], 1, &envelopes[1]);
    let pusher = {
        let (url, key, outbox) = (url.clone(), keys[1].clone(), outboxes[1].clone());
        thread::spawn(move || {
            let retry = RetryPolicy {
                attempts: 2,
                base: Duration::from_millis(5),
                max: Duration::from_millis(10),
            };
            let small = ChunkPolicy {
                threshold: 256 << 10,
                size: 1 << 10,
            };
            let client = Client::new(&url).with_retry(retry).with_chunks(small);
            client.push(&key, &outbox).unwrap_err()
        })
    };
    // Poll often: the kill must land while the upload is under way.
    let client = Client::new(&url);
    let started = Instant::now();
    while !client
        .upload_state(&keys[1], &id2)
        .is_ok_and(|s| s.offset >= 4 << 10)
    {
        assert!(
            started.elapsed().as_secs() < 20,
            "the client never sent its chunks"
        );
        thread::sleep(Duration::from_millis(1));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let err = pusher.join().unwrap();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    let (mut server, url) = spawn_quiet(&store, &model);
    let held2 = Client::new(&url)
        .upload_state(&keys[1], &id2)
        .unwrap()
        .offset;
    assert!(held2 >= 4 << 10 && held2 < len, "{held2}");

    // The next pushes continue both uploads from the restarted server's offsets.
    for (i, held) in [held, held2].into_iter().enumerate() {
        let client = Client::new(&url).with_chunks(ChunkPolicy {
            threshold: 256 << 10,
            size: CHUNK,
        });
        let report = client.push(&keys[i], &outboxes[i]).unwrap();
        let total = envelopes[i].len() as u64;
        assert_eq!(report.accepted, [1], "{report:?}");
        assert_eq!(report.resumed, [(1, held)]);
        assert_eq!(
            report.bytes_sent,
            total - held,
            "no acknowledged byte is sent again"
        );
        eprintln!(
            "{}: {total}-byte update, the server held {held} after the SIGKILL, the next push sent {} (= {total} - {held})",
            devices[i], report.bytes_sent
        );
        assert!(outboxes[i].status().unwrap().queued.is_empty());
        // Opening it again finds it stored.
        let (status, json) = signed_request(
            &url,
            "POST",
            "/v1/uploads",
            Some(&keys[i]),
            now(),
            &open_body(1, &envelopes[i]),
        );
        assert_eq!((status, json["status"].as_str()), (200, Some("duplicate")));
    }
    server.kill().unwrap();
    server.wait().unwrap();

    let s = Store::open(&store).unwrap();
    assert_eq!(
        s.update_keys().unwrap(),
        [("big".to_owned(), 1), ("cut".to_owned(), 1)],
        "each update is stored exactly once"
    );
    assert_eq!(s.counts().unwrap()[..2], [2, 2], "and pending once");
    assert_eq!(s.get_update("big", 1).unwrap().unwrap(), envelopes[0]);
    assert_eq!(s.get_update("cut", 1).unwrap().unwrap(), envelopes[1]);
    assert!(
        s.uploads().unwrap().is_empty(),
        "committed uploads are removed"
    );
}

/// Sends a signed request and checks its rejection's status and kind.
fn expect(
    url: &str,
    method: &str,
    path: &str,
    key: &KeyPair,
    body: &[u8],
    status: u16,
    kind: &str,
) {
    let (got, json) = signed_request(url, method, path, Some(key), now(), body);
    assert_eq!(
        (got, json["error"].as_str().unwrap_or("")),
        (status, kind),
        "{method} {path}: {json}"
    );
    assert!(
        json["message"].as_str().is_some_and(|m| m.len() > 20),
        "{json}"
    );
}

#[test]
fn every_hostile_chunk_request_gets_its_own_rejection_and_changes_nothing() {
    let t = start(ServerConfig {
        max_body: 64 * 1024,
        max_uploads_per_device: 3,
        ..quiet()
    });
    let url = t.url.as_str();
    let alice = KeyPair::from_seed([1; 32]);
    let bob = KeyPair::from_seed([2; 32]);
    let mallory = KeyPair::from_seed([3; 32]);
    let client = Client::new(url);
    client.register("alice", &alice, Some(TOKEN)).unwrap();
    client.register("bob", &bob, Some(TOKEN)).unwrap();
    let before = t.server.current_meta().unwrap();
    let base = base_hash();
    let good = signed(
        &alice,
        &body("alice", 1, base, &[("w", &[2, 3], &[0.1; 6])]),
    );
    let len = good.len();
    let open_good = open_body(1, &good);

    // Authentication.
    let (s, j) = signed_request(url, "POST", "/v1/uploads", None, now(), &open_good);
    assert_eq!((s, j["error"].as_str()), (401, Some("unauthenticated")));
    let (s, j) = post(&format!("{url}/v1/uploads"), &open_good, Some("nonsense"));
    assert_eq!((s, j["error"].as_str()), (401, Some("unauthenticated")));
    expect(
        url,
        "POST",
        "/v1/uploads",
        &mallory,
        &open_good,
        401,
        "unknown_device",
    );
    let (s, j) = signed_request(
        url,
        "POST",
        "/v1/uploads",
        Some(&alice),
        now() - 3600,
        &open_good,
    );
    assert_eq!((s, j["error"].as_str()), (401, Some("stale_request")));
    let header = pupil_sync::auth::authorization(&alice, "POST", "/v1/uploads", now(), b"{}");
    let mut resp = agent()
        .post(&format!("{url}/v1/uploads"))
        .header("authorization", &header)
        .send(&open_good)
        .unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        (resp.status().as_u16(), j["error"].as_str()),
        (401, Some("bad_signature"))
    );

    // Opening.
    expect(
        url,
        "POST",
        "/v1/uploads",
        &alice,
        b"{not json",
        400,
        "malformed",
    );
    let bad_hash = br#"{"seq":1,"length":10,"sha256":"xyz"}"#;
    expect(
        url,
        "POST",
        "/v1/uploads",
        &alice,
        bad_hash,
        400,
        "malformed",
    );
    let empty = format!(r#"{{"seq":1,"length":0,"sha256":"{}"}}"#, "0".repeat(64));
    expect(
        url,
        "POST",
        "/v1/uploads",
        &alice,
        empty.as_bytes(),
        400,
        "malformed",
    );
    let huge = format!(
        r#"{{"seq":1,"length":{},"sha256":"{}"}}"#,
        65 * 1024,
        "0".repeat(64)
    );
    expect(
        url,
        "POST",
        "/v1/uploads",
        &alice,
        huge.as_bytes(),
        413,
        "too_large",
    );
    let (id, offset) = open(url, &alice, 1, &good);
    assert_eq!(offset, 0);
    let conflicting = open_body(1, &good[1..]);
    expect(
        url,
        "POST",
        "/v1/uploads",
        &alice,
        &conflicting,
        409,
        "upload_conflict",
    );

    // Chunks.
    let at = |o: usize| format!("/v1/uploads/{id}?offset={o}");
    expect(
        url,
        "PUT",
        &at(10),
        &alice,
        &good[10..20],
        409,
        "wrong_offset",
    );
    let (s, j) = signed_request(url, "PUT", &at(0), Some(&alice), now(), &good[..40]);
    assert_eq!((s, j["offset"].as_u64()), (200, Some(40)));
    expect(
        url,
        "PUT",
        &at(20),
        &alice,
        &good[20..60],
        409,
        "overlapping_chunk",
    );
    let too_long = [&good[40..], b"extra".as_slice()].concat();
    expect(url, "PUT", &at(40), &alice, &too_long, 413, "beyond_length");
    expect(url, "PUT", &at(40), &alice, b"", 400, "malformed");
    let no_offset = format!("/v1/uploads/{id}");
    expect(
        url,
        "PUT",
        &no_offset,
        &alice,
        &good[40..],
        400,
        "malformed",
    );
    expect(
        url,
        "PUT",
        &format!("{no_offset}?offset=x"),
        &alice,
        &good[40..],
        400,
        "malformed",
    );
    let commit = format!("/v1/uploads/{id}/commit");
    expect(url, "POST", &commit, &alice, b"", 409, "incomplete_upload");

    // Another device's upload id, an unknown one, garbage.
    expect(url, "GET", &no_offset, &bob, b"", 403, "not_your_upload");
    expect(
        url,
        "PUT",
        &at(40),
        &bob,
        &good[40..],
        403,
        "not_your_upload",
    );
    expect(url, "POST", &commit, &bob, b"", 403, "not_your_upload");
    let unknown = format!("/v1/uploads/{}", "0".repeat(32));
    expect(url, "GET", &unknown, &alice, b"", 404, "no_such_upload");
    expect(url, "GET", "/v1/uploads/xyz", &alice, b"", 400, "malformed");
    let garbage = vec![0x5au8; 300];
    let (gid, _) = open(url, &alice, 100, &garbage);
    let (s, _) = signed_request(
        url,
        "PUT",
        &format!("/v1/uploads/{gid}?offset=0"),
        Some(&alice),
        now(),
        &garbage,
    );
    assert_eq!(s, 200);
    let gcommit = format!("/v1/uploads/{gid}/commit");
    expect(url, "POST", &gcommit, &alice, b"", 400, "malformed");
    expect(url, "POST", &gcommit, &alice, b"", 404, "no_such_upload");
    // Bytes other than those declared at opening.
    let (hid, _) = open(url, &alice, 101, &garbage);
    let other = vec![0x33u8; 300];
    signed_request(
        url,
        "PUT",
        &format!("/v1/uploads/{hid}?offset=0"),
        Some(&alice),
        now(),
        &other,
    );
    expect(
        url,
        "POST",
        &format!("/v1/uploads/{hid}/commit"),
        &alice,
        b"",
        422,
        "hash_mismatch",
    );
    // A valid update under another sequence number than the upload's.
    let (mid, _) = open(url, &alice, 7, &good);
    signed_request(
        url,
        "PUT",
        &format!("/v1/uploads/{mid}?offset=0"),
        Some(&alice),
        now(),
        &good,
    );
    expect(
        url,
        "POST",
        &format!("/v1/uploads/{mid}/commit"),
        &alice,
        b"",
        422,
        "upload_mismatch",
    );
    // A signed update the model refuses goes through the same validation as /v1/updates.
    let wrong_shape = signed(
        &alice,
        &body("alice", 8, base, &[("w", &[3, 2], &[0.1; 6])]),
    );
    let (wid, _) = open(url, &alice, 8, &wrong_shape);
    signed_request(
        url,
        "PUT",
        &format!("/v1/uploads/{wid}?offset=0"),
        Some(&alice),
        now(),
        &wrong_shape,
    );
    expect(
        url,
        "POST",
        &format!("/v1/uploads/{wid}/commit"),
        &alice,
        b"",
        422,
        "wrong_shape",
    );
    // At most three uploads open per device.
    open(url, &alice, 20, &garbage);
    open(url, &alice, 21, &garbage);
    expect(
        url,
        "POST",
        "/v1/uploads",
        &alice,
        &open_body(22, &garbage),
        429,
        "too_many_uploads",
    );

    assert_eq!(
        t.server.current_meta().unwrap(),
        before,
        "the model must not change"
    );
    assert!(t.server.store().update_keys().unwrap().is_empty());

    // The valid upload completes once; a second commit finds nothing, a reopening a duplicate.
    let (s, j) = signed_request(url, "PUT", &at(40), Some(&alice), now(), &good[40..]);
    assert_eq!((s, j["offset"].as_u64()), (200, Some(len as u64)));
    let (s, j) = signed_request(url, "POST", &commit, Some(&alice), now(), b"");
    assert_eq!((s, j["status"].as_str()), (200, Some("accepted")), "{j}");
    expect(url, "POST", &commit, &alice, b"", 404, "no_such_upload");
    let (s, j) = signed_request(url, "POST", "/v1/uploads", Some(&alice), now(), &open_good);
    assert_eq!((s, j["status"].as_str()), (200, Some("duplicate")));
    let changed = signed(
        &alice,
        &body("alice", 1, base, &[("w", &[2, 3], &[0.2; 6])]),
    );
    expect(
        url,
        "POST",
        "/v1/uploads",
        &alice,
        &open_body(1, &changed),
        409,
        "seq_conflict",
    );

    assert_eq!(t.server.current_meta().unwrap(), before);
    assert_eq!(
        t.server.store().update_keys().unwrap(),
        [("alice".to_owned(), 1)]
    );
    let open_ids: Vec<u64> = t
        .server
        .store()
        .uploads()
        .unwrap()
        .iter()
        .map(|(_, m)| m.seq)
        .collect();
    assert_eq!(
        open_ids.len(),
        2,
        "only the two idle uploads are left: {open_ids:?}"
    );
    let counters = t.server.counters();
    assert_eq!(counters["accepted"], 1);
    assert_eq!(counters["uploads.committed"], 1);
}

#[test]
fn stale_uploads_are_collected_by_the_server_loop() {
    let t = start(ServerConfig {
        upload_ttl: Duration::ZERO,
        ..quiet()
    });
    let key = KeyPair::from_seed([9; 32]);
    Client::new(&t.url)
        .register("d", &key, Some(TOKEN))
        .unwrap();
    open(&t.url, &key, 1, &[1u8; 100]);
    assert!(
        wait_for(10, || t.server.store().uploads().unwrap().is_empty()),
        "the stale upload is still there"
    );
}

#[test]
fn open_uploads_share_a_byte_budget_and_idle_ones_are_collected() {
    let t = start(ServerConfig {
        max_upload_bytes: 150,
        upload_idle: Duration::ZERO,
        ..quiet()
    });
    let (a, b) = (KeyPair::from_seed([10; 32]), KeyPair::from_seed([11; 32]));
    for (device, key) in [("a", &a), ("b", &b)] {
        Client::new(&t.url)
            .register(device, key, Some(TOKEN))
            .unwrap();
    }
    open(&t.url, &a, 1, &[1u8; 100]);
    let (status, json) = signed_request(
        &t.url,
        "POST",
        "/v1/uploads",
        Some(&b),
        now(),
        &open_body(1, &[2u8; 100]),
    );
    assert_eq!(
        (status, json["error"].as_str()),
        (507, Some("uploads_full")),
        "{json}"
    );
    // The server loop removes the idle upload, which frees the budget.
    assert!(
        wait_for(10, || t.server.store().uploads().unwrap().is_empty()),
        "the idle upload is still there"
    );
    open(&t.url, &b, 1, &[2u8; 100]);
}

#[test]
fn uploads_left_beside_their_stored_updates_are_collected_by_the_duplicate_answer() {
    use pupil_sync::store::UploadMeta;
    use sha2::Digest;

    let t = start(quiet());
    let key = KeyPair::from_seed([9; 32]);
    Client::new(&t.url)
        .register("d", &key, Some(TOKEN))
        .unwrap();
    let store = t.server.store();
    let envelopes: Vec<Vec<u8>> = (1..=4)
        .map(|seq| {
            signed(
                &key,
                &body("d", seq, base_hash(), &[("b", &[3], &[0.1; 3])]),
            )
        })
        .collect();
    // What a kill between storing an update and removing its upload left behind
    // (an older server did the two in separate transactions): both, for four updates.
    for (seq, env) in (1..).zip(&envelopes) {
        assert_eq!(
            t.server.submit(env).unwrap(),
            pupil_sync::server::Submitted::Accepted
        );
        let meta = UploadMeta {
            device: "d".into(),
            seq,
            length: env.len() as u64,
            sha256: pupil_sync::hex::encode(&sha2::Sha256::digest(env)),
            received: 0,
            chunks: 0,
            created_unix: now(),
            touched_unix: 0,
        };
        store
            .open_upload(&[seq as u8; 16], &meta, 4, u64::MAX)
            .unwrap();
    }
    let other = vec![5u8; 100];
    let open_new = || {
        signed_request(
            &t.url,
            "POST",
            "/v1/uploads",
            Some(&key),
            now(),
            &open_body(5, &other),
        )
    };
    assert_eq!(open_new().0, 429, "the leftovers hold every slot");
    // The device retries an update whose commit it never heard back from: the
    // server answers duplicate and collects the upload left behind.
    let (status, json) = signed_request(
        &t.url,
        "POST",
        "/v1/uploads",
        Some(&key),
        now(),
        &open_body(1, &envelopes[0]),
    );
    assert_eq!((status, json["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(store.uploads().unwrap().len(), 3);
    // So does a whole-update duplicate.
    let (status, json) = post(&format!("{}/v1/updates", t.url), &envelopes[1], None);
    assert_eq!((status, json["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(store.uploads().unwrap().len(), 2);
    let (status, json) = open_new();
    assert_eq!(status, 201, "{json}");
    assert_eq!(
        store.counts().unwrap()[0],
        4,
        "collecting removed no update"
    );
    assert!(store.uploads().unwrap().iter().all(|(_, m)| m.seq >= 3));
}
