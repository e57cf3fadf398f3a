//! Importing foreign model files into `.pupil` model files: safetensors checkpoints (with
//! the `config.json`, `tokenizer.json` and sentence-transformers settings beside them) and
//! GGUF files (read by a hand-written, bounds-checked reader).
//!
//! Tensors keep their names. Quantized blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the
//! k-quants Q4_K, Q5_K, Q6_K) are carried over bit for bit with [`Target::Keep`]; [`Target::F32`] and [`Target::F16`] convert. The architecture
//! settings go into the manifest config under pupil's keys (`hidden_size`, `layers`,
//! `heads`, `kv_heads`, `ffn_size`, `vocab_size`, `max_positions`, `rope_base`,
//! `norm_eps`, ...), and the tokenizer is stored as a U8 tensor holding a Hugging Face
//! `tokenizer.json` ([`TOKENIZER_TENSOR`]).
//!
//! ```no_run
//! use pupil::import::{import_file, Target};
//! let imported = import_file("model.safetensors".as_ref(), "minilm", Target::Keep)?;
//! imported.builder.write_atomic("minilm.pupil")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod folder;
mod from_gguf;
mod ggml;
mod gguf;
mod gguf_tokenizer;
mod hf_config;
mod safetensors;
mod store;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::ImportError;
pub use from_gguf::CHAT_TEMPLATE_TENSOR;
pub use ggml::GgmlType;
pub use gguf::{Gguf, GgufTensor, MetaArray, MetaValue};
pub use store::Target;

use crate::format::{ModelBuilder, ModelFile};

/// The name of the U8 tensor that holds a Hugging Face `tokenizer.json`.
pub const TOKENIZER_TENSOR: &str = "tokenizer.json";

/// The result of an import: the model file, ready to write, and what was left out.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The model file being built; add to it or write it.
    pub builder: ModelBuilder,
    /// What was left out and why, one line each (e.g. `embeddings.position_ids (I64: ...)`).
    pub skipped: Vec<String>,
}

/// Imports the safetensors or GGUF file at `path` (told apart by their first bytes) as model
/// `model_id`, storing float tensors as `target` says.
pub fn import_file(path: &Path, model_id: &str, target: Target) -> Result<Imported, ImportError> {
    let bytes = read(path)?;
    if bytes.starts_with(b"GGUF") {
        from_gguf::import(&bytes, model_id, target)
    } else if path.extension().is_some_and(|e| e == "safetensors") || looks_like_safetensors(&bytes)
    {
        safetensors::import(path, &bytes, model_id, target)
    } else {
        Err(ImportError::UnknownKind {
            path: path.to_path_buf(),
        })
    }
}

/// Imports the model at `path` as model `model_id`: a Hugging Face model folder
/// (`config.json`, `tokenizer.json`, `model.safetensors` or its shards with
/// `model.safetensors.index.json`, or one `.gguf` file), or a safetensors or GGUF file.
pub fn import_path(path: &Path, model_id: &str, target: Target) -> Result<Imported, ImportError> {
    if path.is_dir() {
        folder::import(path, model_id, target)
    } else {
        import_file(path, model_id, target)
    }
}

/// The model at `path` as a model file: a `.pupil` file as it is; a Hugging Face model
/// folder, a safetensors or a GGUF file converted in memory ([`Target::Keep`]), named
/// after the folder or the file. What a user points a command at, whatever it is.
pub fn load_model(path: &Path) -> Result<ModelFile, ImportError> {
    if path.is_file() && has_pupil_magic(path)? {
        return Ok(ModelFile::open(path)?);
    }
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("model");
    let imported = import_path(path, name, Target::Keep)?;
    Ok(ModelFile::from_bytes(imported.builder.to_bytes()?)?)
}

/// Whether the file at `path` starts with the `.pupil` magic.
fn has_pupil_magic(path: &Path) -> Result<bool, ImportError> {
    use std::io::Read;
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]).map_err(io)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(head[..got].starts_with(&crate::format::MAGIC))
}

/// The bytes of the file at `path`.
fn read(path: &Path) -> Result<Vec<u8>, ImportError> {
    std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Imports GGUF `bytes` as model `model_id`.
pub fn import_gguf(bytes: &[u8], model_id: &str, target: Target) -> Result<Imported, ImportError> {
    from_gguf::import(bytes, model_id, target)
}

/// Whether `bytes` start like a safetensors file: a length, then a JSON object.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{'
}
