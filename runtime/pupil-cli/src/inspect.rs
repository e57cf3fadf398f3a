//! `pupil inspect <file>`: validate a .pupil file and print its manifest.

use std::path::PathBuf;

use crate::CliResult;

/// Arguments of `pupil inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The .pupil model file.
    file: PathBuf,
}

pub fn run(args: Args) -> CliResult {
    let file = pupil::format::ModelFile::open(&args.file)?;
    println!("{file}");
    Ok(())
}
