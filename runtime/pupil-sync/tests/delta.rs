//! Delta pulls on the shipped student: a head-only round travels as a small
//! delta that rebuilds the published file byte for byte; unknown bases and
//! forged or damaged deltas fall back to the full file, and when that fails
//! too the local model is left as it was.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use common::*;
use pupil_format::{ModelBuilder, ModelFile};
use pupil_sync::client::{Client, Outbox, PullOutcome, PullReport, Transfer};
use pupil_sync::KeyPair;

/// A server with the shipped student as version 1 and, after a round on one
/// update of the head (`mlp.2.*`) only, version 2.
fn head_only_round() -> (TestServer, [u8; 32]) {
    let t = start_with(quiet(), student_bytes());
    let client = Client::new(&t.url);
    let key = KeyPair::from_seed([30; 32]);
    client.register("dev", &key, Some(TOKEN)).unwrap();
    let outbox = Outbox::open(&t.dir.path().join("outbox")).unwrap();
    let base = ModelFile::from_bytes(student_bytes())
        .unwrap()
        .content_hash();
    let head: Vec<f32> = (0..2000).map(|i| (i % 7) as f32 * 1e-3).collect();
    outbox
        .enqueue(&key, |seq| {
            Ok(model_body(
                "mnist",
                "dev",
                seq,
                base,
                &[
                    ("mlp.2.bias", &[10], &[0.01; 10]),
                    ("mlp.2.weight", &[10, 200], &head),
                ],
            ))
        })
        .unwrap();
    assert_eq!(client.push(&key, &outbox).unwrap().accepted, [1]);
    assert_eq!(t.server.run_round().unwrap().unwrap().published, Some(2));
    let key = client.server_key().unwrap();
    (t, key)
}

/// The server's metrics.
fn metrics(url: &str) -> serde_json::Value {
    let mut resp = agent().get(&format!("{url}/v1/metrics")).call().unwrap();
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn a_head_only_version_arrives_as_a_small_delta_identical_to_the_full_file() {
    let (t, server_key) = head_only_round();
    let client = Client::new(&t.url);
    let published = t.server.store().version_bytes(2).unwrap().unwrap();

    let with_v1 = t.dir.path().join("a.pupil");
    std::fs::write(&with_v1, student_bytes()).unwrap();
    let report = client.pull_report(&with_v1, &server_key).unwrap();
    let Some(Transfer::Delta { bytes: delta }) = report.transfer else {
        panic!("{report:?}");
    };
    assert!(matches!(report.outcome, PullOutcome::Updated(ref m) if m.version == 2));

    let empty = t.dir.path().join("b.pupil");
    let report = client.pull_report(&empty, &server_key).unwrap();
    let Some(Transfer::Full {
        bytes: full,
        delta_refused: None,
    }) = report.transfer
    else {
        panic!("{report:?}");
    };

    assert_eq!(std::fs::read(&with_v1).unwrap(), published);
    assert_eq!(std::fs::read(&empty).unwrap(), published);
    assert_eq!(full, published.len() as u64);
    eprintln!(
        "head-only round on mnist-student.pupil: delta {delta} bytes, full file {full} bytes ({:.2}%)",
        100.0 * delta as f64 / full as f64
    );
    assert!(delta * 50 < full, "delta {delta} vs full {full}");
    let up_to_date = client.pull_report(&with_v1, &server_key).unwrap();
    assert_eq!(up_to_date.transfer, None);

    let m = metrics(&t.url);
    let since = &m["since_start"];
    assert_eq!(
        (since["pulls.delta"].as_u64(), since["pulls.full"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(since["pulls.delta_bytes"].as_u64(), Some(delta));
    assert_eq!(since["pulls.full_bytes"].as_u64(), Some(full));
}

#[test]
fn an_unknown_base_gets_a_clear_error_and_the_client_pulls_the_full_file() {
    let (t, server_key) = head_only_round();
    let get = |path: &str| {
        let mut resp = agent().get(&format!("{}{path}", t.url)).call().unwrap();
        let status = resp.status().as_u16();
        let json: serde_json::Value =
            serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        (status, json["error"].as_str().unwrap_or("").to_owned())
    };
    let zeros = "0".repeat(64);
    for (path, status, kind) in [
        (
            format!("/v1/models/2/delta?from={zeros}"),
            404,
            "unknown_base",
        ),
        ("/v1/models/2/delta?from=77".into(), 404, "unknown_base"),
        ("/v1/models/2/delta?from=xyz".into(), 400, "malformed"),
        ("/v1/models/2/delta".into(), 400, "malformed"),
        ("/v1/models/9/delta?from=1".into(), 404, "no_such_version"),
        ("/v1/models/two/delta?from=1".into(), 400, "malformed"),
    ] {
        assert_eq!(get(&path), (status, kind.to_owned()), "{path}");
    }

    // A device holding a model the server never published.
    let path = t.dir.path().join("other.pupil");
    std::fs::write(&path, model_bytes()).unwrap();
    let report = Client::new(&t.url).pull_report(&path, &server_key).unwrap();
    let Some(Transfer::Full {
        delta_refused: Some(why),
        ..
    }) = &report.transfer
    else {
        panic!("{report:?}");
    };
    assert!(why.contains("unknown_base"), "{why}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        t.server.store().version_bytes(2).unwrap().unwrap()
    );
}

/// Rewrites an answer body given the request path.
type Rewrite = Arc<dyn Fn(&str, Vec<u8>) -> Vec<u8> + Send + Sync>;

/// A GET proxy in front of `upstream` whose answers pass through `rewrite`;
/// returns its URL.
fn proxy(t: &TestServer, rewrite: Rewrite) -> String {
    let listener = t
        .runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = t.url.clone();
    let app = Router::new().fallback(move |uri: Uri| {
        let (upstream, rewrite) = (upstream.clone(), rewrite.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut resp = agent().get(&format!("{upstream}{uri}")).call().unwrap();
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                let mut builder = Response::builder().status(status);
                for (name, value) in resp.headers() {
                    if name.as_str().starts_with("x-pupil") || name == "content-type" {
                        builder = builder.header(name.as_str(), value.as_bytes());
                    }
                }
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(1 << 30)
                    .read_to_vec()
                    .unwrap();
                builder.body(Body::from(rewrite(uri.path(), body))).unwrap()
            })
            .await
            .unwrap()
        }
    });
    t.runtime
        .spawn(async move { axum::serve(listener, app).await });
    url
}

/// Pulls through a proxy applying `rewrite`, from a device holding version 1.
fn pull_through(
    t: &TestServer,
    server_key: &[u8; 32],
    rewrite: Rewrite,
) -> (Result<PullReport, pupil_sync::SyncError>, Vec<u8>) {
    let url = proxy(t, rewrite);
    let path = t.dir.path().join("device.pupil");
    std::fs::write(&path, student_bytes()).unwrap();
    let result = Client::new(&url).pull_report(&path, server_key);
    (result, std::fs::read(&path).unwrap())
}

#[test]
fn forged_or_damaged_deltas_are_refused_and_never_touch_the_local_model() {
    let (t, server_key) = head_only_round();
    let published = t.server.store().version_bytes(2).unwrap().unwrap();
    let flip = |body: &mut Vec<u8>| {
        let n = body.len();
        body[n - 10] ^= 1;
    };

    // A damaged delta: the client falls back to the full file.
    let (report, file) = pull_through(
        &t,
        &server_key,
        Arc::new(move |path, mut body| {
            if path.ends_with("/delta") {
                flip(&mut body);
            }
            body
        }),
    );
    let report = report.unwrap();
    let Some(Transfer::Full {
        delta_refused: Some(why),
        ..
    }) = &report.transfer
    else {
        panic!("{report:?}");
    };
    assert!(why.contains("delta"), "{why}");
    assert_eq!(file, published);

    // A well-formed delta to a model the server never signed: refused on the hash.
    let mut evil = ModelBuilder::new("mnist", "mlp").unwrap();
    let student = ModelFile::from_bytes(student_bytes()).unwrap();
    for t in student.tensors() {
        evil.add_tensor(t.name, t.dtype, t.shape, vec![0u8; t.bytes.len()])
            .unwrap();
    }
    let forged = pupil_sync::delta::encode(&student_bytes(), &evil.to_bytes().unwrap()).unwrap();
    let (report, file) = pull_through(
        &t,
        &server_key,
        Arc::new(move |path, body| {
            if path.ends_with("/delta") {
                forged.clone()
            } else {
                body
            }
        }),
    );
    let report = report.unwrap();
    let Some(Transfer::Full {
        delta_refused: Some(why),
        ..
    }) = &report.transfer
    else {
        panic!("{report:?}");
    };
    assert!(why.contains("content hash"), "{why}");
    assert_eq!(file, published);

    // Delta and full file both damaged: a clear error, the local model untouched.
    let (result, file) = pull_through(
        &t,
        &server_key,
        Arc::new(move |path, mut body| {
            if path.starts_with("/v1/models/2") {
                flip(&mut body);
            }
            body
        }),
    );
    let err = result.unwrap_err();
    assert!(err.to_string().contains("download"), "{err}");
    assert_eq!(file, student_bytes(), "the local model must not change");
}
