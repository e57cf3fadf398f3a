//! Hostile connections against the server binary on loopback: large
//! unauthenticated bodies, absurd lengths, slow headers and slow bodies. The
//! server's peak resident memory stays bounded, slow clients are cut off, and
//! health probes are answered throughout (issue 15.6).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Peak resident memory of process `pid` in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Opens a connection to `addr` and sends `head` (request line and headers).
fn open(addr: &str, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Whether the server closed `s` (or answered and closed) within `secs`.
fn closed_within(mut s: &TcpStream, secs: u64) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[test]
fn hostile_bodies_and_slow_clients_leave_memory_bounded_and_probes_answered() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.pupil");
    std::fs::write(&model, model_bytes()).unwrap();
    let (mut child, url) = spawn_server(
        &dir.path().join("store"),
        &model,
        &["--header-timeout-secs", "2", "--body-timeout-secs", "3"],
    );
    let pid = child.id();
    let addr = url.strip_prefix("http://").unwrap().to_owned();
    let baseline = peak_rss_mib(pid);

    // 32 senders of 32 MiB bodies, declared 60 MiB: half without any signature, half
    // with one naming an unregistered key. Each is refused from its headers.
    let unknown = pupil_sync::auth::authorization(
        &pupil_sync::KeyPair::from_seed([77; 32]),
        "POST",
        "/v1/updates",
        now(),
        b"",
    );
    let senders: Vec<_> = (0..32)
        .map(|i| {
            let addr = addr.clone();
            let auth = if i % 2 == 0 {
                String::new()
            } else {
                format!("authorization: {unknown}\r\n")
            };
            std::thread::spawn(move || {
                let head = format!(
                    "POST /v1/updates HTTP/1.1\r\nhost: x\r\n{auth}content-length: {}\r\n\r\n",
                    60 << 20
                );
                let mut s = open(&addr, &head);
                let chunk = vec![7u8; 1 << 20];
                for _ in 0..32 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let mut answer = String::new();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.read_to_string(&mut answer);
                answer
            })
        })
        .collect();
    // Absurd lengths with no body, 300 connections that never finish their headers, and
    // 64 small anonymous bodies that stop halfway.
    let mut absurd: Vec<_> = (0..4)
        .map(|_| {
            open(
                &addr,
                "PUT /v1/uploads/00?offset=0 HTTP/1.1\r\nhost: x\r\ncontent-length: 9223372036854775808\r\n\r\n",
            )
        })
        .collect();
    let slow_headers: Vec<_> = (0..300)
        .map(|_| open(&addr, "POST /v1/updates HTTP/1.1\r\nhost: x\r\n"))
        .collect();
    let slow_bodies: Vec<_> = (0..64)
        .map(|_| {
            let mut s = open(
                &addr,
                "POST /v1/updates HTTP/1.1\r\nhost: x\r\ncontent-length: 200000\r\n\r\n",
            );
            s.write_all(&[1u8; 100_000]).unwrap();
            s
        })
        .collect();

    // Probes are answered while all of that is open.
    let start = Instant::now();
    let probe = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build();
    let probe: ureq::Agent = probe.into();
    for _ in 0..8 {
        let status = probe
            .get(&format!("{url}/v1/health"))
            .call()
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let probes_s = start.elapsed().as_secs_f64();

    for s in &mut absurd {
        let mut answer = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    }
    for sender in senders {
        let answer = sender.join().unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 401"),
            "{answer:?}"
        );
    }
    let cut_off = slow_headers
        .iter()
        .chain(&slow_bodies)
        .filter(|s| closed_within(s, 8))
        .count();
    let peak = peak_rss_mib(pid);
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "peak resident {peak:.1} MiB (baseline {baseline:.1} MiB); 8 probes in {probes_s:.2} s; \
         {cut_off} of 364 slow connections cut off"
    );
    assert_eq!(cut_off, 364, "every slow client is cut off");
    assert!(probes_s < 5.0, "probes took {probes_s:.2} s");
    assert!(
        peak < 128.0,
        "peak resident memory {peak:.1} MiB under 1 GiB of hostile bodies"
    );
}
