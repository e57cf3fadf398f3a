//! Importing a safetensors file (PyTorch / Hugging Face checkpoints), with the model's
//! `config.json`, `tokenizer.json` and sentence-transformers settings found beside it.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::error::ImportError;
use super::hf_config;
use super::store::{put, Target};
use super::{Imported, TOKENIZER_TENSOR};
use crate::format::{DType, ModelBuilder};

/// The pupil dtype of a safetensors dtype; `None` for those pupil cannot hold.
fn pupil_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::I32 => DType::I32,
        _ => return None,
    })
}

/// Converts the safetensors `bytes` read from `path` into a model file named `model_id`,
/// with the settings and tokenizer found beside it.
pub(crate) fn import(
    path: &Path,
    bytes: &[u8],
    model_id: &str,
    target: Target,
) -> Result<Imported, ImportError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    import_shards(dir, &[bytes], model_id, target)
}

/// Converts the safetensors files `shards` (one, or the shards of a checkpoint) of the
/// model in folder `dir` into a model file named `model_id`. Tensors keep their names;
/// 64-bit integer tensors (such as BERT's `position_ids`, which are only `0..n`) are
/// skipped and listed in [`Imported::skipped`]; a name in two shards is an error.
pub(crate) fn import_shards(
    dir: &Path,
    shards: &[&[u8]],
    model_id: &str,
    target: Target,
) -> Result<Imported, ImportError> {
    let mut tensors = Vec::new();
    for bytes in shards {
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| ImportError::Safetensors(e.to_string()))?;
        tensors.extend(st.tensors());
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = tensors.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ImportError::Safetensors(format!(
            "tensor {:?} is in two shards",
            w[0].0
        )));
    }
    let config = hf_config::read(dir)?;
    let mut builder = ModelBuilder::new(model_id, &config.arch)?;
    config.apply(&mut builder)?;
    let mut skipped = Vec::new();
    for (name, view) in tensors {
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        match pupil_dtype(view.dtype()) {
            Some(dtype) => put(&mut builder, target, &name, dtype, &shape, view.data())?,
            None if matches!(view.dtype(), Dtype::I64 | Dtype::U64) => {
                skipped.push(format!("{name} ({:?}: 64-bit integers)", view.dtype()));
            }
            None => {
                return Err(ImportError::UnsupportedType {
                    name,
                    dtype: format!("{:?}", view.dtype()),
                    supported: "F32, F16, BF16, I8, U8, I32 (I64 and U64 are skipped)",
                })
            }
        }
    }
    if let Some(tokenizer) = hf_config::tokenizer(dir)? {
        builder.add_tensor(
            TOKENIZER_TENSOR,
            DType::U8,
            &[tokenizer.len() as u64],
            tokenizer,
        )?;
    } else {
        skipped.push(format!("{TOKENIZER_TENSOR} (not found beside the input)"));
    }
    Ok(Imported { builder, skipped })
}
