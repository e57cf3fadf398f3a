//! `pupil embed --model <file> "text" ...`: sentence embeddings with a BERT encoder
//! (all-MiniLM-L6-v2 style: mean pooling, unit length).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use pupil::import::load_model;
use pupil::models::bert::SentenceEncoder;
use pupil::Backend;
use serde_json::json;

use crate::CliResult;

/// Arguments of `pupil embed`.
#[derive(clap::Args)]
pub struct Args {
    /// The encoder: a `.pupil` file, or a sentence-transformers model folder or
    /// `.safetensors` file (converted in memory; `pupil convert` saves the conversion).
    #[arg(long)]
    model: PathBuf,
    /// Texts to embed.
    texts: Vec<String>,
    /// Also embed every line of this file (one input per line; empty lines are skipped).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Inputs per batch (texts of similar length are batched together).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
    /// Print JSON (`[{"text": ..., "embedding": [...]}, ...]`) instead of one line of
    /// space-separated values per input.
    #[arg(long)]
    json: bool,
}

/// Embeds every input in length-sorted batches and prints the embeddings in input order.
pub fn run(args: Args) -> CliResult {
    let mut texts = args.texts;
    if let Some(path) = &args.file {
        let body = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        texts.extend(
            body.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    if texts.is_empty() {
        return Err("nothing to embed: give texts as arguments or --file with one per line".into());
    }
    let backend = Backend::auto(args.adapter.as_deref())?;
    let encoder = SentenceEncoder::load(&load_model(&args.model)?, &backend)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = encoder.tokenize(&refs)?;
    let bar = if args.file.is_some() {
        let bar = ProgressBar::new(texts.len() as u64);
        bar.set_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} inputs, {per_sec}, eta {eta}",
        )?);
        bar
    } else {
        ProgressBar::hidden()
    };
    let out = encoder.embed_all(&ids, args.batch, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    if args.json {
        let items: Vec<_> = texts
            .iter()
            .zip(&out)
            .map(|(t, e)| json!({"text": t, "embedding": e}))
            .collect();
        println!("{}", serde_json::to_string(&items)?);
    } else {
        for e in &out {
            let line: Vec<String> = e.iter().map(|v| format!("{v:.6}")).collect();
            println!("{}", line.join(" "));
        }
    }
    Ok(())
}
