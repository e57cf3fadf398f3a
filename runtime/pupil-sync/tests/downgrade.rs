//! A man in the middle serving an older signed version, or one relabelled as
//! newer, is refused; a rollback the server signed is followed (issue 15.5).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use common::*;
use pupil_sync::client::{version_file, Client, PullOutcome};
use pupil_sync::{KeyPair, SyncError};

/// A server at a local address answering each path in `pages` with its body,
/// whatever the request (a man in the middle replaying recorded answers);
/// 404 elsewhere. Returns its URL.
fn replay(pages: BTreeMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split(' ').nth(1).unwrap_or("").to_owned();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() <= 2 {
                    break;
                }
            }
            let (status, body) = match pages.get(&path) {
                Some(b) => ("200 OK", b.clone()),
                None => (
                    "404 Not Found",
                    br#"{"error":"not_found","message":"none"}"#.to_vec(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    url
}

/// GETs `path` from the real server: the body.
fn fetch(url: &str, path: &str) -> Vec<u8> {
    let mut resp = agent().get(&format!("{url}{path}")).call().unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.body_mut().read_to_vec().unwrap()
}

/// What a man in the middle records of the current version: its latest
/// answer and model file, to serve later.
fn record(url: &str, version: u64) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        (
            "/v1/models/latest".to_owned(),
            fetch(url, "/v1/models/latest"),
        ),
        (
            format!("/v1/models/{version}"),
            fetch(url, &format!("/v1/models/{version}")),
        ),
    ])
}

/// Publishes the next version: one update from `device` moving `b`, and a round.
fn publish(t: &TestServer, key: &KeyPair, seq: u64) -> u64 {
    let base = pupil_sync::hex::decode(&t.server.current_meta().unwrap().hash).unwrap();
    let update = signed(key, &body("d", seq, base, &[("b", &[3], &[0.5, 0.0, 0.0])]));
    let (s, j) = post(&format!("{}/v1/updates", t.url), &update, None);
    assert_eq!(s, 200, "{j}");
    t.server.run_round().unwrap().unwrap().published.unwrap()
}

fn is_downgrade(result: Result<PullOutcome, SyncError>) -> bool {
    matches!(result, Err(SyncError::Downgrade { .. }))
}

#[test]
fn older_or_relabelled_versions_are_refused_and_signed_rollbacks_followed() {
    let t = start(quiet());
    let client = Client::new(&t.url);
    let server_key = t.server.public_key();
    let key = KeyPair::from_seed([31; 32]);
    client.register("d", &key, Some(TOKEN)).unwrap();
    assert_eq!(publish(&t, &key, 1), 2);
    let v2 = record(&t.url, 2);
    assert_eq!(publish(&t, &key, 2), 3);
    let v3 = record(&t.url, 3);

    let model = t.dir.path().join("device.pupil");
    assert!(matches!(
        client.pull(&model, &server_key).unwrap(),
        PullOutcome::Updated(m) if m.version == 3
    ));
    let running = std::fs::read(&model).unwrap();

    // The man in the middle serves version 2, signed by the server but older.
    let err = Client::new(&replay(v2.clone())).pull(&model, &server_key);
    assert!(is_downgrade(err), "an older signed version must be refused");
    assert_eq!(std::fs::read(&model).unwrap(), running, "the model is kept");
    // ... or version 2 labelled as version 4: the signature covers the number.
    let mut relabelled = v2.clone();
    let mut latest: serde_json::Value = serde_json::from_slice(&v2["/v1/models/latest"]).unwrap();
    latest["version"] = 4.into();
    relabelled.insert("/v1/models/latest".into(), latest.to_string().into_bytes());
    relabelled.insert("/v1/models/4".into(), v2["/v1/models/2"].clone());
    let err = Client::new(&replay(relabelled))
        .pull(&model, &server_key)
        .unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), running);

    // The server's admin rolls back to version 2: the device follows the signed marker.
    client.rollback(2, TOKEN).unwrap();
    let v2_rolled_back = record(&t.url, 2);
    assert!(matches!(
        client.pull(&model, &server_key).unwrap(),
        PullOutcome::Updated(m) if m.version == 2
    ));
    let held = std::fs::read_to_string(version_file(&model)).unwrap();
    assert!(held.contains("\"rollback\""), "{held}");
    // Version 3, withdrawn by that rollback, is refused when replayed.
    let err = Client::new(&replay(v3)).pull(&model, &server_key);
    assert!(is_downgrade(err), "a withdrawn version must be refused");
    // The next version the server publishes is taken.
    assert_eq!(publish(&t, &key, 3), 4);
    assert!(matches!(
        client.pull(&model, &server_key).unwrap(),
        PullOutcome::Updated(m) if m.version == 4
    ));
    // ... and neither version 2 nor its old rollback marker takes the device back from it.
    let err = Client::new(&replay(v2)).pull(&model, &server_key);
    assert!(is_downgrade(err));
    let err = Client::new(&replay(v2_rolled_back)).pull(&model, &server_key);
    assert!(
        is_downgrade(err),
        "a rollback made before version 4 must not apply to it"
    );
}
