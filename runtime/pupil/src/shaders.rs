//! Every WGSL kernel of the runtime, compiled into the binary from the top-level `shaders/`.
//!
//! Every entry point fits WebGPU's default limits (256 invocations per workgroup, 16 KiB of
//! workgroup memory, 8 storage buffers), which every adapter and every browser guarantees;
//! a test checks each kernel against them.

/// Each shader file's name (without `.wgsl`) and source.
const SHADERS: [(&str, &str); 17] = [
    ("matmul", include_str!("../../../shaders/matmul.wgsl")),
    (
        "elementwise",
        include_str!("../../../shaders/elementwise.wgsl"),
    ),
    ("sum_to", include_str!("../../../shaders/sum_to.wgsl")),
    (
        "activation",
        include_str!("../../../shaders/activation.wgsl"),
    ),
    ("reduce", include_str!("../../../shaders/reduce.wgsl")),
    ("loss", include_str!("../../../shaders/loss.wgsl")),
    ("optim", include_str!("../../../shaders/optim.wgsl")),
    ("layout", include_str!("../../../shaders/layout.wgsl")),
    ("softmax", include_str!("../../../shaders/softmax.wgsl")),
    ("norm", include_str!("../../../shaders/norm.wgsl")),
    ("conv", include_str!("../../../shaders/conv.wgsl")),
    ("pool", include_str!("../../../shaders/pool.wgsl")),
    ("embedding", include_str!("../../../shaders/embedding.wgsl")),
    ("attention", include_str!("../../../shaders/attention.wgsl")),
    ("rope", include_str!("../../../shaders/rope.wgsl")),
    ("distill", include_str!("../../../shaders/distill.wgsl")),
    ("qmatmul", include_str!("../../../shaders/qmatmul.wgsl")),
];

/// Source of the named shader file (`shaders/<name>.wgsl`).
pub(crate) fn source(name: &str) -> Option<&'static str> {
    SHADERS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

// naga is a native dev-dependency only (the browser tests need none of it).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::SHADERS;
    use naga::valid::{Capabilities, ValidationFlags, Validator};

    /// Each entry point's workgroup size, workgroup memory and storage buffers (those it
    /// uses, as naga's analysis finds them) fit WebGPU's default limits: the browser's
    /// (Chromium's SwiftShader offers 256 invocations per workgroup) and every native
    /// adapter's.
    #[test]
    fn every_kernel_fits_webgpu_default_limits() {
        let limits = wgpu::Limits::default();
        let mut entries = 0;
        for (name, body) in SHADERS {
            // Typed shaders get their storage type `T` from the pipeline cache; f32 here.
            let source = format!("alias T = f32;\n{body}");
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{name}.wgsl: {}", e.emit_to_string(&source)));
            let info = Validator::new(ValidationFlags::all(), Capabilities::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}.wgsl: {e:?}"));
            for (i, ep) in module.entry_points.iter().enumerate() {
                let uses = info.get_entry_point(i);
                let [x, y, z] = ep.workgroup_size;
                let what = format!("{name}::{}", ep.name);
                assert!(
                    x * y * z <= limits.max_compute_invocations_per_workgroup
                        && x <= limits.max_compute_workgroup_size_x
                        && y <= limits.max_compute_workgroup_size_y
                        && z <= limits.max_compute_workgroup_size_z,
                    "{what}: workgroup {x} x {y} x {z} exceeds the WebGPU defaults"
                );
                let (mut shared, mut storage) = (0, 0);
                for (handle, var) in module.global_variables.iter() {
                    if uses[handle].is_empty() {
                        continue;
                    }
                    match var.space {
                        naga::AddressSpace::WorkGroup => {
                            shared += module.types[var.ty].inner.size(module.to_ctx())
                        }
                        naga::AddressSpace::Storage { .. } => storage += 1,
                        _ => {}
                    }
                }
                assert!(
                    shared <= limits.max_compute_workgroup_storage_size,
                    "{what}: {shared} bytes of workgroup memory"
                );
                assert!(
                    storage <= limits.max_storage_buffers_per_shader_stage,
                    "{what}: {storage} storage buffers"
                );
                entries += 1;
            }
        }
        assert!(entries > 50, "only {entries} entry points found");
    }
}
