//! `pupil inspect <file>`: validate a .pupil file (or a model folder, safetensors or GGUF
//! file, converted in memory) and print its manifest.

use std::path::PathBuf;

use pupil::format::{ConfigValue, Hex, ModelFile};
use pupil::import::load_model;
use serde_json::{json, Value};

use crate::CliResult;

/// Arguments of `pupil inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The model: a .pupil file, or a Hugging Face model folder, safetensors or GGUF file.
    file: PathBuf,
    /// Print the manifest as JSON (model fields, config, tensors) instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> CliResult {
    let file = load_model(&args.file)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest_json(&file))?);
    } else {
        println!("{file}");
    }
    Ok(())
}

/// The manifest as JSON: what the table shows, with hashes in hex.
fn manifest_json(file: &ModelFile) -> Value {
    let info = file.info();
    let config: serde_json::Map<String, Value> = info
        .config
        .iter()
        .map(|e| {
            let v = match &e.value {
                ConfigValue::Int(v) => json!(v),
                ConfigValue::Float(v) => json!(v),
                ConfigValue::Str(v) => json!(v.as_str()),
                ConfigValue::Ints(v) => json!(v.as_slice()),
            };
            (e.key.to_string(), v)
        })
        .collect();
    let tensors: Vec<Value> = file
        .tensors()
        .map(|t| {
            json!({
                "name": t.name,
                "dtype": t.dtype.to_string(),
                "shape": t.shape,
                "bytes": t.bytes.len(),
            })
        })
        .collect();
    json!({
        "model_id": info.model_id.as_str(),
        "arch": info.arch.as_str(),
        "config": config,
        "version": info.version,
        "content_hash": Hex(&file.content_hash()).to_string(),
        "parent": info.parent.as_ref().map(|p| Hex(p).to_string()),
        "created_by": info.created_by.as_str(),
        "format_version": file.manifest().format_version,
        "tensors": tensors,
    })
}
