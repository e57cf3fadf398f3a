//! Errors of reading, building and writing model files.

use std::io;
use std::path::PathBuf;

use pupil_wire::{DType, FormatError, ShapeError};
use thiserror::Error;

/// Everything that can go wrong with a model file. Messages say what is wrong
/// and what to do.
#[derive(Debug, Error)]
pub enum ModelFileError {
    /// The operating system refused a file operation.
    #[error("cannot {action} {}: {source}; check the path, its permissions and the free space", .path.display())]
    Io {
        /// What was being done, e.g. `read`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The bytes are not a valid `.pupil` file.
    #[error("{origin}: {source}")]
    Invalid {
        /// Where the bytes came from: a path, or `model bytes`.
        origin: String,
        /// What is wrong with them.
        #[source]
        source: FormatError,
    },
    /// The model has no tensor of that name.
    #[error("model {model:?} has no tensor named {name:?}; its tensors are: {available}")]
    NoSuchTensor {
        /// The name asked for.
        name: String,
        /// The model's id.
        model: String,
        /// The model's tensor names, comma-separated (the first few).
        available: String,
    },
    /// A string is empty where it must not be, or longer than the format allows.
    #[error("{what} {value:?} is {} bytes but must be 1 to {max}; use a shorter, non-empty one", .value.len())]
    BadLength {
        /// What the string is, e.g. `tensor name`.
        what: &'static str,
        /// The string.
        value: String,
        /// The limit.
        max: usize,
    },
    /// More items than the format allows.
    #[error("too many {what}: the limit is {max}; {hint}")]
    TooMany {
        /// What there are too many of.
        what: &'static str,
        /// The limit.
        max: usize,
        /// What to do about it.
        hint: &'static str,
    },
    /// Two tensors share a name.
    #[error("tensor {name:?} is added twice; tensor names must be unique")]
    DuplicateTensor {
        /// The repeated name.
        name: String,
    },
    /// A tensor's shape cannot hold its dtype.
    #[error("tensor {name:?}: {dtype} {shape:?} is invalid: {error}; fix the shape")]
    BadShape {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<u64>,
        /// What is wrong.
        error: ShapeError,
    },
    /// A tensor's data does not match its dtype and shape.
    #[error("tensor {name:?}: {dtype} {shape:?} needs {expected} {unit} but {got} were given")]
    DataLength {
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<u64>,
        /// `bytes` or `values`.
        unit: &'static str,
        /// What the dtype and shape need.
        expected: u64,
        /// What was given.
        got: u64,
    },
    /// f32 values cannot be stored as this dtype.
    #[error(
        "tensor {name:?}: f32 values cannot be stored as {dtype}; pass raw bytes with add_tensor"
    )]
    UnsupportedConversion {
        /// The tensor.
        name: String,
        /// The requested dtype.
        dtype: DType,
    },
    /// Encoding the file failed.
    #[error(transparent)]
    Encode(FormatError),
}
