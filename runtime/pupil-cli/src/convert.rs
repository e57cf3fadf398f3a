//! `pupil convert <in> <out.pupil>`: import a safetensors or GGUF model into a `.pupil` file.

use std::path::PathBuf;

use pupil::import::{import_file, Target};

use crate::CliResult;

/// Arguments of `pupil convert`.
#[derive(clap::Args)]
pub struct Args {
    /// The model to import: a `.safetensors` file (its config.json, tokenizer.json and
    /// sentence-transformers settings are read from the same folder) or a `.gguf` file.
    input: PathBuf,
    /// The `.pupil` file to write (replaced atomically).
    output: PathBuf,
    /// How to store float tensors: f32, f16 (matrices; vectors stay f32) or keep (as
    /// stored: Q8_0/Q4_0/Q4_1 blocks bit for bit).
    #[arg(long, default_value = "keep")]
    dtype: Target,
    /// The model id in the manifest (default: the output file's stem).
    #[arg(long)]
    id: Option<String>,
}

/// Imports, writes and summarises the model.
pub fn run(args: Args) -> CliResult {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => args
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or("the output path names no file; give a path like model.pupil")?,
    };
    let imported = import_file(&args.input, &id, args.dtype)?;
    let hash = imported.builder.write_atomic(&args.output)?;
    for s in &imported.skipped {
        eprintln!("skipped: {s}");
    }
    let file = pupil::format::ModelFile::open(&args.output)?;
    let bytes = file.as_bytes().len();
    println!(
        "wrote {} ({} tensors, {:.1} MB, content hash {})",
        args.output.display(),
        file.tensors().count(),
        bytes as f64 / 1e6,
        pupil::format::Hex(&hash)
    );
    Ok(())
}
