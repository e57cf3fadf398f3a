//! `pupil convert <in> <out.pupil>`: import a Hugging Face model folder, a safetensors or a
//! GGUF model into a `.pupil` file.

use std::path::{Path, PathBuf};

use pupil::import::{import_path, Target};

use crate::CliResult;

/// Arguments of `pupil convert`.
#[derive(clap::Args)]
pub struct Args {
    /// The model to import: a Hugging Face model folder (config.json, tokenizer.json and
    /// `model.safetensors`, or shards listed by `model.safetensors.index.json`), a
    /// `.safetensors` file (its config.json, tokenizer.json and sentence-transformers
    /// settings are read from the same folder) or a `.gguf` file.
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
    /// Print what was written as JSON (path, tensors, bytes, content hash, skipped tensors).
    #[arg(long)]
    json: bool,
}

/// Whether `a` and `b` are the same existing file (the same inode on unix, so hard links and
/// symlinks count; the same canonical path elsewhere).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    matches!(
        (std::fs::canonicalize(a), std::fs::canonicalize(b)),
        (Ok(x), Ok(y)) if x == y
    )
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
    if same_file(&args.input, &args.output) {
        return Err(format!(
            "the output {} is the input file itself; write to another path (convert reads \
             {} and writes a new .pupil file)",
            args.output.display(),
            args.input.display()
        )
        .into());
    }
    crate::output::check_writable("the output", &args.output)?;
    let imported = import_path(&args.input, &id, args.dtype)?;
    let hash = imported.builder.write_atomic(&args.output)?;
    for s in &imported.skipped {
        eprintln!("skipped: {s}");
    }
    let file = pupil::format::ModelFile::open(&args.output)?;
    let bytes = file.as_bytes().len();
    if args.json {
        let item = serde_json::json!({
            "output": args.output.display().to_string(),
            "tensors": file.tensors().count(),
            "bytes": bytes,
            "content_hash": pupil::format::Hex(&hash).to_string(),
            "skipped": imported.skipped,
        });
        println!("{}", serde_json::to_string(&item)?);
        return Ok(());
    }
    println!(
        "wrote {} ({} tensors, {:.1} MB, content hash {})",
        args.output.display(),
        file.tensors().count(),
        bytes as f64 / 1e6,
        pupil::format::Hex(&hash)
    );
    Ok(())
}
