//! The device layer: one wgpu device per [`Gpu`], with a pipeline cache, a buffer pool and a
//! command recorder that batches a whole forward or training step into few submissions.
//!
//! Design choices:
//! - Every kernel launch is recorded into one open compute pass; nothing is submitted until a
//!   value is read back, an upload does not fit the staging arena, or [`Gpu::flush`] is called.
//! - Uniform parameters and small uploads go through one staging arena per submission, written
//!   with a single `queue.write_buffer` just before the submit; a slot is never reused within a
//!   submission, so recorded commands always see the bytes meant for them.
//! - Freed tensors return their buffers to a pool; the next step takes them again.
//! - Errors wgpu reports asynchronously (validation, out of memory, device loss) are kept and
//!   returned as typed errors at the next synchronisation point.

mod adapter;
mod buffer;
mod oneshot;
mod pool;
mod recorder;

pub use adapter::{choose, enumerate, instance, matches, AdapterReport};
pub use buffer::GpuBuffer;
pub(crate) use recorder::Binding;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tensor::DType;
use pool::BufferPool;
use recorder::Recorder;

/// What the adapter can do, as the runtime uses it.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// `SHADER_F16` is enabled: f16 storage and arithmetic in kernels.
    pub shader_f16: bool,
    /// Subgroup operations are enabled.
    pub subgroups: bool,
    /// Largest storage buffer binding in bytes.
    pub max_binding: u64,
    /// Largest buffer in bytes.
    pub max_buffer: u64,
    /// Required alignment of a storage binding's offset in bytes.
    pub offset_alignment: u64,
    /// Most workgroups per dispatch dimension.
    pub max_workgroups: u32,
    /// The adapter emulates a GPU on the CPU (lavapipe, SwiftShader, WARP): kernels that
    /// rely on workgroup memory and barriers have barrier-free variants for it.
    pub software: bool,
}

/// Which compiled kernel: shader file, entry point and storage dtype variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    /// Shader file name under `shaders/` (without `.wgsl`).
    pub shader: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Storage type bound to the alias `T` in the shader (typed shaders only).
    pub dtype: Option<DType>,
}

impl Kernel {
    /// An untyped (f32) kernel.
    pub(crate) const fn f32(shader: &'static str, entry: &'static str) -> Self {
        Kernel {
            shader,
            entry,
            dtype: None,
        }
    }
}

/// A GPU device ready for compute.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    report: AdapterReport,
    caps: Capabilities,
    pipelines: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
    pool: BufferPool,
    recorder: Mutex<Recorder>,
    fault: Arc<Mutex<Option<Error>>>,
    live_bytes: AtomicU64,
    peak_bytes: AtomicU64,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} | {})", self.report.name, self.report.backend)
    }
}

impl Gpu {
    /// Open the best adapter, or the one matching `wanted` (name substring, backend or type).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(wanted: Option<&str>) -> Result<Arc<Gpu>> {
        pollster::block_on(Self::new_async(wanted))
    }

    /// Open an adapter asynchronously (the only way on the web).
    pub async fn new_async(wanted: Option<&str>) -> Result<Arc<Gpu>> {
        let adapter = adapter::choose(wanted).await?;
        Self::open(&adapter).await
    }

    /// Open a device on a given adapter, enabling f16 and subgroups where present and the
    /// adapter's full limits.
    pub async fn open(adapter: &wgpu::Adapter) -> Result<Arc<Gpu>> {
        let report = AdapterReport::of(adapter);
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        let features = adapter.features() & wanted;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("pupil"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: report.name.clone(),
                reason: e.to_string(),
            })?;
        let fault: Arc<Mutex<Option<Error>>> = Arc::default();
        let on_error = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match e {
                wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory { bytes: 0 },
                other => Error::Gpu {
                    context: "an earlier GPU command".into(),
                    message: other.to_string(),
                },
            };
            if let Ok(mut f) = on_error.lock() {
                f.get_or_insert(err);
            }
        }));
        let on_lost = fault.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut f) = on_lost.lock() {
                *f = Some(Error::DeviceLost {
                    reason: format!("{reason:?}: {message}"),
                });
            }
        });
        let caps = Capabilities {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            max_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            offset_alignment: limits.min_storage_buffer_offset_alignment as u64,
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            software: adapter.get_info().device_type == wgpu::DeviceType::Cpu,
        };
        let recorder = Recorder::new(&device);
        Ok(Arc::new(Gpu {
            device,
            queue,
            report,
            caps,
            pipelines: Mutex::default(),
            pool: BufferPool::default(),
            recorder: Mutex::new(recorder),
            fault,
            live_bytes: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
        }))
    }

    /// The adapter this device runs on.
    pub fn adapter(&self) -> &AdapterReport {
        &self.report
    }

    /// What the adapter can do.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Bytes held by live tensors now.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }

    /// Largest number of bytes held by live tensors since the last [`Gpu::reset_peak`].
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes.load(Ordering::Relaxed)
    }

    /// Start measuring peak memory afresh.
    pub fn reset_peak(&self) {
        self.peak_bytes.store(self.live_bytes(), Ordering::Relaxed);
    }

    /// Bytes parked in the buffer pool, ready for reuse.
    pub fn pooled_bytes(&self) -> u64 {
        self.pool.parked_bytes()
    }

    /// Free the pool's parked buffers.
    pub fn trim(&self) {
        self.pool.clear();
    }

    /// Fail with the first asynchronous GPU error seen since the last check, if any.
    pub(crate) fn check_fault(&self) -> Result<()> {
        let mut fault = self
            .fault
            .lock()
            .map_err(|_| Error::Invalid("GPU fault lock poisoned".into()))?;
        match fault.take() {
            Some(e @ Error::DeviceLost { .. }) => {
                *fault = Some(Error::DeviceLost {
                    reason: "lost earlier".into(),
                });
                Err(e)
            }
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The compiled pipeline for `kernel`, compiling it on first use.
    fn pipeline(&self, kernel: Kernel) -> Result<wgpu::ComputePipeline> {
        let mut cache = self
            .pipelines
            .lock()
            .map_err(|_| Error::Invalid("pipeline cache poisoned".into()))?;
        if let Some(p) = cache.get(&kernel) {
            return Ok(p.clone());
        }
        let body = crate::shaders::source(kernel.shader).ok_or_else(|| Error::NotSupported {
            op: "kernel",
            detail: format!("no shader named {}", kernel.shader),
        })?;
        let source = match kernel.dtype {
            None => body.to_string(),
            Some(DType::F16) if self.caps.shader_f16 => {
                format!("enable f16;\nalias T = f16;\n{body}")
            }
            Some(DType::F16) => {
                return Err(Error::NotSupported {
                    op: kernel.entry,
                    detail: format!(
                        "f16 storage needs SHADER_F16, which {} lacks; use f32",
                        self.report.name
                    ),
                })
            }
            Some(DType::F32) => format!("alias T = f32;\n{body}"),
        };
        if crate::debug_level() >= 2 {
            eprintln!(
                "[pupil] compiling {}::{} ({:?})",
                kernel.shader, kernel.entry, kernel.dtype
            );
        }
        if crate::debug_level() >= 3 {
            eprintln!("{source}");
        }
        let (pipeline, error) = self.scoped(wgpu::ErrorFilter::Validation, || {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.shader),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel.entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(kernel.entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        });
        if let Some(e) = error {
            return Err(Error::Gpu {
                context: format!("compiling {}::{}", kernel.shader, kernel.entry),
                message: e.to_string(),
            });
        }
        cache.insert(kernel, pipeline.clone());
        Ok(pipeline)
    }

    /// Run `f` inside an error scope for `filter` and return what it caught (natively).
    #[cfg(not(target_arch = "wasm32"))]
    fn scoped<T>(
        &self,
        filter: wgpu::ErrorFilter,
        f: impl FnOnce() -> T,
    ) -> (T, Option<wgpu::Error>) {
        let scope = self.device.push_error_scope(filter);
        let out = f();
        (out, pollster::block_on(scope.pop()))
    }

    /// On the web an error scope cannot be awaited synchronously, and one popped without
    /// awaiting would swallow its error: `f` runs unscoped, so errors reach the
    /// uncaptured-error handler and surface as typed errors at the next synchronisation.
    #[cfg(target_arch = "wasm32")]
    fn scoped<T>(
        &self,
        _filter: wgpu::ErrorFilter,
        f: impl FnOnce() -> T,
    ) -> (T, Option<wgpu::Error>) {
        (f(), None)
    }

    /// Submit everything recorded so far.
    pub fn flush(&self) -> Result<()> {
        self.recorder()?.flush(&self.queue);
        self.check_fault()
    }

    /// Wait until the GPU has finished all submitted work (natively; on the web this only
    /// submits: await [`Gpu::synchronize_async`] there).
    pub fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.poll("waiting for the GPU")?;
        self.check_fault()
    }

    /// Submit the recorded work and await its completion, without blocking (the way to wait
    /// on the web, where [`Gpu::synchronize`] cannot).
    pub async fn synchronize_async(&self) -> Result<()> {
        self.flush()?;
        let (tx, rx) = oneshot::channel();
        self.queue.on_submitted_work_done(move || tx.send(()));
        self.poll("waiting for the GPU")?;
        let done = rx.await;
        self.check_fault()?;
        done.ok_or_else(|| Error::DeviceLost {
            reason: "submitted work never completed".into(),
        })
    }

    fn recorder(&self) -> Result<std::sync::MutexGuard<'_, Recorder>> {
        self.recorder
            .lock()
            .map_err(|_| Error::Invalid("GPU recorder lock poisoned".into()))
    }

    /// Record one kernel launch. `params` fills the shader's uniform at binding 0; each buffer
    /// binds at its own slot.
    pub(crate) fn dispatch(
        &self,
        kernel: Kernel,
        params: &[u8],
        buffers: &[Binding<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        let pipeline = self.pipeline(kernel)?;
        if groups.iter().any(|&g| g > self.caps.max_workgroups) {
            return Err(Error::NotSupported {
                op: kernel.entry,
                detail: format!(
                    "dispatch {groups:?} exceeds {} workgroups per dimension",
                    self.caps.max_workgroups
                ),
            });
        }
        if groups.contains(&0) {
            return Ok(());
        }
        self.recorder()?.dispatch(
            &self.device,
            &self.queue,
            &pipeline,
            params,
            buffers,
            groups,
        );
        Ok(())
    }

    /// Allocate an uninitialised buffer of at least `bytes` bytes (from the pool when possible).
    pub fn alloc(self: &Arc<Self>, bytes: u64) -> Result<GpuBuffer> {
        if bytes > self.caps.max_binding {
            return Err(Error::BindingTooLarge {
                bytes,
                maximum: self.caps.max_binding,
            });
        }
        let class = pool::size_class(bytes);
        let raw = match self.pool.take(class) {
            Some(b) => b,
            None => self.create_buffer(class)?,
        };
        let live = self.live_bytes.fetch_add(class, Ordering::Relaxed) + class;
        self.peak_bytes.fetch_max(live, Ordering::Relaxed);
        Ok(GpuBuffer::new(raw, class, bytes, self.clone()))
    }

    fn create_buffer(&self, size: u64) -> Result<wgpu::Buffer> {
        let (buffer, error) = self.scoped(wgpu::ErrorFilter::OutOfMemory, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        match error {
            Some(_) => Err(Error::OutOfMemory { bytes: size }),
            None => Ok(buffer),
        }
    }

    /// Called by a dropped [`GpuBuffer`]: park its memory for reuse.
    pub(crate) fn release(&self, class: u64, raw: wgpu::Buffer) {
        self.live_bytes.fetch_sub(class, Ordering::Relaxed);
        self.pool.give(class, raw);
    }

    /// Copy `data` into `dst` at `offset` bytes, ordered after everything recorded so far.
    pub(crate) fn upload(&self, dst: &wgpu::Buffer, offset: u64, data: &[u8]) -> Result<()> {
        self.recorder()?
            .upload(&self.device, &self.queue, dst, offset, data);
        Ok(())
    }

    /// Fill `bytes` bytes of `dst` from `offset` with zeros, in recording order.
    pub(crate) fn zero(&self, dst: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<()> {
        self.recorder()?.zero(&self.device, dst, offset, bytes);
        Ok(())
    }

    /// Read `bytes` bytes of `src` from `offset` back to the host (blocks until the GPU is
    /// done; [`Gpu::read_async`] is the same without blocking).
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn read(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        pollster::block_on(self.read_async(src, offset, bytes))
    }

    /// Read `bytes` bytes of `src` from `offset` back to the host, awaiting the mapping of a
    /// staging copy. Natively `device.poll` blocks until the copy is done, so the mapping is
    /// ready when awaited; on the web the poll does nothing and the browser resolves the
    /// mapping from its event loop while the caller's task waits.
    pub(crate) async fn read_async(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        let padded = bytes.div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut rec = self.recorder()?;
            rec.copy(&self.device, src, offset, &staging, 0, padded);
            rec.flush(&self.queue);
        }
        let (tx, rx) = oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| tx.send(r));
        self.poll("reading back")?;
        let mapped = rx.await;
        self.check_fault()?;
        mapped
            .ok_or_else(|| Error::DeviceLost {
                reason: "readback never completed".into(),
            })?
            .map_err(|e| Error::Gpu {
                context: "mapping a readback buffer".into(),
                message: e.to_string(),
            })?;
        let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu {
            context: "mapping a readback buffer".into(),
            message: e.to_string(),
        })?;
        let out = view[..bytes as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Natively, block until the GPU has finished all submitted work and has run the
    /// callbacks waiting on it; on the web a no-op (the browser runs them by itself).
    fn poll(&self, context: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(drop)
            .map_err(|e| Error::Gpu {
                context: context.into(),
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::ops::testing::gpu;
    use crate::tensor::Tensor;

    /// A tensor larger than one binding may be is refused with the sizes, not truncated.
    #[test]
    fn oversized_tensor_is_refused_with_a_clear_error() {
        let backend = gpu();
        let max = backend
            .gpu()
            .map(|g| g.capabilities().max_binding)
            .unwrap_or(0);
        let elements = (max / 4 + 1) as usize;
        match Tensor::uninit(&backend, &[elements], DType::F32) {
            Err(Error::BindingTooLarge { bytes, maximum }) => {
                assert_eq!(maximum, max);
                assert!(bytes > max);
                let msg = Error::BindingTooLarge { bytes, maximum }.to_string();
                assert!(msg.contains("split the work"), "{msg}");
            }
            other => panic!("expected BindingTooLarge, got {other:?}"),
        }
    }

    /// Asking for an adapter that does not exist names it and says how to recover.
    #[test]
    fn unknown_adapter_is_a_typed_error() {
        match Backend::open(Some("no-such-gpu-anywhere")) {
            Err(e @ Error::NoAdapter { .. }) => {
                assert!(e.to_string().contains("PUPIL_ADAPTER=cpu"), "{e}")
            }
            other => panic!("expected NoAdapter, got {other:?}"),
        }
        assert!(matches!(Backend::open(Some("cpu")), Ok(Backend::Cpu)));
    }

    /// Freed buffers are reused: a second identical step allocates nothing new. (Its own
    /// device, so that tests running alongside cannot change the counts.)
    #[test]
    fn pool_reuses_buffers_across_steps() {
        let _ = gpu();
        let g = Gpu::new(std::env::var("PUPIL_ADAPTER").ok().as_deref()).unwrap();
        let backend = Backend::Gpu(g.clone());
        let step = || {
            let a = Tensor::from_slice(&backend, &[300, 7], &vec![1.0; 2100]).unwrap();
            let b = crate::ops::elementwise::scale(&a, 2.0).unwrap();
            b.to_vec().unwrap()
        };
        step();
        let pooled = g.pooled_bytes() + g.live_bytes();
        step();
        assert_eq!(
            g.pooled_bytes() + g.live_bytes(),
            pooled,
            "the second step must not grow device memory"
        );
    }
}
