//! `pupil serve --tls-cert --tls-key` over rustls: a client that pins the
//! server's certificate registers, pushes and pulls; one trusting the web's
//! roots, one pinned to another certificate, and plain HTTP are refused
//! (issue 15.5).

mod common;

use std::path::PathBuf;

use common::*;
use pupil_sync::client::{Client, Outbox, PullOutcome};
use pupil_sync::server::{serve_tls, Tls};
use pupil_sync::KeyPair;

/// A file of `tests/fixtures/tls`.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls")).join(name)
}

#[test]
fn a_pinned_certificate_is_trusted_and_nothing_else() {
    let mut config = quiet();
    config.min_updates = 1;
    config.admin_token = Some(TOKEN.into());
    let dir = tempfile::tempdir().unwrap();
    let server =
        pupil_sync::server::Server::open(dir.path(), config, pupil_sync::server::finite_gate())
            .unwrap();
    server.import_model(model_bytes()).unwrap();
    let tls = Tls::from_pem_files(&fixture("cert.pem"), &fixture("key.pem")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(serve_tls(
        server.clone(),
        listener,
        tls,
        std::future::pending(),
    ));

    let cert = std::fs::read(fixture("cert.pem")).unwrap();
    let url = format!("https://localhost:{port}");
    let client = Client::new(&url).with_pinned_cert(&cert).unwrap();
    let key = KeyPair::from_seed([41; 32]);
    client.register("d", &key, Some(TOKEN)).unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox")).unwrap();
    outbox
        .enqueue(&key, |seq| {
            Ok(body(
                "d",
                seq,
                base_hash(),
                &[("b", &[3], &[0.5, 0.0, 0.0])],
            ))
        })
        .unwrap();
    assert_eq!(client.push(&key, &outbox).unwrap().accepted, [1]);
    assert!(wait_for(10, || server.current_meta().unwrap().version == 2));
    let model = dir.path().join("device.pupil");
    assert!(matches!(
        client.pull(&model, &server.public_key()).unwrap(),
        PullOutcome::Updated(m) if m.version == 2
    ));
    let ip = format!("https://127.0.0.1:{port}");
    assert!(Client::new(&ip)
        .with_pinned_cert(&cert)
        .unwrap()
        .server_key()
        .is_ok());

    // The web's roots do not vouch for it, another pinned certificate does not match,
    // and plain HTTP gets no answer.
    let err = Client::new(&url).server_key().unwrap_err();
    assert!(
        matches!(err, pupil_sync::SyncError::Network { .. }),
        "{err}"
    );
    let other = std::fs::read(fixture("other-cert.pem")).unwrap();
    let err = Client::new(&url)
        .with_pinned_cert(&other)
        .unwrap()
        .server_key()
        .unwrap_err();
    assert!(
        matches!(err, pupil_sync::SyncError::Network { .. }),
        "{err}"
    );
    assert!(Client::new(&format!("http://localhost:{port}"))
        .server_key()
        .is_err());
    assert!(Client::new(&url)
        .with_pinned_cert(b"not a certificate")
        .is_err());
}
