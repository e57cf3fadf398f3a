//! Every program in `examples/` runs and prints what it promises (on the CPU backend, so the
//! text-model examples finish quickly; the GPU path of the same code is tested elsewhere).

use std::path::PathBuf;
use std::process::Command;

/// The example's binary, built by `cargo test` beside the test binaries (built here when
/// missing).
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let path = deps.parent().unwrap().join("examples").join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "pupil-cli", "--example", name])
            .status()
            .unwrap();
        assert!(status.success(), "building example {name}");
    }
    path
}

fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(example(name))
        .args(args)
        .env("PUPIL_ADAPTER", "cpu")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "example {name} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn classify() {
    let out = run("classify", &[]);
    assert!(out.contains("digit 7: predicted 7"), "{out}");
    assert!(out.contains("test accuracy"), "{out}");
}

#[test]
fn embed_text() {
    let out = run("embed_text", &[]);
    let scores: Vec<f32> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(scores.len(), 3, "{out}");
    // The two sentences about a cat are closer to each other than to the finance one.
    assert!(scores[0] > scores[1] && scores[0] > scores[2], "{out}");
}

#[test]
fn generate_text() {
    let out = run("generate_text", &[]);
    assert!(out.starts_with("The capital of France is"), "{out}");
    assert!(out.contains("Paris"), "{out}");
}

#[test]
fn refine_local() {
    let out = run("refine_local", &[]);
    assert!(out.contains("round 2:"), "{out}");
    assert!(out.contains("local accuracy"), "{out}");
}

#[test]
fn sync_updates() {
    let out = run("sync_updates", &[]);
    assert!(out.contains("accepted [1]"), "{out}");
    assert!(out.contains("pulled version 2"), "{out}");
}

#[test]
fn serve() {
    let out = run("serve", &["127.0.0.1:0", "1"]);
    assert!(
        out.contains("serving version 1 on http://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("stopped"), "{out}");
}
