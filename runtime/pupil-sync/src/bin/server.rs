//! `pupil-sync-server`: the sync server alone (`pupil serve` in one binary,
//! used by the durability tests to SIGKILL and restart it).

use clap::Parser;
use pupil_sync::cli::{run_serve, ServeArgs};

/// Runs the pupil sync server.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run_serve(&args.serve) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pupil-sync-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
