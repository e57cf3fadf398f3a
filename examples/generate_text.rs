//! Generate text with SmolLM2-135M-Instruct, streaming tokens as they come.
//!
//!     PUPIL_ADAPTER=cpu cargo run --release --example generate_text
//!
//! The GGUF comes from `models/fetch smollm2` (run on first use) and is imported in memory,
//! its Q4_1 weights dequantized.

use std::io::Write;

use pupil::format::ModelFile;
use pupil::import::{import_file, Target};
use pupil::models::llama::sample::{Sampler, Sampling};
use pupil::models::llama::CausalLm;
use pupil::Backend;

// The repository's fetch tooling (`models/fetch` into the cache on first use); an app
// ships its data or downloads it its own way, and gives the library paths.
#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = fetch::cached("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let file = ModelFile::from_bytes(
        import_file(&path, "smollm2", Target::Keep)?
            .builder
            .to_bytes()?,
    )?;
    let lm = CausalLm::load(&file, &Backend::auto(None)?)?;

    let prompt = "The capital of France is";
    let ids = lm.tokenizer().encode(prompt)?;
    let mut sampler = Sampler::new(Sampling::Greedy, 0)?;
    print!("{prompt}");
    let out = lm.generate(&ids, 12, &mut sampler, true, |id| {
        print!("{}", lm.tokenizer().decode(&[id])?);
        std::io::stdout().flush().ok();
        Ok(())
    })?;
    println!(
        "\n{} tokens, {:.1} tokens/s decoding",
        out.ids.len(),
        out.decode_steps as f64 / out.decode_secs.max(1e-9)
    );
    Ok(())
}
