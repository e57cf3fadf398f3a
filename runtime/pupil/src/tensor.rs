//! Tensors: a shape, a storage dtype and a view (offset, length) into CPU or GPU memory.
//!
//! Shapes are row-major; `offset` and lengths count elements. Integer data (labels, token
//! ids) is stored as f32, exact up to 2^24, which covers every vocabulary we run.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backend::Backend;
use crate::device::{Binding, GpuBuffer};
use crate::error::{Error, Result};

/// Storage type of tensor elements. Compute is always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit float storage (GPU with `SHADER_F16` only; the CPU keeps f32).
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
}

/// Where a tensor's elements live.
#[derive(Clone)]
pub enum Storage {
    /// Host memory (always f32).
    Cpu(Arc<RwLock<Vec<f32>>>),
    /// Device memory.
    Gpu(Arc<GpuBuffer>),
}

/// An n-dimensional array view on one backend.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Storage,
    offset: usize,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.storage {
            Storage::Cpu(_) => "cpu",
            Storage::Gpu(_) => "gpu",
        };
        write!(f, "Tensor({:?}, {:?}, {place})", self.shape, self.dtype)
    }
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(backend: &Backend, shape: &[usize]) -> Result<Tensor> {
        let t = Self::uninit(backend, shape, DType::F32)?;
        if let Storage::Gpu(b) = &t.storage {
            b.gpu().zero(b.raw(), 0, t.bytes())?;
        }
        Ok(t)
    }

    /// A tensor whose contents are unspecified (CPU: zeros); every element must be written.
    pub fn uninit(backend: &Backend, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = numel(shape);
        let storage = match backend {
            Backend::Cpu => Storage::Cpu(Arc::new(RwLock::new(vec![0.0; n]))),
            Backend::Gpu(gpu) => {
                Storage::Gpu(Arc::new(gpu.alloc((n as u64 * dtype.size()).max(4))?))
            }
        };
        Ok(Tensor {
            shape: shape.to_vec(),
            dtype,
            storage,
            offset: 0,
        })
    }

    /// A tensor holding `data` (f32) with `shape`.
    pub fn from_slice(backend: &Backend, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        if numel(shape) != data.len() {
            return Err(Error::shape(
                "from_slice",
                format!(
                    "shape {shape:?} holds {} elements, data has {}",
                    numel(shape),
                    data.len()
                ),
            ));
        }
        match backend {
            Backend::Cpu => Ok(Tensor {
                shape: shape.to_vec(),
                dtype: DType::F32,
                storage: Storage::Cpu(Arc::new(RwLock::new(data.to_vec()))),
                offset: 0,
            }),
            Backend::Gpu(_) => {
                let t = Self::uninit(backend, shape, DType::F32)?;
                t.write(data)?;
                Ok(t)
            }
        }
    }

    /// A GPU tensor stored as f16 (converted from `data`) where the adapter has `SHADER_F16`;
    /// f32 storage elsewhere (adapters without f16, such as SwiftShader, and the CPU).
    pub fn from_slice_f16(backend: &Backend, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        match backend {
            Backend::Gpu(gpu) if !gpu.capabilities().shader_f16 => {
                Self::from_slice(backend, shape, data)
            }
            Backend::Cpu => Self::from_slice(backend, shape, data),
            Backend::Gpu(gpu) => {
                if numel(shape) != data.len() {
                    return Err(Error::shape(
                        "from_slice_f16",
                        format!("shape {shape:?} vs {} values", data.len()),
                    ));
                }
                let t = Self::uninit(backend, shape, DType::F16)?;
                let halfs: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
                let mut bytes = bytemuck::cast_slice::<half::f16, u8>(&halfs).to_vec();
                bytes.resize(bytes.len().div_ceil(4) * 4, 0);
                gpu.upload(t.gpu_buffer()?.raw(), 0, &bytes)?;
                Ok(t)
            }
        }
    }

    /// A scalar tensor.
    pub fn scalar(backend: &Backend, value: f32) -> Result<Tensor> {
        Self::from_slice(backend, &[1], &[value])
    }

    /// Overwrite the tensor's elements with `data` (f32 tensors only).
    pub fn write(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() || self.dtype != DType::F32 {
            return Err(Error::shape(
                "write",
                format!(
                    "{} values into {:?} {:?}",
                    data.len(),
                    self.shape,
                    self.dtype
                ),
            ));
        }
        match &self.storage {
            Storage::Cpu(_) => {
                self.cpu_write()?.copy_from_slice(data);
                Ok(())
            }
            Storage::Gpu(b) => {
                b.gpu()
                    .upload(b.raw(), self.byte_offset(), bytemuck::cast_slice(data))
            }
        }
    }

    /// Copy the elements to the host as f32 (blocks until the GPU is done). On the web, where
    /// nothing may block, a GPU tensor is read with [`Tensor::to_vec_async`].
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(_) => Ok(self.cpu_read()?.to_vec()),
            #[cfg(not(target_arch = "wasm32"))]
            Storage::Gpu(_) => pollster::block_on(self.to_vec_async()),
            #[cfg(target_arch = "wasm32")]
            Storage::Gpu(_) => Err(Error::NotSupported {
                op: "to_vec",
                detail: "a GPU tensor cannot be read synchronously on the web; await \
                         Tensor::to_vec_async"
                    .into(),
            }),
        }
    }

    /// Copy the elements to the host as f32, awaiting the GPU without blocking (what reads a
    /// GPU tensor on the web; natively the same as [`Tensor::to_vec`]).
    pub async fn to_vec_async(&self) -> Result<Vec<f32>> {
        let b = match &self.storage {
            Storage::Cpu(_) => return Ok(self.cpu_read()?.to_vec()),
            Storage::Gpu(b) => b,
        };
        let bytes = b
            .gpu()
            .read_async(b.raw(), self.byte_offset(), self.bytes())
            .await?;
        Ok(match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(&bytes),
            DType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(&bytes)
                .iter()
                .map(|h| h.to_f32())
                .collect(),
        })
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        self.check_scalar()?;
        Ok(self.to_vec()?[0])
    }

    /// [`Tensor::item`] without blocking (for the web).
    pub async fn item_async(&self) -> Result<f32> {
        self.check_scalar()?;
        Ok(self.to_vec_async().await?[0])
    }

    fn check_scalar(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("tensor {:?} has {} elements", self.shape, self.numel()),
            ));
        }
        Ok(())
    }

    /// The same tensor on another backend (a copy).
    pub fn to_backend(&self, backend: &Backend) -> Result<Tensor> {
        Self::from_slice(backend, &self.shape, &self.to_vec()?)
    }

    /// The same elements viewed with another shape of equal size.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("{:?} -> {shape:?}", self.shape),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// A view of `len` elements from `start` (in elements) with `shape`, sharing storage.
    /// On the GPU, `start * dtype size` must be a multiple of the storage offset alignment.
    pub fn view(&self, start: usize, shape: &[usize]) -> Result<Tensor> {
        let n = numel(shape);
        if start + n > self.numel() {
            return Err(Error::shape(
                "view",
                format!("{start}+{n} past {} elements", self.numel()),
            ));
        }
        if let Storage::Gpu(b) = &self.storage {
            let align = b.gpu().capabilities().offset_alignment;
            if !((self.offset + start) as u64 * self.dtype.size()).is_multiple_of(align) {
                return Err(Error::NotSupported {
                    op: "view",
                    detail: format!("GPU view offset not aligned to {align} bytes"),
                });
            }
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            offset: self.offset + start,
            ..self.clone()
        })
    }

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Storage dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Bytes of this view.
    pub fn bytes(&self) -> u64 {
        self.numel() as u64 * self.dtype.size()
    }

    fn byte_offset(&self) -> u64 {
        self.offset as u64 * self.dtype.size()
    }

    /// The backend this tensor lives on.
    pub fn backend(&self) -> Backend {
        match &self.storage {
            Storage::Cpu(_) => Backend::Cpu,
            Storage::Gpu(b) => Backend::Gpu(b.gpu().clone()),
        }
    }

    /// Whether the tensor lives on the GPU.
    pub fn is_gpu(&self) -> bool {
        matches!(self.storage, Storage::Gpu(_))
    }

    pub(crate) fn gpu_buffer(&self) -> Result<&Arc<GpuBuffer>> {
        match &self.storage {
            Storage::Gpu(b) => Ok(b),
            Storage::Cpu(_) => Err(Error::BackendMismatch { op: "gpu binding" }),
        }
    }

    /// The GPU binding of this view at `@binding(slot)`.
    pub(crate) fn bind(&self, slot: u32) -> Result<Binding<'_>> {
        let b = self.gpu_buffer()?;
        Ok(Binding {
            slot,
            buffer: b.raw(),
            offset: self.byte_offset(),
            size: self.bytes().max(4),
        })
    }

    /// Read access to the host elements of this view.
    pub(crate) fn cpu_read(&self) -> Result<CpuRead<'_>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(CpuRead {
                guard: v
                    .read()
                    .map_err(|_| Error::Invalid("tensor lock poisoned".into()))?,
                start: self.offset,
                len: self.numel(),
            }),
            Storage::Gpu(_) => Err(Error::BackendMismatch { op: "cpu read" }),
        }
    }

    /// Write access to the host elements of this view.
    pub(crate) fn cpu_write(&self) -> Result<CpuWrite<'_>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(CpuWrite {
                guard: v
                    .write()
                    .map_err(|_| Error::Invalid("tensor lock poisoned".into()))?,
                start: self.offset,
                len: self.numel(),
            }),
            Storage::Gpu(_) => Err(Error::BackendMismatch { op: "cpu write" }),
        }
    }
}

/// A read-locked host slice.
pub(crate) struct CpuRead<'a> {
    guard: RwLockReadGuard<'a, Vec<f32>>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for CpuRead<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.guard[self.start..self.start + self.len]
    }
}

/// A write-locked host slice.
pub(crate) struct CpuWrite<'a> {
    guard: RwLockWriteGuard<'a, Vec<f32>>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for CpuWrite<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.guard[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for CpuWrite<'_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.guard[self.start..self.start + self.len]
    }
}
