//! The architecture settings of a Hugging Face checkpoint, read from the `config.json`,
//! `sentence_bert_config.json` and `1_Pooling/config.json` beside its weights, and written
//! into the model file's config under pupil's key names.

use std::path::Path;

use serde_json::Value;

use super::error::ImportError;
use crate::format::ModelBuilder;

/// Integer settings: Hugging Face key, pupil key.
const INTS: &[(&str, &str)] = &[
    ("hidden_size", "hidden_size"),
    ("num_hidden_layers", "layers"),
    ("num_attention_heads", "heads"),
    ("num_key_value_heads", "kv_heads"),
    ("intermediate_size", "ffn_size"),
    ("vocab_size", "vocab_size"),
    ("max_position_embeddings", "max_positions"),
    ("type_vocab_size", "type_vocab_size"),
    ("pad_token_id", "pad_id"),
    ("bos_token_id", "bos_id"),
    ("eos_token_id", "eos_id"),
];

/// Float settings: Hugging Face key, pupil key.
const FLOATS: &[(&str, &str)] = &[
    ("layer_norm_eps", "norm_eps"),
    ("rms_norm_eps", "norm_eps"),
    ("rope_theta", "rope_base"),
];

/// The settings found beside a checkpoint.
#[derive(Clone, Debug)]
pub(crate) struct HfConfig {
    /// `model_type` (e.g. `bert`), or `unknown` without a config.json.
    pub arch: String,
    ints: Vec<(&'static str, i64)>,
    floats: Vec<(&'static str, f64)>,
    strs: Vec<(&'static str, String)>,
}

/// Reads the JSON file at `path`, `None` if it does not exist.
fn json(path: &Path) -> Result<Option<Value>, ImportError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ImportError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ImportError::SideFile {
            path: path.to_path_buf(),
            reason: format!("not valid JSON ({e})"),
        })
}

/// Reads the settings in `dir`; absent files leave their settings out.
pub(crate) fn read(dir: &Path) -> Result<HfConfig, ImportError> {
    let mut cfg = HfConfig {
        arch: "unknown".into(),
        ints: Vec::new(),
        floats: Vec::new(),
        strs: Vec::new(),
    };
    if let Some(c) = json(&dir.join("config.json"))? {
        if let Some(t) = c.get("model_type").and_then(Value::as_str) {
            cfg.arch = t.to_owned();
        }
        for &(hf, key) in INTS {
            if let Some(v) = c.get(hf).and_then(Value::as_i64) {
                cfg.ints.push((key, v));
            }
        }
        for &(hf, key) in FLOATS {
            if let Some(v) = c.get(hf).and_then(Value::as_f64) {
                cfg.floats.push((key, v));
            }
        }
        if let Some(act) = c.get("hidden_act").and_then(Value::as_str) {
            cfg.strs.push(("activation", act.to_owned()));
        }
    }
    let sbert = json(&dir.join("sentence_bert_config.json"))?;
    if let Some(v) = sbert
        .as_ref()
        .and_then(|s| s.get("max_seq_length")?.as_i64())
    {
        cfg.ints.push(("max_seq_len", v));
    }
    if let Some(p) = json(&dir.join("1_Pooling").join("config.json"))? {
        let on = |k: &str| p.get(k).and_then(Value::as_bool) == Some(true);
        let mode = [
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_max_tokens", "max"),
        ]
        .into_iter()
        .find(|(k, _)| on(k));
        if let Some((_, mode)) = mode {
            cfg.strs.push(("pooling", mode.to_owned()));
        }
    }
    Ok(cfg)
}

/// The bytes of `tokenizer.json` in `dir`, if there is one.
pub(crate) fn tokenizer(dir: &Path) -> Result<Option<Vec<u8>>, ImportError> {
    let path = dir.join("tokenizer.json");
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ImportError::Io { path, source }),
    }
}

impl HfConfig {
    /// Writes the settings into `builder`'s config.
    pub(crate) fn apply(&self, builder: &mut ModelBuilder) -> Result<(), ImportError> {
        for &(k, v) in &self.ints {
            builder.config_int(k, v)?;
        }
        for &(k, v) in &self.floats {
            builder.config_float(k, v)?;
        }
        for (k, v) in &self.strs {
            builder.config_str(k, v)?;
        }
        Ok(())
    }
}
