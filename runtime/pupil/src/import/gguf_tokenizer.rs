//! A Hugging Face `tokenizer.json` built from a GGUF file's `tokenizer.ggml.*` metadata, for
//! the byte-level BPE tokenizers (`tokenizer.ggml.model = gpt2`) of GPT-2, SmolLM and
//! StarCoder style models. The pre-tokenizer follows llama.cpp's `tokenizer.ggml.pre`.

use serde_json::{json, Map, Value};

use super::error::ImportError;
use super::gguf::{Gguf, MetaValue};

/// llama.cpp token types that are added (special) tokens: 3 control, 4 user-defined.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Pre-tokenizer kinds (llama.cpp names) that split digits one by one before the GPT-2
/// regex; those that use the plain GPT-2 regex.
const DIGIT_SPLIT: &[&str] = &["smollm", "starcoder", "refact", "codeshell", "command-r"];
const GPT2: &[&str] = &["gpt2", "default", "gpt-2", "mpt", "olmo", "jais"];

/// The `tokenizer.json` bytes, or why this file's tokenizer is not supported (the caller
/// skips it); an error when the metadata is malformed.
pub(crate) fn build(gguf: &Gguf<'_>) -> Result<Result<Vec<u8>, String>, ImportError> {
    let model = gguf.get("tokenizer.ggml.model").and_then(MetaValue::as_str);
    match model {
        Some("gpt2") => {}
        Some(other) => return Ok(Err(format!("tokenizer model {other:?} is not supported"))),
        None => return Ok(Err("the file has no tokenizer".into())),
    }
    let pre = gguf
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = if DIGIT_SPLIT.contains(&pre) {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]})
    } else if GPT2.contains(&pre) {
        byte_level
    } else {
        return Ok(Err(format!("pre-tokenizer {pre:?} is not supported")));
    };
    let tokens = strings(gguf, "tokenizer.ggml.tokens")?;
    let merges = strings(gguf, "tokenizer.ggml.merges")?;
    let types = gguf
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array);
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert((*token).to_owned(), json!(id));
        let ty = types.and_then(|t| t.scalar(id)).and_then(|v| v.as_i64());
        if ty == Some(CONTROL) || ty == Some(USER_DEFINED) {
            added.push(json!({"id": id, "content": token, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false,
                "special": ty == Some(CONTROL)}));
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": Value::Object(vocab), "merges": merges},
    });
    serde_json::to_vec(&tokenizer)
        .map(Ok)
        .map_err(|e| ImportError::Tokenizer(e.to_string()))
}

/// The string array at `key`.
fn strings<'a>(gguf: &'a Gguf<'_>, key: &str) -> Result<Vec<&'a str>, ImportError> {
    let bad = || ImportError::Metadata {
        key: key.to_owned(),
        expected: "an array of strings",
    };
    gguf.get(key)
        .and_then(MetaValue::as_array)
        .and_then(|a| a.strings())
        .ok_or_else(bad)
}
