//! A loaded Llama language model: prefill, one-token decode steps and generation.

use web_time::Instant;

use super::sample::Sampler;
use super::{KvCache, Llama, LlamaConfig};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::ModelFile;
use crate::graph::Graph;
use crate::import::CHAT_TEMPLATE_TENSOR;
use crate::models::tokenizer::TextTokenizer;
use crate::tensor::Tensor;

/// A decoder with its weights, tokenizer and chat template on one backend.
pub struct CausalLm {
    model: Llama,
    backend: Backend,
    tokenizer: TextTokenizer,
    chat_template: Option<String>,
}

/// The tokens of one generation and how long its two phases took.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// New token ids (the end-of-text token included when it stopped the generation).
    pub ids: Vec<u32>,
    /// Prompt tokens run in the prefill.
    pub prompt_tokens: usize,
    /// Seconds of the prefill, first token's sampling included.
    pub prompt_secs: f64,
    /// One-token decode steps run after the prefill.
    pub decode_steps: usize,
    /// Seconds of the decode steps.
    pub decode_secs: f64,
}

impl CausalLm {
    /// Loads the decoder (weights dequantized to f32), tokenizer and chat template from `file`
    /// onto `backend`.
    pub fn load(file: &ModelFile, backend: &Backend) -> Result<CausalLm> {
        let model = Llama::load(file, backend)?;
        let tokenizer = TextTokenizer::from_model(file, None)?;
        let chat_template = file
            .tensor(CHAT_TEMPLATE_TENSOR)
            .ok()
            .map(|t| String::from_utf8_lossy(t.bytes).into_owned());
        Ok(CausalLm {
            model,
            backend: backend.clone(),
            tokenizer,
            chat_template,
        })
    }

    /// The decoder.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The decoder, to put adapters on it.
    pub fn model_mut(&mut self) -> &mut Llama {
        &mut self.model
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The chat template (Jinja text) stored with the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// An empty KV cache for one sequence of up to `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::new(self.backend(), self.config(), 1, capacity)
    }

    /// Runs `ids` (a prompt, or one new token) after the cached tokens of one sequence and
    /// returns the logits of the last position (V values).
    pub fn step(&self, cache: &mut KvCache, ids: &[u32]) -> Result<Vec<f32>> {
        let backend = self.backend();
        let flat: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
        let mut g = Graph::new(backend);
        let idv = g.input(Tensor::from_slice(backend, &[1, ids.len()], &flat)?);
        let logits = self.model.forward(&mut g, idv, cache)?;
        g.value(logits).to_vec()
    }

    /// Generates up to `max_new` tokens after `prompt`, choosing each with `sampler` and
    /// stopping after the end-of-text token when `stop_at_eos`; `on_token` sees each new
    /// token as soon as it is chosen (to stream its text).
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        stop_at_eos: bool,
        mut on_token: impl FnMut(u32) -> Result<()>,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::Invalid(
                "the prompt has no tokens; give some text".into(),
            ));
        }
        let mut out = Generation {
            ids: Vec::with_capacity(max_new),
            prompt_tokens: prompt.len(),
            prompt_secs: 0.0,
            decode_steps: 0,
            decode_secs: 0.0,
        };
        if max_new == 0 {
            return Ok(out);
        }
        let capacity = (prompt.len() + max_new).min(self.config().max_positions);
        let mut cache = self.new_cache(capacity)?;
        let start = Instant::now();
        let logits = self.step(&mut cache, prompt)?;
        let mut next = sampler.sample(&logits)?;
        out.prompt_secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        loop {
            out.ids.push(next);
            on_token(next)?;
            let eos = stop_at_eos && Some(next) == self.config().eos_id;
            if eos || out.ids.len() == max_new || cache.len() == cache.capacity() {
                break;
            }
            let logits = self.step(&mut cache, &[next])?;
            next = sampler.sample(&logits)?;
            out.decode_steps += 1;
        }
        out.decode_secs = start.elapsed().as_secs_f64();
        Ok(out)
    }
}
