//! `pupil demo` end to end on the CPU backend: two devices, one round, a second run that
//! continues; the summary's format is pinned by a snapshot (numbers and timings redacted).

use std::process::Command;

fn demo(dir: &std::path::Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pupil"))
        .args([
            "demo",
            "--dir",
            &dir.display().to_string(),
            "--devices",
            "2",
            "--rounds",
            "1",
            "--pool",
            "300",
            "--adapter",
            "cpu",
        ])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The summary section: from its title to the end.
fn summary(text: &str) -> String {
    text[text.find("summary:").expect("no summary")..].to_string()
}

#[test]
fn demo_runs_continues_and_keeps_its_summary_format() {
    let dir = tempfile::tempdir().unwrap();
    let first = demo(dir.path(), &[]);
    assert!(first.contains("server round 1: 2 updates"), "{first}");
    assert!(dir.path().join("demo.png").is_file());
    assert!(dir.path().join("state.json").is_file());

    let second = demo(dir.path(), &[]);
    assert!(second.contains("continuing from version"), "{second}");
    assert!(second.contains("server round 2: 2 updates"), "{second}");

    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"[+-]?\d+\.\d+", "[n]");
    settings.add_filter(r"\b\d{3,}\b", "[bytes]");
    settings.add_filter(&regex_escape(&dir.path().display().to_string()), "[dir]");
    settings.bind(|| insta::assert_snapshot!("demo_summary", summary(&second)));
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
