//! `pupil demo` end to end on the CPU backend with its defaults (4 devices, 3 rounds,
//! personal first layer and head): the figures the demo promises are bounded (mean local
//! accuracy up 8 points or more, global accuracy not below the shipped student's), a second
//! run continues from the store, and the summary's layout is pinned by a snapshot; the text
//! task runs a small decoder fleet.

use std::process::Command;

use serde_json::Value;

/// Runs `pupil demo --json` in `dir`; returns (stdout, stderr).
fn demo(dir: &std::path::Path, extra: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pupil"))
        .args([
            "demo",
            "--dir",
            &dir.display().to_string(),
            "--adapter",
            "cpu",
        ])
        .args(["--json"])
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The mean of a JSON array of numbers.
fn mean(v: &Value) -> f64 {
    let xs = v.as_array().expect("an array");
    xs.iter().map(|x| x.as_f64().unwrap()).sum::<f64>() / xs.len() as f64
}

/// The summary section of the report: from its title to the end.
fn summary(text: &str) -> String {
    text[text.find("summary:").expect("no summary")..].to_string()
}

#[test]
fn demo_improves_every_device_keeps_global_accuracy_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (json, report) = demo(dir.path(), &[]);
    let state: Value = serde_json::from_str(&json).expect("--json prints only JSON");
    let versions = state["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 4, "three rounds, each published: {report}");
    let (first, last) = (&versions[0], &versions[3]);
    let gain = 100.0 * (mean(&last["local"]) - mean(&first["local"]));
    assert!(
        gain >= 8.0,
        "mean local accuracy +{gain:.2} points: {report}"
    );
    let (g0, g3) = (
        first["global"].as_f64().unwrap(),
        last["global"].as_f64().unwrap(),
    );
    assert!(g3 >= g0, "global accuracy {g0} -> {g3}: {report}");
    for (i, (a, b)) in first["local"]
        .as_array()
        .unwrap()
        .iter()
        .zip(last["local"].as_array().unwrap())
        .enumerate()
    {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!(b > a + 0.03, "device-{} only {a} -> {b}: {report}", i + 1);
    }
    // Personal layers never leave a device: the update holds only the shared middle layer.
    let bytes = last["update_bytes"][0].as_u64().unwrap();
    assert!(
        bytes < 60_000,
        "update of {bytes} bytes carries personal layers"
    );
    assert!(dir.path().join("demo.png").is_file());
    assert!(dir.path().join("device-1/personal.pupil").is_file());

    let (json, report) = demo(dir.path(), &["--rounds", "1"]);
    assert!(report.contains("continuing from version 4"), "{report}");
    assert!(report.contains("server round 4: 4 updates"), "{report}");
    let state: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(state["versions"].as_array().unwrap().len(), 5);

    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"[+-]?\d+\.\d+", "[n]");
    settings.add_filter(r"\b\d{3,}\b", "[bytes]");
    settings.add_filter(&regex_escape(&dir.path().display().to_string()), "[dir]");
    settings.bind(|| insta::assert_snapshot!("demo_summary", summary(&report)));
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

/// The text task end to end with a small fleet (2 devices, 2 rounds, 4 windows each): every
/// round is aggregated and published, shared + personal adapters lower each device's
/// held-out perplexity below the base's, and the report carries every figure.
#[test]
fn text_demo_personalises_a_decoder_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (json, report) = demo(
        dir.path(),
        &[
            "--task",
            "text",
            "--devices",
            "2",
            "--rounds",
            "2",
            "--windows",
            "4",
        ],
    );
    let r: Value = serde_json::from_str(&json).expect("--json prints only JSON");
    assert!(report.contains("round 2: 2 updates"), "{report}");
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    for d in devices {
        let (base, fleet) = (
            d["base"].as_f64().unwrap(),
            d["shared_personal"].as_f64().unwrap(),
        );
        assert!(fleet < base, "{d}");
        assert!(d["alone"].as_f64().unwrap().is_finite(), "{d}");
        let scale = d["personal_scale"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&scale), "{d}");
    }
    assert_eq!(r["curves"]["shared_personal"].as_array().unwrap().len(), 3);
    assert_eq!(r["curves"]["alone"].as_array().unwrap().len(), 3);
    assert!(r["general"]["shared_version"].as_f64().unwrap().is_finite());
    assert!(dir.path().join("text/demo-text.png").is_file());
    assert!(dir.path().join("text/device-1/personal.pupil").is_file());
}
