//! Embed text with a sentence encoder (all-MiniLM-L6-v2) and compare meanings.
//!
//!     cargo run --release --example embed_text
//!
//! The checkpoint comes from `models/fetch minilm` (run on first use) and is imported from
//! safetensors in memory; `pupil convert` writes it as a .pupil file once instead.

use pupil::format::ModelFile;
use pupil::import::{import_file, Target};
use pupil::models::bert::SentenceEncoder;
use pupil::Backend;

// The repository's fetch tooling (`models/fetch` into the cache on first use); an app
// ships its data or downloads it its own way, and gives the library paths.
#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = fetch::cached("minilm", "model.safetensors")?;
    let imported = import_file(&path, "minilm", Target::Keep)?;
    let file = ModelFile::from_bytes(imported.builder.to_bytes()?)?;
    let encoder = SentenceEncoder::load(&file, &Backend::auto(None)?)?;

    let texts = [
        "The cat sits on the mat.",
        "A kitten is resting on a rug.",
        "Quarterly revenue grew by eight percent.",
    ];
    // One padded batch; every vector has 384 values and unit length.
    let vectors = encoder.embed(&texts)?;
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for i in 0..texts.len() {
        for j in i + 1..texts.len() {
            println!(
                "{:.3}  {:?} ~ {:?}",
                cos(&vectors[i], &vectors[j]),
                texts[i],
                texts[j]
            );
        }
    }
    Ok(())
}
