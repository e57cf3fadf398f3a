//! pupil: run, refine and sync small student networks on any GPU through WGSL.
//!
//! Layers, bottom up:
//! - [`device`]: adapters, the wgpu device, pipeline cache, buffer pool, command recording.
//! - [`tensor`] and [`backend`]: tensors on the GPU or on the CPU reference backend.
//! - [`ops`]: every op's WGSL forward, WGSL backward and CPU reference, side by side.
//! - [`graph`]: the autodiff tape; [`params`] the flat parameter store; [`nn`] layers;
//!   [`optim`] fused optimizers.
//! - [`format`]: the `.pupil` model file; [`data`]: data sets.
//!
//! On the web (wasm32) nothing may block: GPU values are read with the `*_async` methods
//! ([`Tensor::to_vec_async`]), and the CPU backend is the fallback where the browser has
//! no WebGPU adapter.

// On wasm32 wgpu's handles are neither Send nor Sync (a page has one thread); the runtime
// shares them through the same `Arc`s as natively, where they are.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod backend;
pub mod data;
pub mod device;
pub mod error;
pub use pupil_format as format;
pub mod graph;
pub mod import;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod params;
pub mod refine;
mod shaders;
pub mod tensor;
pub mod train;

pub use backend::Backend;
pub use error::{Error, Result};
pub use tensor::{DType, Tensor};

/// Debug verbosity from `PUPIL_DEBUG` (0 silent, 2 logs kernel compiles, 3 prints their WGSL).
pub fn debug_level() -> u32 {
    static LEVEL: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        std::env::var("PUPIL_DEBUG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}
