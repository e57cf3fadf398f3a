//! The LoRA adapter file: a `.pupil` file of architecture `llama-lora` holding every
//! adapter's factors (`blk.{i}.{projection}.lora_a` `[rank, in]` and `.lora_b` `[out, rank]`,
//! f32) and, in its config, `lora.rank`, `lora.alpha`, `lora.targets` (e.g. `q,v`) and
//! `lora.base`, the hex content hash of the base model it was trained over, so adapters are
//! never run on another base. It is what `pupil refine-text --out` writes, what a device
//! syncs and what `pupil generate --lora` loads.

use super::lora::{LlamaLora, Target};
use super::LlamaConfig;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::{Hex, ModelBuilder, ModelFile};

/// The adapter file's architecture name.
pub const ARCH: &str = "llama-lora";
const RANK: &str = "lora.rank";
const ALPHA: &str = "lora.alpha";
const TARGETS: &str = "lora.targets";
const BASE: &str = "lora.base";

impl LlamaLora {
    /// The adapters as an adapter file over `base` (the model file they were trained on).
    pub fn to_builder(&self, base: &ModelFile) -> Result<ModelBuilder> {
        let mut b = ModelBuilder::new("lora", ARCH)?;
        b.config_int(RANK, self.rank() as i64)?
            .config_float(ALPHA, f64::from(self.alpha()))?
            .config_str(TARGETS, &target_list(self.targets()))?
            .config_str(BASE, &Hex(&base.content_hash()).to_string())?;
        self.params().export(&mut b)?;
        Ok(b)
    }

    /// Reads an adapter file made over `base` (whose decoder config is `cfg`) onto
    /// `backend`; refuses a file made over another base, or one whose tensors do not match
    /// its own rank and targets.
    pub fn from_file(
        file: &ModelFile,
        base: &ModelFile,
        cfg: &LlamaConfig,
        backend: &Backend,
    ) -> Result<LlamaLora> {
        let info = file.info();
        if info.arch.as_str() != ARCH {
            return Err(Error::Invalid(format!(
                "not a LoRA adapter file (architecture {:?}, expected {ARCH:?}); write one with \
                 `pupil refine-text --out`",
                info.arch.as_str()
            )));
        }
        let config = |key: &str| {
            info.get(key)
                .ok_or_else(|| Error::Invalid(format!("the adapter file lacks config {key:?}")))
        };
        let named = config(BASE)?;
        let want = Hex(&base.content_hash()).to_string();
        if named.as_str() != Some(want.as_str()) {
            return Err(Error::Invalid(format!(
                "the adapters were trained over the base model with content hash {}, not this \
                 one ({want}); load them with the base they name",
                named.as_str().unwrap_or("?")
            )));
        }
        let rank = config(RANK)?
            .as_int()
            .and_then(|r| usize::try_from(r).ok())
            .ok_or_else(|| Error::Invalid("lora.rank is not a positive integer".into()))?;
        let alpha = config(ALPHA)?
            .as_float()
            .ok_or_else(|| Error::Invalid("lora.alpha is not a number".into()))?
            as f32;
        let targets = Target::parse_list(config(TARGETS)?.as_str().unwrap_or(""))?;
        let lora = LlamaLora::new(cfg, &targets, rank, alpha, backend, 0)?;
        let missing = lora.params().load(file)?;
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "the adapter file lacks {} (or its rank and targets do not match its tensors)",
                missing.join(", ")
            )));
        }
        let expected = lora.params().export_values()?.len();
        let extra = file.tensors().filter(|t| t.name.contains(".lora_")).count();
        if extra != expected {
            return Err(Error::Invalid(format!(
                "the adapter file holds {extra} adapter tensors, its config names {expected}"
            )));
        }
        Ok(lora)
    }
}

/// `q,v`-style list of `targets` (the form [`Target::parse_list`] reads).
fn target_list(targets: &[Target]) -> String {
    targets
        .iter()
        .map(|t| t.key())
        .collect::<Vec<_>>()
        .join(",")
}
