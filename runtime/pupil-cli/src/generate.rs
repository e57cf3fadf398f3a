//! `pupil generate --model <file> --prompt "..."`: text generation with a Llama decoder
//! (SmolLM2), streaming the text as it is produced, then prompt and decode speeds.

use std::io::Write;
use std::path::PathBuf;

use pupil::format::ModelFile;
use pupil::import::load_model;
use pupil::models::llama::sample::{Sampler, Sampling};
use pupil::models::llama::{chat_prompt, CausalLm, LlamaLora};
use pupil::Backend;
use serde_json::json;

use crate::CliResult;

/// Arguments of `pupil generate`.
#[derive(clap::Args)]
pub struct Args {
    /// The model: a `.pupil` file, or a Llama `.gguf` file (e.g. SmolLM2) or Hugging Face
    /// model folder, converted in memory (`pupil convert` saves the conversion).
    #[arg(long)]
    model: PathBuf,
    /// LoRA adapters to run over the model (an adapter file from `pupil refine-text --out`
    /// or a pulled shared adapter; it must name this model as its base).
    #[arg(long)]
    lora: Option<PathBuf>,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// The most new tokens (generation also stops at the end-of-text token).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Always take the most likely token (the default unless --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    greedy: bool,
    /// Sample at this softmax temperature (>= 0; 0 is greedy).
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Sample among this many most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens whose probability reaches this.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template (ChatML) as a user message.
    #[arg(long)]
    chat: bool,
    /// Print JSON (prompt and generated token ids, text, speeds) instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
}

/// Loads the model, generates and prints the text (streamed) or JSON.
pub fn run(args: Args) -> CliResult {
    if let Some(t) = args.temperature.filter(|t| !(*t >= 0.0 && t.is_finite())) {
        return Err(format!(
            "--temperature {t}: the temperature must be a number >= 0 (0 is greedy, 1 \
             samples the model's own distribution, higher is more random)"
        )
        .into());
    }
    let rule = match args.temperature {
        Some(temperature) if !args.greedy && temperature > 0.0 => Sampling::Random {
            temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        },
        _ => Sampling::Greedy,
    };
    let mut sampler = Sampler::new(rule, args.seed)?;
    let backend = Backend::auto(args.adapter.as_deref())?;
    let base = load_model(&args.model)?;
    let mut lm = CausalLm::load(&base, &backend)?;
    if let Some(path) = &args.lora {
        let cfg = lm.config().clone();
        let lora = LlamaLora::from_file(&ModelFile::open(path)?, &base, &cfg, &backend)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        lm.model_mut().set_lora(Some(lora));
    }
    drop(base);
    let text = if args.chat {
        let template = lm.chat_template().ok_or(
            "the model holds no chat template; drop --chat and format the prompt yourself",
        )?;
        chat_prompt(template, &args.prompt)?
    } else {
        args.prompt.clone()
    };
    let prompt = lm.tokenizer().encode(&text)?;
    let mut stream = TextStream::default();
    let out = lm.generate(&prompt, args.max_tokens, &mut sampler, true, |id| {
        if !args.json {
            stream.push(&lm, id)?;
        }
        Ok(())
    })?;
    let prompt_rate = rate(out.prompt_tokens, out.prompt_secs);
    let decode_rate = rate(out.decode_steps, out.decode_secs);
    if args.json {
        let item = json!({
            "prompt_ids": prompt,
            "ids": out.ids,
            "text": lm.tokenizer().decode(&out.ids)?,
            "prompt_tokens_per_s": prompt_rate,
            "decode_tokens_per_s": decode_rate,
            "adapter": backend.describe(),
        });
        println!("{}", serde_json::to_string(&item)?);
    } else {
        println!();
        eprintln!(
            "{} prompt tokens at {prompt_rate:.1} tokens/s, {} decode steps at {decode_rate:.1} tokens/s ({})",
            out.prompt_tokens,
            out.decode_steps,
            backend.describe()
        );
    }
    Ok(())
}

/// Tokens per second (0 when nothing ran).
fn rate(tokens: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        tokens as f64 / secs
    } else {
        0.0
    }
}

/// Prints the text of a growing token sequence as it becomes whole characters.
#[derive(Default)]
struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream {
    /// Adds `id` and prints the new text, holding back an incomplete UTF-8 sequence.
    fn push(&mut self, lm: &CausalLm, id: u32) -> pupil::Result<()> {
        self.ids.push(id);
        let text = lm.tokenizer().decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.printed {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        // A closed stdout (a pipe to `head`) ends the program quietly: nobody reads the rest.
        if let Err(e) = out
            .write_all(&text.as_bytes()[self.printed..])
            .and_then(|()| out.flush())
        {
            crate::output::exit_on_stdout_error(&e);
        }
        self.printed = text.len();
        Ok(())
    }
}
