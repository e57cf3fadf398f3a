//! Adapter discovery and choice: list every adapter, pick the best or the one the user named.

use crate::error::{Error, Result};

/// A readable description of one adapter, as `pupil info` prints it.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Adapter name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)"; "unnamed Cpu adapter" where
    /// the platform gives none (browsers).
    pub name: String,
    /// Backend: Vulkan, Metal, Dx12, Gl, BrowserWebGpu.
    pub backend: String,
    /// Device type: DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu, Other.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Whether f16 arithmetic and storage is available in shaders.
    pub shader_f16: bool,
    /// Whether subgroup operations are available.
    pub subgroups: bool,
    /// Every feature the adapter reports.
    pub features: Vec<String>,
    /// Selected limits (name, value).
    pub limits: Vec<(&'static str, u64)>,
}

impl AdapterReport {
    /// Describe an adapter.
    pub fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let features = adapter.features();
        let l = adapter.limits();
        // Browsers name no adapter (WebGPU's `description` is empty, for privacy).
        let name = if info.name.is_empty() {
            format!("unnamed {:?} adapter", info.device_type)
        } else {
            info.name.clone()
        };
        AdapterReport {
            name,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            features: features.iter_names().map(|(n, _)| n.to_string()).collect(),
            limits: vec![
                ("max_buffer_size", l.max_buffer_size),
                (
                    "max_storage_buffer_binding_size",
                    l.max_storage_buffer_binding_size,
                ),
                (
                    "max_storage_buffers_per_shader_stage",
                    l.max_storage_buffers_per_shader_stage as u64,
                ),
                (
                    "max_compute_workgroup_storage_size",
                    l.max_compute_workgroup_storage_size as u64,
                ),
                (
                    "max_compute_invocations_per_workgroup",
                    l.max_compute_invocations_per_workgroup as u64,
                ),
                (
                    "max_compute_workgroup_size_x",
                    l.max_compute_workgroup_size_x as u64,
                ),
                (
                    "max_compute_workgroups_per_dimension",
                    l.max_compute_workgroups_per_dimension as u64,
                ),
                (
                    "min_storage_buffer_offset_alignment",
                    l.min_storage_buffer_offset_alignment as u64,
                ),
                ("subgroup_min_size", info.subgroup_min_size as u64),
                ("subgroup_max_size", info.subgroup_max_size as u64),
            ],
        }
    }
}

/// Every adapter wgpu can see on this machine on the primary backends (Vulkan, Metal, DX12,
/// WebGPU), or on the backends `WGPU_BACKEND` names (e.g. `WGPU_BACKEND=gl` for GL).
pub async fn enumerate() -> Vec<wgpu::Adapter> {
    enumerate_on(backends(None)).await
}

async fn enumerate_on(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    instance_on(backends).enumerate_adapters(backends).await
}

/// The backends to probe: `WGPU_BACKEND` when set; else every backend when the user asked
/// for GL; else the primary ones only. Probing GL opens a display connection (EGL/X11/
/// Wayland), which prints errors such as "XDG_RUNTIME_DIR is invalid or not set" on machines
/// without one, and GL adapters lack compute features the runtime relies on.
fn backends(wanted: Option<&str>) -> wgpu::Backends {
    let gl = wanted.is_some_and(|w| w.eq_ignore_ascii_case("gl"));
    wgpu::Backends::from_env().unwrap_or(if gl {
        wgpu::Backends::all()
    } else {
        wgpu::Backends::PRIMARY
    })
}

/// The wgpu instance the runtime uses: the backends of [`enumerate`], flags from the
/// environment.
pub fn instance() -> wgpu::Instance {
    instance_on(backends(None))
}

fn instance_on(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// How good an adapter is for compute by default: discrete beats integrated beats software.
fn rank(adapter: &wgpu::Adapter) -> u8 {
    let info = adapter.get_info();
    let by_type = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    // GL lacks compute features we rely on in places; prefer anything else of the same type.
    by_type * 2 + u8::from(info.backend != wgpu::Backend::Gl)
}

/// Whether `adapter` matches a user's preference: a case-insensitive substring of its name,
/// or a backend name (vulkan, metal, dx12, gl, webgpu), or a device type (discrete, integrated, cpu).
pub fn matches(adapter: &wgpu::Adapter, wanted: &str) -> bool {
    let info = adapter.get_info();
    let wanted = wanted.to_lowercase();
    let backend = format!("{:?}", info.backend).to_lowercase();
    let kind = format!("{:?}", info.device_type).to_lowercase();
    info.name.to_lowercase().contains(&wanted)
        || backend == wanted
        || (wanted == "webgpu" && info.backend == wgpu::Backend::BrowserWebGpu)
        || kind.starts_with(&wanted)
}

/// Choose the adapter: the best by default, or the best that matches `wanted`; the error
/// lists the adapters there are.
pub async fn choose(wanted: Option<&str>) -> Result<wgpu::Adapter> {
    let (mut adapters, others): (Vec<_>, Vec<_>) = enumerate_on(backends(wanted))
        .await
        .into_iter()
        .partition(|a| wanted.is_none_or(|w| matches(a, w)));
    adapters.sort_by_key(|a| std::cmp::Reverse(rank(a)));
    adapters.into_iter().next().ok_or_else(|| Error::NoAdapter {
        wanted: wanted.map(str::to_string),
        present: others
            .iter()
            .map(|a| {
                let info = a.get_info();
                format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
            })
            .collect(),
    })
}
