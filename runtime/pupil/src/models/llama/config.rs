//! The shape of a Llama decoder, read from a `.pupil` manifest.

use crate::error::{Error, Result};
use crate::format::{ConfigValue, ModelFile};

/// The shape of a Llama decoder (SmolLM2: 30 layers, width 576, 9 query / 3 KV heads).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Width D.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads Hkv (H is a multiple of it: grouped-query attention).
    pub kv_heads: usize,
    /// Head width Dh = D / H.
    pub head_dim: usize,
    /// SwiGLU feed-forward width.
    pub ffn: usize,
    /// Vocabulary size V.
    pub vocab: usize,
    /// Longest context (positions).
    pub max_positions: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// The output projection is the token embedding table.
    pub tied_embeddings: bool,
    /// End-of-text token id, where the model names one.
    pub eos_id: Option<u32>,
}

impl LlamaConfig {
    /// Reads the config of a model file written by [`crate::import`] from a Llama GGUF.
    pub fn from_model(file: &ModelFile) -> Result<LlamaConfig> {
        let info = file.info();
        if info.arch.as_str() != "llama" {
            return Err(Error::Invalid(format!(
                "model {:?} is a {:?}, not a llama decoder; pick a model converted from a Llama GGUF",
                info.model_id.as_str(),
                info.arch.as_str()
            )));
        }
        let value = |key: &str| info.get(key);
        let int = |key: &str| match value(key) {
            Some(ConfigValue::Int(v)) => usize::try_from(*v).map_err(|_| missing(key)),
            _ => Err(missing(key)),
        };
        let float = |key: &str, default: f32| match value(key) {
            Some(ConfigValue::Float(v)) => *v as f32,
            _ => default,
        };
        let (hidden, heads) = (int("hidden_size")?, int("heads")?);
        let kv_heads = int("kv_heads").unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !hidden.is_multiple_of(heads) || heads % kv_heads != 0 {
            return Err(Error::Invalid(format!(
                "llama: width {hidden} with {heads} query and {kv_heads} kv heads cannot be split into heads"
            )));
        }
        let head_dim = hidden / heads;
        if !head_dim.is_multiple_of(2) {
            return Err(Error::Invalid(format!(
                "llama: head width {head_dim} is odd; rotary embeddings need an even width"
            )));
        }
        let vocab = int("vocab_size").or_else(|_| {
            file.tensor("token_embd.weight")
                .ok()
                .and_then(|t| t.shape.first().map(|&v| v as usize))
                .ok_or_else(|| missing("vocab_size"))
        })?;
        Ok(LlamaConfig {
            hidden,
            layers: int("layers")?,
            heads,
            kv_heads,
            head_dim,
            ffn: int("ffn_size")?,
            vocab,
            max_positions: int("max_positions").unwrap_or(2048),
            rope_base: float("rope_base", 1e4),
            eps: float("norm_eps", 1e-5),
            tied_embeddings: int("tied_embeddings").is_ok_and(|v| v == 1)
                || file.tensor("output.weight").is_err(),
            eos_id: int("eos_id").ok().and_then(|v| u32::try_from(v).ok()),
        })
    }
}

/// The error for a config key the model file lacks.
fn missing(key: &str) -> Error {
    Error::Invalid(format!(
        "the model's config has no integer {key:?}; convert the model again with `pupil convert` from its GGUF file"
    ))
}
