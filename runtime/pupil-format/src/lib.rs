//! `.pupil` model files: reading with full validation, dequantizing, and
//! building and writing them atomically.
//!
//! The byte layout and its limits are defined and documented in [`pupil_wire`],
//! which also builds `no_std` for microcontrollers; this crate adds owned,
//! file-system level conveniences on top. It needs no GPU runtime, so a sync
//! client or server reads model files without linking wgpu; the runtime
//! re-exports it as `pupil::format`.

mod atomic;
pub use atomic::write_atomic;
mod builder;
pub mod convert;
mod error;
mod file;

pub use builder::ModelBuilder;
pub use error::ModelFileError;
pub use file::{ModelFile, TensorView};
pub use pupil_wire::{
    ConfigEntry, ConfigValue, DType, FormatError, Hex, Manifest, ModelInfo, ShapeError, MAGIC,
};
