//! The demo's closing table and plot.

use std::fmt::Write;
use std::path::Path;

use super::State;
use crate::plot::{draw, Panel, Series};

/// The mean of `values` (0 for none).
fn mean_of(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len().max(1) as f32
}

/// Accuracy per version (global and per device), update sizes and time per phase.
pub fn table(state: &State, devices: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "summary: accuracy of each published version");
    let mut header = format!("{:<8} {:>8}", "version", "global");
    for d in devices {
        let _ = write!(header, " {d:>9}");
    }
    let _ = write!(
        header,
        " {:>11} {:>12} {:>13}",
        "mean local", "mean shared", "update bytes"
    );
    let _ = writeln!(out, "{header}");
    for v in &state.versions {
        let mut line = format!(
            "{:<8} {:>7.2}%",
            format!("v{}", v.version),
            v.global * 100.0
        );
        for a in &v.local {
            let _ = write!(line, " {:>8.2}%", a * 100.0);
        }
        let mean = mean_of(&v.local);
        let shared = if v.shared.is_empty() {
            mean
        } else {
            mean_of(&v.shared)
        };
        let bytes = if v.update_bytes.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{}",
                v.update_bytes.iter().sum::<usize>() / v.update_bytes.len()
            )
        };
        let _ = writeln!(
            out,
            "{line} {:>10.2}% {:>11.2}% {bytes:>13}",
            mean * 100.0,
            shared * 100.0
        );
    }
    if let (Some(first), Some(last)) = (state.versions.first(), state.versions.last()) {
        let mean = |v: &super::VersionRow| mean_of(&v.local);
        let shared = |v: &super::VersionRow| match v.shared.is_empty() {
            true => mean(v),
            false => mean_of(&v.shared),
        };
        let _ = writeln!(
            out,
            "\nshipped student v{} -> v{}: mean local accuracy {:.2}% -> {:.2}% ({:+.2} points; the shared version alone {:.2}%), global {:.2}% -> {:.2}%",
            first.version,
            last.version,
            mean(first) * 100.0,
            mean(last) * 100.0,
            (mean(last) - mean(first)) * 100.0,
            shared(last) * 100.0,
            first.global * 100.0,
            last.global * 100.0
        );
    }
    let _ = writeln!(out, "\ntime per phase (seconds, all devices):");
    let _ = writeln!(
        out,
        "{:<8} {:>8} {:>10} {:>8} {:>8} {:>10}",
        "version", "pull", "inference", "refine", "push", "aggregate"
    );
    for v in state.versions.iter().skip(1) {
        let p = &v.phases;
        let _ = writeln!(
            out,
            "{:<8} {:>8.2} {:>10.2} {:>8.2} {:>8.2} {:>10.2}",
            format!("v{}", v.version),
            p.pull,
            p.inference,
            p.refine,
            p.sync,
            p.aggregate
        );
    }
    out
}

/// Accuracy per version: each device's local data, their mean, and MNIST's test set.
pub fn plot(path: &Path, state: &State) -> Result<(), Box<dyn std::error::Error>> {
    let devices = state.versions.first().map_or(0, |v| v.local.len());
    let mut series: Vec<Series> = (0..devices)
        .map(|i| Series {
            name: format!(
                "device-{} ({})",
                i + 1,
                state.styles.get(i).map_or("", String::as_str)
            ),
            points: state
                .versions
                .iter()
                .filter_map(|v| {
                    v.local
                        .get(i)
                        .map(|a| (v.version as f64, f64::from(*a) * 100.0))
                })
                .collect(),
        })
        .collect();
    series.push(Series {
        name: "mean of the devices".into(),
        points: state
            .versions
            .iter()
            .map(|v| {
                (
                    v.version as f64,
                    f64::from(v.local.iter().sum::<f32>() / v.local.len().max(1) as f32) * 100.0,
                )
            })
            .collect(),
    });
    series.push(Series {
        name: "global (MNIST test)".into(),
        points: state
            .versions
            .iter()
            .map(|v| (v.version as f64, f64::from(v.global) * 100.0))
            .collect(),
    });
    draw(
        path,
        &[Panel {
            title: "fleet accuracy per published version".into(),
            x_label: "version".into(),
            y_label: "accuracy %".into(),
            series,
        }],
    )
}
