//! Backend choice: a GPU through wgpu, or the CPU reference implementation as a fallback.

use std::sync::Arc;

use crate::device::Gpu;
use crate::error::Result;

/// Where tensors live and ops run.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The plain-Rust reference implementation of every op (slow, always available).
    Cpu,
    /// A GPU through wgpu and WGSL kernels.
    Gpu(Arc<Gpu>),
}

impl Backend {
    /// Open the backend the user asked for: `cpu`, or a GPU adapter matched by name, backend
    /// or type (see [`crate::device::matches`]); `None` picks the best GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(wanted: Option<&str>) -> Result<Backend> {
        pollster::block_on(Self::open_async(wanted))
    }

    /// [`Backend::open`] for the web, where waiting must be asynchronous.
    pub async fn open_async(wanted: Option<&str>) -> Result<Backend> {
        match wanted {
            Some(w) if w.eq_ignore_ascii_case("cpu") => Ok(Backend::Cpu),
            _ => Ok(Backend::Gpu(Gpu::new_async(wanted).await?)),
        }
    }

    /// The backend `PUPIL_ADAPTER` (or `wanted`, when given) names; with neither, the best GPU,
    /// or the CPU with a notice on stderr when no adapter exists.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn auto(wanted: Option<&str>) -> Result<Backend> {
        let env = std::env::var("PUPIL_ADAPTER").ok();
        match wanted.or(env.as_deref()) {
            Some(w) => Self::open(Some(w)),
            None => match Self::open(None) {
                Ok(b) => Ok(b),
                Err(e) => {
                    eprintln!("pupil: {e}\npupil: falling back to the CPU backend");
                    Ok(Backend::Cpu)
                }
            },
        }
    }

    /// A short description: adapter name and backend, or "cpu".
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu => "cpu (reference backend)".into(),
            Backend::Gpu(g) => format!("{} | {}", g.adapter().name, g.adapter().backend),
        }
    }

    /// The GPU, if this is one.
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Backend::Gpu(g) => Some(g),
            Backend::Cpu => None,
        }
    }

    /// Submit recorded GPU work and wait for it (no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Backend::Gpu(g) => g.synchronize(),
            Backend::Cpu => Ok(()),
        }
    }
}
