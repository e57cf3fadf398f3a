//! The demo's closing table and plot.

use std::fmt::Write;
use std::path::Path;

use super::{State, VersionRow};
use crate::plot::{draw, Panel, Series};

/// The mean of `values` (0 for none).
fn mean_of(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len().max(1) as f32
}

/// The devices' mean local accuracy with `v`, of the model each runs.
fn mean_local(v: &VersionRow) -> f32 {
    mean_of(&v.local)
}

/// The devices' mean local accuracy with `v`'s shared version alone (the model they run
/// when none was measured apart).
fn mean_shared(v: &VersionRow) -> f32 {
    match v.shared.is_empty() {
        true => mean_local(v),
        false => mean_of(&v.shared),
    }
}

/// Accuracy per version (global and per device), update sizes and time per phase.
pub fn table(state: &State, devices: &[String]) -> String {
    let mut out = String::new();
    accuracy_table(&mut out, state, devices);
    if let (Some(first), Some(last)) = (state.versions.first(), state.versions.last()) {
        let _ = writeln!(
            out,
            "\nshipped student v{} -> v{}: mean local accuracy {:.2}% -> {:.2}% ({:+.2} points; the shared version alone {:.2}%), global {:.2}% -> {:.2}%",
            first.version,
            last.version,
            mean_local(first) * 100.0,
            mean_local(last) * 100.0,
            (mean_local(last) - mean_local(first)) * 100.0,
            mean_shared(last) * 100.0,
            first.global * 100.0,
            last.global * 100.0
        );
    }
    phase_table(&mut out, state);
    out
}

/// A line per version: global accuracy, each device's, their means and the mean update size.
fn accuracy_table(out: &mut String, state: &State, devices: &[String]) {
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
            mean_local(v) * 100.0,
            mean_shared(v) * 100.0
        );
    }
}

/// Seconds per phase of the round that made each version after the shipped one.
fn phase_table(out: &mut String, state: &State) {
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
            .map(|v| (v.version as f64, f64::from(mean_local(v)) * 100.0))
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
