//! A GPU buffer owned by a tensor; dropping it parks the memory in the pool.

use std::sync::Arc;

use super::Gpu;

/// Device memory owned by one tensor (or a parameter store).
pub struct GpuBuffer {
    raw: wgpu::Buffer,
    class: u64,
    bytes: u64,
    gpu: Arc<Gpu>,
}

impl GpuBuffer {
    pub(super) fn new(raw: wgpu::Buffer, class: u64, bytes: u64, gpu: Arc<Gpu>) -> Self {
        GpuBuffer {
            raw,
            class,
            bytes,
            gpu,
        }
    }

    /// The wgpu buffer.
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.raw
    }

    /// Requested size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The device this buffer lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        // wgpu buffers are reference-counted handles: the pool keeps this one alive.
        self.gpu.release(self.class, self.raw.clone());
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer({} bytes)", self.bytes)
    }
}
