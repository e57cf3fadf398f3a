//! `pupil`: the command-line tool of the pupil runtime.

mod bench;
mod bench_models;
mod convert;
mod data;
mod demo;
mod distill;
mod distill_encoder;
mod embed;
mod generate;
mod info;
mod inspect;
mod plot;
mod refine;
mod refine_text;
mod simulate;
mod sync;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pupil",
    version,
    about = "Run, refine and sync small student networks on any GPU through WGSL",
    long_about = "pupil runs small distilled (\"student\") networks on any GPU through WGSL compute \
shaders (Vulkan, Metal, DX12, WebGPU), with a CPU reference backend as the fallback.\n\n\
Choose the adapter with --adapter or PUPIL_ADAPTER: a part of its name (\"llvmpipe\", \"H100\"), \
a backend (vulkan, metal, dx12, gl) or `cpu` for the reference backend. `pupil info` lists them."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter with its backend, type, features and limits.
    Info(info::Args),
    /// Measure kernels and training steps (GFLOP/s, ms per step).
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Print a .pupil model file's manifest (validating the whole file).
    Inspect(inspect::Args),
    /// Import a safetensors or GGUF model into a .pupil file.
    Convert(convert::Args),
    /// Embed texts with a sentence encoder (BERT, e.g. all-MiniLM-L6-v2).
    Embed(embed::Args),
    /// Generate text with a Llama decoder (SmolLM2), streamed as it is produced.
    Generate(generate::Args),
    /// The whole loop on this machine: devices refine a student on their own data and sync
    /// through an in-process server; a second run continues.
    Demo(demo::Args),
    /// Write simulated device data (MNIST digits in a device-specific style).
    #[command(subcommand)]
    Data(data::Data),
    // The help text is the doc comment of `distill::Args` (a doc comment here would hide
    // its examples from `pupil distill --help`).
    Distill(distill::Args),
    /// Refine a classifier on local data: active labels, pseudo-labels, curriculum, replay.
    Refine(refine::Args),
    /// Personalise a decoder on local text with LoRA under a memory budget (perplexity
    /// before and after, on that text and on a general one); or generate-score-train.
    RefineText(refine_text::Args),
    /// Federated learning on MNIST: N simulated devices against a real server on loopback.
    Simulate(simulate::Args),
    /// Run the sync server: device registration, signed updates, rounds, signed versions.
    Serve(pupil_sync::cli::ServeArgs),
    /// Device-side sync: register, push queued updates, pull verified versions, status.
    #[command(subcommand)]
    Sync(sync::Sync),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Bench(b) => bench::run(b),
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Data(d) => data::run(d),
        Command::Distill(a) => distill::run(a),
        Command::Refine(a) => refine::run(a),
        Command::RefineText(a) => refine_text::run(a),
        Command::Simulate(a) => simulate::run(a),
        Command::Serve(a) => sync::serve(a),
        Command::Sync(c) => sync::run(c),
    };
    if let Err(e) = result {
        eprintln!("pupil: {e}");
        std::process::exit(1);
    }
}

/// Errors of the CLI: anything printable.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
