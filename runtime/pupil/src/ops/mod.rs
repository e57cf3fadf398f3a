//! Ops: each file holds one family's forward, backward and CPU reference side by side, with
//! the GPU-versus-CPU and finite-difference tests next to them.
//!
//! Conventions: functions take tensors on one backend and return a new tensor on the same
//! backend; the GPU path records kernels (no wait), the CPU path computes at once. Backward
//! functions are named `*_backward` and take the forward's inputs and the output gradient `dy`.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod distill;
pub mod elementwise;
pub mod embedding;
pub mod layout;
pub mod loss;
pub mod matmul;
pub mod norm;
mod parallel;
pub mod pool;
pub mod qmatmul;
pub mod reduce;
pub mod rope;
pub mod softmax;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::sync::Arc;

/// Workgroup grid for `n` threads in groups of `per_group`: x up to 65535, the rest in y.
/// Kernels rebuild the flat index as `gid.x + gid.y * num_workgroups.x * per_group`.
pub(crate) fn grid(n: usize, per_group: usize) -> [u32; 3] {
    groups_for(n.div_ceil(per_group))
}

/// Grid for `groups` workgroups (one per row, say), split over x and y.
pub(crate) fn groups_for(groups: usize) -> [u32; 3] {
    if groups == 0 {
        return [0, 1, 1];
    }
    let x = groups.min(65535);
    [x as u32, groups.div_ceil(x) as u32, 1]
}

/// The backend shared by every operand, or a clear error.
pub(crate) fn common_backend(op: &'static str, tensors: &[&Tensor]) -> Result<Backend> {
    let first = tensors.first().map(|t| t.backend()).unwrap_or(Backend::Cpu);
    for t in tensors {
        match (&first, t.backend()) {
            (Backend::Cpu, Backend::Cpu) => {}
            (Backend::Gpu(a), Backend::Gpu(b)) if Arc::ptr_eq(a, &b) => {}
            _ => return Err(Error::BackendMismatch { op }),
        }
    }
    Ok(first)
}

/// Refuse non-f32 operands for ops that compute and store in f32 only.
pub(crate) fn require_f32(op: &'static str, tensors: &[&Tensor]) -> Result<()> {
    match tensors.iter().find(|t| t.dtype() != DType::F32) {
        Some(t) => Err(Error::NotSupported {
            op,
            detail: format!("{:?} operand; convert to f32", t.dtype()),
        }),
        None => Ok(()),
    }
}

/// Element counts are passed to kernels as u32.
pub(crate) fn u32_len(op: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::NotSupported {
        op,
        detail: format!("{n} elements exceed u32 indexing; split the tensor"),
    })
}

#[cfg(test)]
pub(crate) mod testing;
