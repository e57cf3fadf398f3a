//! `pupil`: the command-line tool of the pupil runtime.

/// `println!` for the whole CLI (it shadows std's): report lines go to stdout, or to stderr
/// while a command prints JSON (see [`output::json_mode`]); a stdout closed by its reader
/// (`pupil info | head -1`) ends the program quietly with status 0, where std's `println!`
/// panics ("failed printing to stdout: Broken pipe", exit 101).
macro_rules! println {
    () => {
        $crate::output::report(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::report(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod bench;
mod bench_models;
mod bench_train_encoder;
mod convert;
mod data;
mod demo;
mod distill;
mod distill_encoder;
mod embed;
mod fetch;
mod flower;
mod generate;
mod info;
mod inspect;
mod output;
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
    /// Join a Flower federation as a SuperNode: answer its ServerApp's train, evaluate and
    /// query messages with a pupil classifier trained on this machine's data, or with a
    /// decoder's LoRA adapters (`--text`). The ServerApp is `interop/flower/pupil_fedavg`;
    /// docs/flower.md shows a whole run.
    #[command(
        after_help = "Example: pupil flower --superlink 127.0.0.1:9095 --fresh 7 --shard 0/4 --state node0"
    )]
    Flower(flower::Args),
    /// Device-side sync: register, push queued updates, pull verified versions, status.
    #[command(subcommand)]
    Sync(sync::Sync),
}

fn main() {
    quiet_device_select();
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
        Command::Flower(a) => flower::run(a),
    };
    if let Err(e) = result {
        eprintln!("pupil: {e}");
        // 128 + SIGINT, as a shell reports a program that Ctrl-C ended.
        let status = if e.is::<Interrupted>() { 130 } else { 1 };
        std::process::exit(status);
    }
}

/// Mesa's device-select Vulkan layer (an implicit layer installed with mesa-vulkan-drivers)
/// connects to Wayland while adapters are enumerated, to put the GPU driving the display
/// first; without a session libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set
/// in the environment." on every enumeration. pupil ranks the adapters itself, so without a
/// session (XDG_RUNTIME_DIR unset) the layer is turned off with its own switch, unless the
/// user set that switch.
fn quiet_device_select() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // main has started no thread yet, so nothing reads the environment meanwhile.
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

/// A command stopped by Ctrl-C before its end; the text says what was kept. Exit status 130.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted: {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Errors of the CLI: anything printable.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
