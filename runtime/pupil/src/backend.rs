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

/// Says on stderr, once per process, which backend [`Backend::auto`] chose and why.
#[cfg(not(target_arch = "wasm32"))]
fn notice(what: &str) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| eprintln!("pupil: {what}"));
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

    /// The backend `wanted` (or, when it is `None`, `PUPIL_ADAPTER`) names; with neither, the
    /// best GPU, unless it is a software adapter (lavapipe, llvmpipe, SwiftShader, WARP: WGSL
    /// on the CPU runs several times slower than the CPU backend's plain loops) or there is
    /// none: then the CPU backend. That choice and its reason are said on stderr, once.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn auto(wanted: Option<&str>) -> Result<Backend> {
        let env = std::env::var("PUPIL_ADAPTER")
            .ok()
            .filter(|w| !w.is_empty());
        if let Some(w) = wanted.or(env.as_deref()) {
            return Self::open(Some(w));
        }
        let adapter = match pollster::block_on(crate::device::choose(None)) {
            Ok(a) => a,
            Err(_) => {
                notice(
                    "backend cpu (no GPU adapter found; a Vulkan, Metal or DX12 driver gives \
                     one)",
                );
                return Ok(Backend::Cpu);
            }
        };
        let info = adapter.get_info();
        if info.device_type == wgpu::DeviceType::Cpu {
            let short = info
                .name
                .split([' ', '('])
                .next()
                .unwrap_or("")
                .to_lowercase();
            notice(&format!(
                "backend cpu (the best GPU adapter, {}, is a software rasterizer, slower than the \
                 CPU backend; --adapter {short} uses it anyway)",
                info.name
            ));
            return Ok(Backend::Cpu);
        }
        let gpu = pollster::block_on(Gpu::open(&adapter))?;
        notice(&format!(
            "backend {} | {:?} (the best GPU adapter; --adapter cpu or PUPIL_ADAPTER picks another)",
            info.name, info.backend
        ));
        Ok(Backend::Gpu(gpu))
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
