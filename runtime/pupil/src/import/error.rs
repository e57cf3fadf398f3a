//! Errors of importing foreign model files.

use std::path::PathBuf;

use thiserror::Error;

use crate::format::ModelFileError;

/// Everything that can go wrong while importing a safetensors or GGUF file. Messages say what
/// is wrong and what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A file could not be read.
    #[error("cannot read {}: {source}; check the path and its permissions", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The input is neither GGUF nor safetensors.
    #[error("{}: unknown model file kind; pupil reads `.pupil`, `.safetensors` and `.gguf` files and Hugging Face model folders", .path.display())]
    UnknownKind {
        /// The file.
        path: PathBuf,
    },
    /// A model folder holds no weights pupil reads.
    #[error("{}: no model weights found; a model folder holds `model.safetensors`, shards listed by `model.safetensors.index.json`, or one `.gguf` file", .path.display())]
    NoWeights {
        /// The folder.
        path: PathBuf,
    },
    /// The GGUF bytes end before a structure they announce.
    #[error("GGUF file is truncated: {what} needs {needed} bytes at offset {offset} but the file has {len}; download it again")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// How many bytes it needs.
        needed: u64,
        /// The file's length.
        len: u64,
    },
    /// The GGUF bytes are malformed or hostile (bad magic, version, sizes, offsets).
    #[error("invalid GGUF file: {0}; the file is damaged or not GGUF: download it again")]
    Gguf(String),
    /// The safetensors bytes are malformed.
    #[error(
        "invalid safetensors file: {0}; the file is damaged or not safetensors: download it again"
    )]
    Safetensors(String),
    /// A tensor's element type cannot be imported.
    #[error("tensor {name:?} has element type {dtype}, which pupil cannot import; supported: {supported}")]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// Its type as the file names it.
        dtype: String,
        /// What is supported.
        supported: &'static str,
    },
    /// A side file (config.json, tokenizer.json ...) is not what it should be.
    #[error("{}: {reason}; fix or delete the file (it is optional)", .path.display())]
    SideFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The metadata lacks a value the architecture needs, or has it with the wrong type.
    #[error("metadata key {key:?} is missing or not {expected}; the file was not written by a standard converter")]
    Metadata {
        /// The key.
        key: String,
        /// The type it must have.
        expected: &'static str,
    },
    /// Building the tokenizer failed.
    #[error("cannot build the tokenizer: {0}")]
    Tokenizer(String),
    /// The model file could not be built.
    #[error(transparent)]
    Model(#[from] ModelFileError),
}
