//! Any request to the sync server's HTTP API, in process through its router (guard, body
//! limits, authentication, every handler) against a real store. No request may panic or
//! get a 500: a hostile request is refused with a 4xx (or 503 when busy).
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use pupil_sync::server::{finite_gate, Server, ServerConfig};
use tower::ServiceExt;

const PATHS: [&str; 14] = [
    "/v1/challenge",
    "/v1/devices",
    "/v1/updates",
    "/v1/uploads",
    "/v1/uploads/",
    "/v1/models/latest",
    "/v1/models/1",
    "/v1/models/",
    "/v1/versions",
    "/v1/rollback",
    "/v1/metrics",
    "/v1/server-key",
    "/v1/health",
    "/",
];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// A request in the fuzz input: a byte picking the method, a byte picking the path, then
/// text: the rest of the path on the first line, `name: value` header lines, an empty line
/// and the body (bytes).
struct Input<'a> {
    method: &'static str,
    uri: String,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
}

impl<'a> Input<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (&[method, path], rest) = bytes.split_first_chunk::<2>()?;
        let split = rest.windows(2).position(|w| w == b"\n\n");
        let (head, body) = match split {
            Some(at) => (&rest[..at], &rest[at + 2..]),
            None => (rest, &[][..]),
        };
        let head = std::str::from_utf8(head).ok()?;
        let mut lines = head.split('\n');
        let mut uri = PATHS[usize::from(path) % PATHS.len()].to_owned();
        uri.push_str(lines.next().unwrap_or_default());
        let headers = lines.filter_map(|l| l.split_once(": ")).collect();
        Some(Input {
            method: METHODS[usize::from(method) % METHODS.len()],
            uri,
            headers,
            body,
        })
    }
}

/// One server for the whole run (its store in a temporary directory), with version 1.
fn server() -> &'static (tokio::runtime::Runtime, Arc<Server>, tempfile::TempDir) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, Arc<Server>, tempfile::TempDir)> =
        OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = ServerConfig {
            admin_token: Some("fuzz-admin".into()),
            open_registration: true,
            ..ServerConfig::default()
        };
        let server = Server::open(dir.path(), config, finite_gate()).expect("the server opens");
        let mut b = pupil_format::ModelBuilder::new("fuzz", "mlp").expect("a builder");
        b.add_f32("b", &[3], &[0.0; 3]).expect("a tensor");
        server
            .import_model(b.to_bytes().expect("a model"))
            .expect("version 1");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        (runtime, server, dir)
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Some(input) = Input::parse(bytes) else {
        return;
    };
    let (runtime, server, _) = server();
    let mut request = Request::builder().method(input.method).uri(input.uri);
    for (name, value) in input.headers {
        request = request.header(name, value);
    }
    let Ok(request) = request.body(Body::from(input.body.to_vec())) else {
        return; // not a valid HTTP request: hyper never hands one to the router
    };
    let response = runtime
        .block_on(server.clone().router().oneshot(request))
        .expect("the router is infallible");
    let status = response.status().as_u16();
    assert!(status < 500 || status == 503, "status {status}");
});
