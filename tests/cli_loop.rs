//! The device loop with `pupil` commands only, as the README shows it: `pupil serve`, then
//! for two devices `pupil sync register`, `pupil sync pull`, `pupil data shift`, `pupil
//! refine --outbox`, `pupil sync push`; the server's round; `pupil sync pull` again. The
//! pulled version must be the shipped student plus the examples-weighted mean of the two
//! decoded deltas, checked tensor by tensor. And a push the server refuses fails: an
//! update it may take later stays queued, one it refused for good waits for `pupil sync
//! requeue`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pupil::format::ModelFile;
use pupil_wire::{Envelope, Update};

fn pupil() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pupil"));
    c.env("PUPIL_ADAPTER", "cpu");
    c
}

/// Runs `pupil args`, asserting success; returns stdout.
fn run(args: &[&str]) -> String {
    let out = pupil().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "pupil {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The server process, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `pupil serve` on a free port; returns it with its URL and announced key.
fn serve(store: &Path, student: &Path) -> (Serve, String, String) {
    let mut child = pupil()
        .args(["serve", "--addr", "127.0.0.1:0", "--min-updates", "2"])
        .args(["--deadline-ms", "600000", "--open-registration"])
        .arg("--store")
        .arg(store)
        .arg("--init-model")
        .arg(student)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    let addr = next().strip_prefix("listening on ").unwrap().to_owned();
    let key = next()
        .strip_prefix("server key ")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    (Serve(child), format!("http://{addr}"), key)
}

/// An update's example count and its decoded deltas by tensor name.
type Decoded = (u64, Vec<(String, Vec<f32>)>);

/// The decoded deltas of every update queued in `outbox`.
fn queued(outbox: &Path) -> Vec<Decoded> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "update"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            let u = Update::parse(Envelope::parse(&bytes).unwrap().body).unwrap();
            let deltas = u
                .deltas
                .iter()
                .flatten()
                .map(|d| {
                    let mut v = vec![0.0; d.elements() as usize];
                    d.add_to(&mut v, 1.0).unwrap();
                    (d.name.to_owned(), v)
                })
                .collect();
            (u.num_examples, deltas)
        })
        .collect()
}

#[test]
fn serve_register_refine_push_round_pull_with_cli_commands_only() {
    let dir = tempfile::tempdir().unwrap();
    let student = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-student.pupil");
    let (_server, url, server_key) = serve(&dir.path().join("store"), &student);
    let mut updates = Vec::new();
    for (i, style) in ["rot=25,thick=1", "dx=3,dy=-2"].iter().enumerate() {
        let dev = dir.path().join(format!("device-{i}"));
        let (d, m, data) = (
            dev.display().to_string(),
            dev.join("model.pupil").display().to_string(),
            dev.join("data").display().to_string(),
        );
        let registered = run(&[
            "sync",
            "register",
            "--dir",
            &d,
            "--server",
            &url,
            "--device-id",
            &format!("phone-{i}"),
            "--server-key",
            &server_key,
        ]);
        assert!(registered.contains("pinned"), "{registered}");
        let pulled = run(&["sync", "pull", "--dir", &d, "--server", &url, "--model", &m]);
        assert!(pulled.contains("version 1"), "{pulled}");
        run(&[
            "data",
            "shift",
            "--style",
            style,
            "--count",
            "300",
            "--eval",
            "200",
            "--out",
            &data,
            "--seed",
            &(i + 1).to_string(),
        ]);
        let refined = run(&[
            "refine",
            "--model",
            &m,
            "--data",
            &data,
            "--labels",
            &format!("{data}/labels.idx"),
            "--rounds",
            "1",
            "--epochs",
            "1",
            "--global",
            "false",
            "--out",
            &format!("{d}/refined.pupil"),
            "--outbox",
            &d,
        ]);
        assert!(refined.contains("queued update 1"), "{refined}");
        updates.extend(queued(&dev.join("outbox")));
        let pushed = run(&["sync", "push", "--dir", &d, "--server", &url, "--json"]);
        let pushed: serde_json::Value = serde_json::from_str(&pushed).unwrap();
        assert_eq!(pushed["accepted"], serde_json::json!([1]), "{pushed}");
    }
    assert_eq!(updates.len(), 2);

    // Two pending updates meet --min-updates: the server's next tick runs the round.
    let d0 = dir.path().join("device-0").display().to_string();
    let m0 = dir.path().join("device-0/model.pupil");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pulled = run(&[
            "sync",
            "pull",
            "--dir",
            &d0,
            "--server",
            &url,
            "--model",
            &m0.display().to_string(),
            "--json",
        ]);
        let pulled: serde_json::Value = serde_json::from_str(&pulled).unwrap();
        if pulled["version"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no version 2 after 60 s: {pulled}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let base = ModelFile::open(&student).unwrap();
    let pulled = ModelFile::open(&m0).unwrap();
    let total: f64 = updates.iter().map(|(n, _)| *n as f64).sum();
    let (mut checked, mut moved) = (0, 0);
    for t in base
        .tensors()
        .filter(|t| t.dtype == pupil::format::DType::F32)
    {
        let mut expected: Vec<f64> = t.to_f32().iter().map(|&v| f64::from(v)).collect();
        for (n, deltas) in &updates {
            if let Some((_, d)) = deltas.iter().find(|(name, _)| name == t.name) {
                for (e, x) in expected.iter_mut().zip(d) {
                    *e += *n as f64 / total * f64::from(*x);
                }
            }
        }
        let got = pulled.to_f32(t.name).unwrap();
        moved += usize::from(got != t.to_f32());
        for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                (f64::from(*g) - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "{}[{k}]: pulled {g}, expected {e}",
                t.name
            );
        }
        checked += 1;
    }
    assert!(
        checked > 0 && moved > 0,
        "{checked} tensors checked, {moved} moved"
    );
    let status = run(&["sync", "status", "--dir", &d0, "--server", &url, "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["server_version"], 2, "{status}");
    assert_eq!(status["queued"], serde_json::json!([]), "{status}");
}

#[test]
fn health_answers_and_a_second_server_is_told_what_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let student = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-student.pupil");
    let store = dir.path().join("store");
    let (_server, url, _) = serve(&store, &student);
    let addr = url.trim_start_matches("http://");
    let answer = http_get(addr, "/v1/health");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(r#""status":"ok""#) && answer.contains(r#""version":1"#),
        "{answer}"
    );
    let second = |addr: &str, store: &Path| {
        let out = pupil()
            .args(["serve", "--addr", addr, "--store"])
            .arg(store)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = second(addr, &dir.path().join("other"));
    assert!(!err.contains("request"), "{err}");
    assert!(err.contains("in use") && err.contains("--addr"), "{err}");
    let err = second("127.0.0.1:0", &store);
    assert!(
        err.contains("open in another running server") && err.contains("--store"),
        "{err}"
    );
}

/// Runs `pupil args`, asserting failure; returns stderr.
fn run_err(args: &[&str]) -> String {
    let out = pupil().args(args).output().unwrap();
    assert!(
        !out.status.success(),
        "pupil {} should fail: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// Writes `model` with `delta` added to its first F32 weight tensor to `out`.
fn nudged(model: &Path, delta: f32, out: &Path) {
    let m = ModelFile::open(model).unwrap();
    let info = m.info();
    let mut b = pupil::format::ModelBuilder::new(&info.model_id, &info.arch).unwrap();
    for e in &info.config {
        b.config(&e.key, e.value.clone()).unwrap();
    }
    let mut done = false;
    for t in m.tensors() {
        if !done && t.dtype == pupil::format::DType::F32 && !t.name.starts_with("replay.") {
            let values: Vec<f32> = t.to_f32().iter().map(|v| v + delta).collect();
            b.add_f32_as(t.name, t.dtype, t.shape, &values).unwrap();
            done = true;
        } else {
            b.add_tensor(t.name, t.dtype, t.shape, t.bytes.to_vec())
                .unwrap();
        }
    }
    std::fs::write(out, b.to_bytes().unwrap()).unwrap();
}

/// The sequence numbers `pupil sync status` lists under `field`.
fn listed(d: &str, url: &str, field: &str) -> serde_json::Value {
    let status = run(&["sync", "status", "--dir", d, "--server", url, "--json"]);
    serde_json::from_str::<serde_json::Value>(&status).unwrap()[field].clone()
}

#[test]
fn push_fails_loudly_keeps_what_can_still_go_and_requeue_brings_back_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let student = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-student.pupil");
    let (_a, url_a, key_a) = serve(&dir.path().join("a"), &student);
    let d = dir.path().join("phone").display().to_string();
    let register = |url: &str, key: Option<&str>| {
        let mut args = vec!["sync", "register", "--dir", &d, "--server", url];
        args.extend(["--device-id", "phone"]);
        if let Some(k) = key {
            args.extend(["--server-key", k]);
        }
        run(&args);
    };
    register(&url_a, Some(&key_a));
    let refined = dir.path().join("refined.pupil");
    nudged(&student, 0.01, &refined);
    let queued = run(&[
        "sync",
        "queue",
        "--dir",
        &d,
        "--base",
        &student.display().to_string(),
        "--model",
        &refined.display().to_string(),
    ]);
    assert!(queued.contains("queued update 1"), "{queued}");

    // A server that does not know the device: the update stays queued, the push fails.
    let (_b, url_b, _) = serve(&dir.path().join("b"), &student);
    let err = run_err(&["sync", "push", "--dir", &d, "--server", &url_b]);
    assert!(
        err.contains("unknown_device") && err.contains("pupil sync register"),
        "{err}"
    );
    assert_eq!(listed(&d, &url_b, "queued"), serde_json::json!([1]));

    // A server of another model refuses it for good: moved aside, the push fails.
    let other = dir.path().join("other.pupil");
    let mut b = pupil::format::ModelBuilder::new("other", "mlp").unwrap();
    b.add_f32("w", &[2], &[1.0, 2.0]).unwrap();
    std::fs::write(&other, b.to_bytes().unwrap()).unwrap();
    let (_c, url_c, _) = serve(&dir.path().join("c"), &other);
    std::fs::remove_file(dir.path().join("phone/server.pub")).unwrap();
    register(&url_c, None);
    let err = run_err(&["sync", "push", "--dir", &d, "--server", &url_c]);
    assert!(err.contains("pupil sync requeue"), "{err}");
    assert_eq!(listed(&d, &url_c, "rejected"), serde_json::json!([1]));

    // Requeued, it goes to the server it was meant for.
    let requeued = run(&["sync", "requeue", "--dir", &d, "--json"]);
    assert!(requeued.contains("\"requeued\":[1]"), "{requeued}");
    let pushed = run(&["sync", "push", "--dir", &d, "--server", &url_a, "--json"]);
    let pushed: serde_json::Value = serde_json::from_str(&pushed).unwrap();
    assert_eq!(pushed["accepted"], serde_json::json!([1]), "{pushed}");
    assert_eq!(listed(&d, &url_a, "queued"), serde_json::json!([]));
}

#[test]
fn serve_logs_one_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let student = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-student.pupil");
    let mut child = pupil()
        .args(["serve", "--addr", "127.0.0.1:0", "--store"])
        .arg(dir.path().join("store"))
        .arg("--init-model")
        .arg(&student)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap();
    let addr = addr.strip_prefix("listening on ").unwrap().to_owned();
    let answer = http_get(&addr, "/v1/nowhere");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("/v1/nowhere"))
        .unwrap_or_else(|| panic!("no request line in {log}"));
    for part in ["method=GET", "status=404", "key=-", "ms="] {
        assert!(line.contains(part), "{part} missing from {line:?}");
    }
}

/// The raw HTTP/1.1 answer (status line, headers, body) of `GET path` on `addr`.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    answer
}
