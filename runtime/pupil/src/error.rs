//! The runtime's typed error. Every message says what went wrong and what to do about it.

use thiserror::Error;

/// Result alias used throughout the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// No GPU adapter matched (or none exists).
    #[error("{}", no_adapter(.wanted.as_deref(), .present))]
    NoAdapter {
        /// The adapter preference that failed to match, if any.
        wanted: Option<String>,
        /// The adapters there are (name, backend, type), none when `wanted` is `None`.
        present: Vec<String>,
    },
    /// The adapter refused to create a device.
    #[error("the adapter {adapter:?} refused to open a device: {reason}; try another adapter with PUPIL_ADAPTER")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// What wgpu said.
        reason: String,
    },
    /// The GPU device was lost (driver reset, GPU removed, timeout).
    #[error("the GPU device was lost ({reason}); recreate the backend, or fall back to PUPIL_ADAPTER=cpu")]
    DeviceLost {
        /// What the driver said.
        reason: String,
    },
    /// GPU memory ran out.
    #[error("out of GPU memory while allocating {bytes} bytes; reduce the batch size or the memory budget")]
    OutOfMemory {
        /// Size of the failed allocation.
        bytes: u64,
    },
    /// A tensor is larger than one storage binding may be on this adapter.
    #[error("tensor of {bytes} bytes exceeds this adapter's max storage binding of {maximum} bytes; split the work (smaller batch) or use an adapter with a larger limit")]
    BindingTooLarge {
        /// Requested binding size.
        bytes: u64,
        /// The adapter's limit.
        maximum: u64,
    },
    /// The GPU reported a validation or internal error.
    #[error("GPU error in {context}: {message}")]
    Gpu {
        /// What the runtime was doing.
        context: String,
        /// What wgpu said.
        message: String,
    },
    /// Operand shapes do not fit the operation.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// Which shapes and why.
        detail: String,
    },
    /// Operands live on different backends.
    #[error("{op}: operands live on different backends (CPU and GPU); move them with Tensor::to_backend first")]
    BackendMismatch {
        /// The operation.
        op: &'static str,
    },
    /// The operation does not support this dtype or feature on this backend.
    #[error("{op} is not supported here: {detail}")]
    NotSupported {
        /// The operation.
        op: &'static str,
        /// Why.
        detail: String,
    },
    /// A value that must be finite was NaN or infinite.
    #[error("non-finite value in {what}; lower the learning rate or enable gradient clipping")]
    NonFinite {
        /// Where it was found.
        what: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A model file is unreadable or does not fit.
    #[error(transparent)]
    Model(#[from] crate::format::ModelFileError),
    /// A data set is missing or malformed.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A refinement session cannot fit its memory budget.
    #[error("refinement needs at least {needed} bytes ({detail}) but the memory budget is {budget} bytes; {hint}")]
    OverBudget {
        /// The least the session needs (one example per micro-batch).
        needed: u64,
        /// The budget given.
        budget: u64,
        /// Where the bytes go.
        detail: String,
        /// What to change.
        hint: String,
    },
    /// Invalid argument.
    #[error("{0}")]
    Invalid(String),
}

/// The message of [`Error::NoAdapter`]: what there is, and how to pick it.
fn no_adapter(wanted: Option<&str>, present: &[String]) -> String {
    let install = "install a Vulkan/Metal/DX12 driver (on Debian: `apt-get install mesa-vulkan-drivers` gives a software Vulkan adapter)";
    match wanted {
        _ if present.is_empty() => format!(
            "no GPU adapter found{}: {install}, or use the CPU backend with --adapter cpu or PUPIL_ADAPTER=cpu",
            wanted.map(|w| format!(" matching {w:?}")).unwrap_or_default()
        ),
        Some(w) => format!(
            "no GPU adapter matches {w:?}; the adapters here are: {}, and `cpu` (the CPU backend). \
             Pick one with --adapter or PUPIL_ADAPTER=<a part of its name|vulkan|metal|dx12|gl|discrete|integrated|cpu>, e.g. PUPIL_ADAPTER=cpu \
             (GL adapters are looked for only with --adapter gl or WGPU_BACKEND=gl)",
            present.join("; ")
        ),
        None => format!("no GPU adapter found: {install}, or use PUPIL_ADAPTER=cpu"),
    }
}

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }
}
