//! The `pupil` binary's habits: the default backend, quiet adapter probing, `--json` that is
//! only JSON, a closed stdout, Ctrl-C, output paths checked before the work, a conversion
//! that would replace its own input, and hints that name what is wrong.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn pupil() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pupil"));
    // The tests choose the adapter themselves.
    c.env_remove("PUPIL_ADAPTER");
    c
}

/// The shipped MNIST student (with anchors).
fn student() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-student.pupil")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(args: &[&str]) -> Output {
    pupil().args(args).output().unwrap()
}

fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "pupil {args:?} failed\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// A failing run's stderr; panics if it succeeded.
fn run_err(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "pupil {args:?} succeeded: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// A device folder written by `pupil data shift` (a small pool and test set).
fn device_data(dir: &Path) -> PathBuf {
    let data = dir.join("device");
    let out = data.display().to_string();
    run_ok(&[
        "data", "shift", "--style", "rot=25", "--count", "200", "--eval", "50", "--out", &out,
    ]);
    data
}

/// Stdout parsed as one JSON value, with what it held when it is not JSON.
fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// The fastest `pupil refine` on `data` (one round of one epoch), with extra arguments.
fn refine<'a>(model: &'a str, data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    refine_for(model, data, "1", extra)
}

/// `pupil refine` on `data` for `rounds` rounds of `rounds` epochs, with extra arguments.
fn refine_for<'a>(
    model: &'a str,
    data: &'a str,
    rounds: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "refine",
        "--model",
        model,
        "--data",
        data,
        "--strategy",
        "self",
        "--rounds",
        rounds,
        "--epochs",
        rounds,
        "--global",
        "false",
        "--adapter",
        "cpu",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn default_backend_skips_software_adapters() {
    let info = json_of(&run_ok(&["info", "--json"]));
    let types: Vec<&str> = info
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["device_type"].as_str().unwrap())
        .collect();
    let out = run_ok(&[
        "bench",
        "matmul",
        "--sizes",
        "8",
        "--seconds",
        "0.01",
        "--json",
    ]);
    let err = text(&out.stderr);
    assert_eq!(
        err.matches("pupil: backend ").count(),
        1,
        "said once: {err}"
    );
    let hardware = types
        .iter()
        .any(|t| ["DiscreteGpu", "IntegratedGpu", "VirtualGpu"].contains(t));
    if !hardware {
        // No adapter, or only software ones (lavapipe in CI): the CPU backend is faster.
        assert!(err.contains("pupil: backend cpu ("), "{err}");
        if types.contains(&"Cpu") {
            assert!(err.contains("software rasterizer"), "{err}");
            assert!(
                err.contains("--adapter "),
                "says how to use it anyway: {err}"
            );
        }
    }
    // An explicit choice is kept, and says nothing about the default.
    let out = run_ok(&[
        "bench",
        "matmul",
        "--sizes",
        "8",
        "--seconds",
        "0.01",
        "--adapter",
        "cpu",
    ]);
    assert!(!text(&out.stderr).contains("pupil: backend "));
}

#[test]
fn adapter_probing_is_quiet_without_a_display() {
    let out = pupil()
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WGPU_BACKEND")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}

#[test]
fn json_output_is_only_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = device_data(dir.path());
    let (model, data) = (student().display().to_string(), data.display().to_string());

    let out = run_ok(&["inspect", "--json", &model]);
    let v = json_of(&out);
    assert_eq!(v["arch"], "mlp", "{v}");
    assert!(!v["tensors"].as_array().unwrap().is_empty());

    let refined = dir.path().join("r.pupil").display().to_string();
    let out = run_ok(&refine(&model, &data, &["--json", "--out", &refined]));
    let v = json_of(&out);
    assert_eq!(v["rounds"].as_array().unwrap().len(), 1, "{v}");
    assert!(
        text(&out.stderr).contains("wrote "),
        "the report is on stderr"
    );

    let out = run_ok(&[
        "simulate",
        "--devices",
        "2",
        "--fraction",
        "1",
        "--rounds",
        "1",
        "--adapter",
        "cpu",
        "--json",
    ]);
    assert_eq!(json_of(&out).as_array().unwrap().len(), 1);

    // A minimal safetensors file: one f32 vector.
    let input = dir.path().join("tiny.safetensors");
    let mut header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#.to_vec();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&[0u8; 8]);
    std::fs::write(&input, bytes).unwrap();
    let output = dir.path().join("tiny.pupil");
    let out = run_ok(&[
        "convert",
        "--json",
        &input.display().to_string(),
        &output.display().to_string(),
    ]);
    assert_eq!(json_of(&out)["tensors"], 1);
}

#[test]
fn demo_json_is_only_json() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo").display().to_string();
    let out = run_ok(&[
        "demo",
        "--dir",
        &demo,
        "--devices",
        "1",
        "--rounds",
        "1",
        "--pool",
        "100",
        "--adapter",
        "cpu",
        "--json",
    ]);
    let v = json_of(&out);
    assert_eq!(v["versions"].as_array().unwrap().len(), 2, "{v}");
}

/// Spawns `pupil args` with stdout a pipe that is closed at once, before it prints.
fn with_closed_stdout(args: &[&str]) -> Output {
    let mut child = pupil()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn closed_stdout_ends_quietly() {
    let model = student().display().to_string();
    for args in [vec!["info"], vec!["inspect", &model], vec!["--help"]] {
        let out = with_closed_stdout(&args);
        let err = text(&out.stderr);
        assert!(
            out.status.success(),
            "pupil {args:?}: {:?} {err}",
            out.status
        );
        assert!(
            !err.contains("Broken pipe") && !err.contains("panicked"),
            "{err}"
        );
    }
    // As `pupil info | head -1` does it: one line read, then the pipe closed.
    let mut child = pupil()
        .arg("info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_refine_exits_130_and_says_what_was_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = device_data(dir.path());
    let (model, data) = (student().display().to_string(), data.display().to_string());
    let ckpt = dir.path().join("r.ckpt").display().to_string();
    for with_checkpoint in [false, true] {
        let extra: &[&str] = if with_checkpoint {
            &["--checkpoint", &ckpt]
        } else {
            &[]
        };
        let args = refine_for(&model, &data, "1000", extra);
        let mut child = pupil()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The memory plan is printed after the Ctrl-C handler is installed.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("memory plan") {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "refine ended early"
            );
        }
        let kill = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{err}");
        if with_checkpoint {
            assert!(err.contains("checkpoint written to"), "{err}");
            assert!(Path::new(&ckpt).is_file());
        } else {
            assert!(err.contains("no checkpoint written"), "{err}");
        }
    }
}

#[test]
fn output_paths_are_checked_before_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = device_data(dir.path());
    let (model, data) = (student().display().to_string(), data.display().to_string());
    let out_ok = dir.path().join("r.pupil").display().to_string();
    for (flag, path) in [("--out", "/proc/x/r.pupil"), ("--plot", "/proc/x/r.png")] {
        let mut extra = vec![flag, path];
        if flag == "--plot" {
            extra.extend_from_slice(&["--out", &out_ok]);
        }
        let started = Instant::now();
        let out = run(&refine(&model, &data, &extra));
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&format!("{flag} {path}")), "{err}");
        assert!(
            !text(&out.stdout).contains("round 1"),
            "failed after training"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    let err = run_err(&[
        "simulate",
        "--devices",
        "2",
        "--rounds",
        "1",
        "--adapter",
        "cpu",
        "--plot",
        "/proc/x/s.png",
    ]);
    assert!(err.contains("--plot /proc/x/s.png"), "{err}");
}

#[test]
fn convert_refuses_to_replace_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("copy.gguf");
    std::fs::write(&input, b"GGUF not really").unwrap();
    let p = input.display().to_string();
    let err = run_err(&["convert", &p, &p]);
    assert!(err.contains("is the input file itself"), "{err}");
    // The same file by another name.
    let other = dir.path().join("link.pupil");
    std::fs::hard_link(&input, &other).unwrap();
    let err = run_err(&["convert", &p, &other.display().to_string()]);
    assert!(err.contains("is the input file itself"), "{err}");
    assert_eq!(std::fs::read(&input).unwrap(), b"GGUF not really");
}

#[test]
fn hints_name_what_is_wrong() {
    let err = run_err(&[
        "data", "shift", "--style", "rot=5", "--count", "1", "--eval", "1", "--out", "/proc/dd",
    ]);
    assert!(err.contains("/proc/dd"), "{err}");

    let err = run_err(&[
        "bench",
        "matmul",
        "--sizes",
        "8",
        "--seconds",
        "0.01",
        "--adapter",
        "nonsense",
    ]);
    assert!(err.contains("\"nonsense\""), "{err}");
    assert!(err.contains("`cpu`"), "{err}");
    let info = json_of(&run_ok(&["info", "--json"]));
    for a in info.as_array().unwrap() {
        let name = a["name"].as_str().unwrap();
        assert!(err.contains(name), "lists {name}: {err}");
    }

    let err = run_err(&[
        "generate",
        "--model",
        "absent.pupil",
        "--prompt",
        "hi",
        "--temperature",
        "-1",
    ]);
    assert!(err.contains("temperature must be a number >= 0"), "{err}");
}

/// `pupil simulate --dp-noise` prints ε per round, growing, and equal to the accountant's
/// for the rounds run (Poisson rate C, noise z, δ).
#[test]
fn simulate_with_differential_privacy_reports_epsilon_per_round() {
    let out = run_ok(&[
        "simulate",
        "--devices",
        "8",
        "--fraction",
        "0.5",
        "--rounds",
        "3",
        "--dp-noise",
        "1.1",
        "--dp-clip",
        "1",
        "--dp-delta",
        "1e-4",
        "--adapter",
        "cpu",
        "--json",
    ]);
    let rows = json_of(&out);
    let eps: Vec<f64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["epsilon"].as_f64().unwrap())
        .collect();
    assert_eq!(eps.len(), 3);
    assert!(eps.windows(2).all(|w| w[0] < w[1]), "{eps:?}");
    let mut acc = pupil_sync::dp::RdpAccountant::default();
    // The mechanism runs with z as f32, and so accounts.
    acc.compose_sampled_gaussian(0.5, f64::from(1.1f32), 3)
        .unwrap();
    let want = acc.epsilon(1e-4).unwrap().0;
    assert!(
        (eps[2] - want).abs() < 1e-9 * want,
        "{eps:?} against {want}"
    );
    let err = run_err(&["simulate", "--dp-noise", "1", "--adapter", "cpu"]);
    assert!(err.contains("--dp-clip"), "{err}");
}
