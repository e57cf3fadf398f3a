//! Shared helpers: a small model, the shipped student, an in-process server
//! on a random port, the server binary as a child process, signed updates,
//! signed requests and raw HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pupil_format::ModelBuilder;
use pupil_sync::client::sign_envelope;
use pupil_sync::server::{finite_gate, serve, Server, ServerConfig};
use pupil_sync::KeyPair;
use pupil_wire::update::{EncodedDelta, UpdateDraft};
use pupil_wire::Metric;

/// The admin token of test servers.
pub const TOKEN: &str = "test-admin-token";

/// Base weights: `b` [3] and `w` [2, 3].
pub const B: [f32; 3] = [0.1, 0.2, 0.3];
/// Base weights of `w`.
pub const W: [f32; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];

/// The test model's bytes.
pub fn model_bytes() -> Vec<u8> {
    let mut b = ModelBuilder::new("tiny", "mlp").unwrap();
    b.add_f32("b", &[3], &B).unwrap();
    b.add_f32("w", &[2, 3], &W).unwrap();
    b.to_bytes().unwrap()
}

/// A running in-process server.
pub struct TestServer {
    pub url: String,
    pub server: Arc<Server>,
    pub dir: tempfile::TempDir,
    pub runtime: tokio::runtime::Runtime,
}

/// The shipped student, `models/mnist-student.pupil` (model id `mnist`).
pub fn student_bytes() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/mnist-student.pupil"
    );
    std::fs::read(path).unwrap()
}

/// Starts a server with `config` (admin token set) on a random local port,
/// with the test model as version 1.
pub fn start(config: ServerConfig) -> TestServer {
    start_with(config, model_bytes())
}

/// Starts a server with `config` (admin token set) on a random local port,
/// with `model` as version 1.
pub fn start_with(mut config: ServerConfig, model: Vec<u8>) -> TestServer {
    config.admin_token = Some(TOKEN.into());
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(dir.path(), config, finite_gate()).unwrap();
    server.import_model(model).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(serve(server.clone(), listener, std::future::pending()));
    TestServer {
        url,
        server,
        dir,
        runtime,
    }
}

/// A quiet config: no round runs unless a test asks for one.
pub fn quiet() -> ServerConfig {
    ServerConfig {
        min_updates: u64::MAX,
        deadline: Duration::from_secs(3600),
        ..ServerConfig::default()
    }
}

/// The content hash of the test model (version 1).
pub fn base_hash() -> [u8; 32] {
    pupil_format::ModelFile::from_bytes(model_bytes())
        .unwrap()
        .content_hash()
}

/// Starts the server binary on `store` with `model` as version 1 and `args`;
/// returns it and its URL.
pub fn spawn_server(store: &Path, model: &Path, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pupil-sync-server"))
        .args(["--store", store.to_str().unwrap(), "--addr", "127.0.0.1:0"])
        .args([
            "--init-model",
            model.to_str().unwrap(),
            "--admin-token",
            TOKEN,
        ])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    // Keep reading: a server printing into a closed pipe would panic and die.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"));
    (child, format!("http://{addr}"))
}

/// An update body from `device` with f16 deltas `(name, shape, values)`.
pub fn body(device: &str, seq: u64, base: [u8; 32], deltas: &[(&str, &[u64], &[f32])]) -> Vec<u8> {
    model_body("tiny", device, seq, base, deltas)
}

/// An update body for model `model_id` from `device` with f16 deltas `(name, shape, values)`.
pub fn model_body(
    model_id: &str,
    device: &str,
    seq: u64,
    base: [u8; 32],
    deltas: &[(&str, &[u64], &[f32])],
) -> Vec<u8> {
    claiming_body(model_id, device, seq, base, 10, deltas)
}

/// [`model_body`] claiming `num_examples` examples.
pub fn claiming_body(
    model_id: &str,
    device: &str,
    seq: u64,
    base: [u8; 32],
    num_examples: u64,
    deltas: &[(&str, &[u64], &[f32])],
) -> Vec<u8> {
    let encoded: Vec<EncodedDelta> = deltas
        .iter()
        .map(|(n, s, v)| EncodedDelta::f16(n, s, v).unwrap())
        .collect();
    let views: Vec<_> = encoded.iter().map(EncodedDelta::as_delta).collect();
    UpdateDraft {
        model_id,
        base_version: base,
        device_id: device,
        seq,
        num_examples,
        metrics: &[Metric {
            name: "loss",
            value: 0.5,
        }],
        deltas: &views,
    }
    .encode()
    .unwrap()
}

/// A signed envelope of `body`.
pub fn signed(key: &KeyPair, body: &[u8]) -> Vec<u8> {
    sign_envelope(key, body).unwrap()
}

/// An HTTP agent that returns error statuses as responses.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// POSTs `bytes` to `url` (labelled JSON; the update endpoint ignores the
/// label); returns the status and the JSON body.
pub fn post(url: &str, bytes: &[u8], auth: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = agent().post(url).header("content-type", "application/json");
    if let Some(t) = auth {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut resp = req.send(bytes).unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sends `method path` to the server at `url` with `body`, signed by `key`
/// for time `unix` (no signature without a key); returns the status and JSON body.
pub fn signed_request(
    url: &str,
    method: &str,
    path: &str,
    key: Option<&KeyPair>,
    unix: u64,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let full = format!("{url}{path}");
    let auth = key.map(|k| pupil_sync::auth::authorization(k, method, path, unix, body));
    let a = agent();
    let result = match method {
        "GET" => {
            let mut r = a.get(&full);
            if let Some(h) = &auth {
                r = r.header("authorization", h);
            }
            r.call()
        }
        "PUT" => {
            let mut r = a.put(&full);
            if let Some(h) = &auth {
                r = r.header("authorization", h);
            }
            r.send(body)
        }
        _ => {
            let mut r = a.post(&full);
            if let Some(h) = &auth {
                r = r.header("authorization", h);
            }
            r.send(body)
        }
    };
    let mut resp = result.unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// The JSON body opening an upload of `envelope` as update `seq`.
pub fn open_body(seq: u64, envelope: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    serde_json::json!({
        "seq": seq,
        "length": envelope.len(),
        "sha256": pupil_sync::hex::encode(&sha2::Sha256::digest(envelope)),
    })
    .to_string()
    .into_bytes()
}

/// Polls `f` every 20 ms until it holds or `secs` pass.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether `path` holds a model whose `name` tensor is close to `expected`.
pub fn tensor_close(path: &Path, name: &str, expected: &[f32], tol: f32) -> bool {
    let m = pupil_format::ModelFile::open(path).unwrap();
    let got = m.to_f32(name).unwrap();
    got.len() == expected.len() && got.iter().zip(expected).all(|(a, b)| (a - b).abs() <= tol)
}
