//! `pupil info`: every adapter wgpu sees, with backend, type, features and limits.

use pupil::device::{enumerate, AdapterReport};

use crate::CliResult;

/// Arguments of `pupil info`.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> CliResult {
    let reports: Vec<AdapterReport> = pollster::block_on(enumerate())
        .iter()
        .map(AdapterReport::of)
        .collect();
    if args.json {
        let list: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "backend": r.backend,
                    "device_type": r.device_type,
                    "driver": r.driver,
                    "shader_f16": r.shader_f16,
                    "subgroups": r.subgroups,
                    "features": r.features,
                    "limits": r.limits.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if reports.is_empty() {
        println!("no GPU adapter found: pupil will use the CPU reference backend.");
        println!("On Debian/Ubuntu, `apt-get install mesa-vulkan-drivers` provides a software Vulkan adapter (lavapipe).");
        return Ok(());
    }
    for (i, r) in reports.iter().enumerate() {
        println!("adapter {i}: {}", r.name);
        println!(
            "  backend {} | type {} | driver {}",
            r.backend, r.device_type, r.driver
        );
        println!(
            "  shader f16: {} | subgroups: {}",
            yes(r.shader_f16),
            yes(r.subgroups)
        );
        for (k, v) in &r.limits {
            println!("  {k:<40} {v}");
        }
        println!("  features: {}", r.features.join(", "));
    }
    println!("\nSelect one with --adapter/PUPIL_ADAPTER=<name part|backend|cpu>.");
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
