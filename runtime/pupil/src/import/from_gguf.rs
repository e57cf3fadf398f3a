//! Importing a GGUF file: tensors (quantized blocks kept bit for bit when the target allows),
//! the architecture settings from `{arch}.*` metadata, and the tokenizer built from
//! `tokenizer.ggml.*`.
//!
//! llama.cpp's converters reorder the rows of each head of the Llama query and key
//! projections so that its rotary embedding can rotate adjacent pairs; pupil's RoPE rotates
//! the halves of each head as Hugging Face does, so the importer restores the original row
//! order. Rows move whole, so quantized blocks stay bit-exact.

use super::error::ImportError;
use super::ggml;
use super::gguf::{Gguf, GgufTensor, MetaValue};
use super::gguf_tokenizer;
use super::store::{put, Target};
use super::{Imported, TOKENIZER_TENSOR};
use crate::format::{DType, ModelBuilder};

/// Integer settings: metadata key after `{arch}.`, pupil key.
const INTS: &[(&str, &str)] = &[
    ("embedding_length", "hidden_size"),
    ("block_count", "layers"),
    ("attention.head_count", "heads"),
    ("attention.head_count_kv", "kv_heads"),
    ("feed_forward_length", "ffn_size"),
    ("vocab_size", "vocab_size"),
    ("context_length", "max_positions"),
    ("rope.dimension_count", "rope_dim"),
];

/// Float settings: metadata key after `{arch}.`, pupil key.
const FLOATS: &[(&str, &str)] = &[
    ("rope.freq_base", "rope_base"),
    ("attention.layer_norm_rms_epsilon", "norm_eps"),
    ("attention.layer_norm_epsilon", "norm_eps"),
];

/// Token ids: metadata key, pupil key.
const TOKEN_IDS: &[(&str, &str)] = &[
    ("tokenizer.ggml.bos_token_id", "bos_id"),
    ("tokenizer.ggml.eos_token_id", "eos_id"),
    ("tokenizer.ggml.padding_token_id", "pad_id"),
    ("tokenizer.ggml.unknown_token_id", "unk_id"),
];

/// The name under which the chat template (a Jinja text) is stored, as a U8 tensor.
pub const CHAT_TEMPLATE_TENSOR: &str = "chat_template.jinja";

/// Converts GGUF `bytes` into a model file named `model_id`.
pub(crate) fn import(
    bytes: &[u8],
    model_id: &str,
    target: Target,
) -> Result<Imported, ImportError> {
    let gguf = Gguf::parse(bytes)?;
    let arch = gguf
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| ImportError::Metadata {
            key: "general.architecture".into(),
            expected: "a string",
        })?
        .to_owned();
    let mut builder = ModelBuilder::new(model_id, &arch)?;
    settings(&gguf, &arch, &mut builder)?;
    let heads = |key: &str| {
        gguf.get(&format!("{arch}.{key}"))
            .and_then(MetaValue::as_i64)
    };
    let (q_heads, kv_heads) = (
        heads("attention.head_count"),
        heads("attention.head_count_kv"),
    );
    let mut skipped = Vec::new();
    for t in &gguf.tensors {
        let dtype = t
            .ggml_type
            .pupil_dtype()
            .ok_or_else(|| ImportError::UnsupportedType {
                name: t.name.clone(),
                dtype: t.ggml_type.name(),
                supported: ggml::SUPPORTED,
            })?;
        let data = gguf.data(t);
        let rope_heads = match t.name.rsplit('.').nth(1) {
            Some("attn_q") if arch == "llama" => q_heads,
            Some("attn_k") if arch == "llama" => kv_heads.or(q_heads),
            _ => None,
        };
        match rope_heads {
            Some(h) => {
                let rows = unpermute_rows(t, data, h)?;
                put(&mut builder, target, &t.name, dtype, &t.shape, &rows)?;
            }
            None => put(&mut builder, target, &t.name, dtype, &t.shape, data)?,
        }
    }
    if !gguf.tensors.iter().any(|t| t.name == "output.weight") {
        builder.config_int("tied_embeddings", 1)?;
    }
    match gguf_tokenizer::build(&gguf)? {
        Ok(json) => {
            builder.add_tensor(TOKENIZER_TENSOR, DType::U8, &[json.len() as u64], json)?;
        }
        Err(why) => skipped.push(format!("{TOKENIZER_TENSOR} ({why})")),
    }
    if let Some(t) = gguf
        .get("tokenizer.chat_template")
        .and_then(MetaValue::as_str)
    {
        let b = t.as_bytes();
        builder.add_tensor(CHAT_TEMPLATE_TENSOR, DType::U8, &[b.len() as u64], b)?;
    }
    Ok(Imported { builder, skipped })
}

/// Writes the `{arch}.*` and token-id metadata into the config.
fn settings(gguf: &Gguf<'_>, arch: &str, b: &mut ModelBuilder) -> Result<(), ImportError> {
    for &(k, key) in INTS {
        if let Some(v) = gguf.get(&format!("{arch}.{k}")).and_then(MetaValue::as_i64) {
            b.config_int(key, v)?;
        }
    }
    for &(k, key) in FLOATS {
        if let Some(v) = gguf.get(&format!("{arch}.{k}")).and_then(MetaValue::as_f64) {
            b.config_float(key, v)?;
        }
    }
    for &(k, key) in TOKEN_IDS {
        if let Some(v) = gguf.get(k).and_then(MetaValue::as_i64) {
            b.config_int(key, v)?;
        }
    }
    Ok(())
}

/// The rows of projection `t` (`[heads × head_dim, in]`) back in Hugging Face order: within
/// each head, row `2i + j` of the file is row `j × head_dim / 2 + i` of the original.
fn unpermute_rows(t: &GgufTensor, data: &[u8], heads: i64) -> Result<Vec<u8>, ImportError> {
    let bad = || {
        ImportError::Gguf(format!(
            "tensor {:?} of shape {:?} cannot be split into {heads} rotary heads",
            t.name, t.shape
        ))
    };
    let &[rows, cols] = t.shape.as_slice() else {
        return Err(bad());
    };
    if rows == 0 || cols == 0 || data.is_empty() {
        return Err(ImportError::Gguf(format!(
            "tensor {:?} of shape {:?} has no elements: an attention projection needs rows and \
             columns; the file is damaged or was written by a broken converter",
            t.name, t.shape
        )));
    }
    let heads = u64::try_from(heads)
        .ok()
        .filter(|&h| h > 0)
        .ok_or_else(bad)?;
    let head_dim = rows / heads;
    if !rows.is_multiple_of(heads)
        || !head_dim.is_multiple_of(2)
        || !(data.len() as u64).is_multiple_of(rows)
    {
        return Err(bad());
    }
    let row_len = usize::try_from(data.len() as u64 / rows).map_err(|_| bad())?;
    let (head_dim, half) = (head_dim as usize, head_dim as usize / 2);
    let mut out = vec![0u8; data.len()];
    for (src, dst) in data
        .chunks_exact(row_len * head_dim)
        .zip(out.chunks_exact_mut(row_len * head_dim))
    {
        for i in 0..half {
            for j in 0..2 {
                let from = (2 * i + j) * row_len;
                let to = (j * half + i) * row_len;
                dst[to..to + row_len].copy_from_slice(&src[from..from + row_len]);
            }
        }
    }
    Ok(out)
}
