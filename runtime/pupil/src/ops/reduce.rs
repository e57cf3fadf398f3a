//! Sum and mean reductions: over the last axis, or over everything (two passes on the GPU:
//! rows of 4096 to partial sums, then one row over the partials).
//!
//! Backward: every input element receives the output gradient of its row (times 1/n for a
//! mean): `dx[r, j] = alpha * dy[r]`.

use bytemuck::{Pod, Zeroable};

use super::{grid, groups_for, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Elements per partial sum in the first pass of a full reduction.
const CHUNK: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    square: u32,
    alpha: f32,
    _pad: [u32; 3],
}

/// `alpha * sum_j f(x[r, j])` per row of a `rows x cols` view; f squares when `square`.
fn rows(
    x: &Tensor,
    rows: usize,
    cols: usize,
    square: bool,
    alpha: f32,
    out_shape: &[usize],
) -> Result<Tensor> {
    let backend = x.backend();
    let out = Tensor::uninit(&backend, out_shape, DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::sum_rows(&x.cpu_read()?, &mut out.cpu_write()?, cols, square, alpha),
        Backend::Gpu(gpu) => {
            let params = Params {
                rows: u32_len("sum", rows)?,
                cols: u32_len("sum", cols)?,
                n: u32_len("sum", x.numel())?,
                square: square as u32,
                alpha,
                _pad: [0; 3],
            };
            gpu.dispatch(
                Kernel::f32("reduce", "sum_rows"),
                bytemuck::bytes_of(&params),
                &[x.bind(1)?, out.bind(2)?],
                groups_for(rows),
            )?;
        }
    }
    Ok(out)
}

/// Sum over the last axis: `[.., C] -> [..]` (a 1-D input gives shape `[1]`).
pub fn sum_last(x: &Tensor) -> Result<Tensor> {
    require_f32("sum", &[x])?;
    let shape = x.shape();
    let cols = *shape
        .last()
        .ok_or_else(|| Error::shape("sum", "rank-0 tensor"))?;
    let mut out: Vec<usize> = shape[..shape.len() - 1].to_vec();
    if out.is_empty() {
        out.push(1);
    }
    rows(x, x.numel() / cols.max(1), cols, false, 1.0, &out)
}

/// `alpha * sum f(x)` over every element, as a `[1]` tensor.
fn total(x: &Tensor, square: bool, alpha: f32) -> Result<Tensor> {
    require_f32("sum", &[x])?;
    let n = x.numel();
    if !x.is_gpu() || n <= CHUNK {
        return rows(x, 1, n, square, alpha, &[1]);
    }
    let parts = n.div_ceil(CHUNK);
    let partial = rows(x, parts, CHUNK, square, 1.0, &[parts])?;
    rows(&partial, 1, parts, false, alpha, &[1])
}

/// Sum of every element, shape `[1]`.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    total(x, false, 1.0)
}

/// Mean of every element, shape `[1]`.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    total(x, false, 1.0 / x.numel().max(1) as f32)
}

/// Sum of squares of every element, shape `[1]` (for gradient norms).
pub fn sum_squares(x: &Tensor) -> Result<Tensor> {
    total(x, true, 1.0)
}

/// Backward of a row reduction: `dx[r, j] = alpha * dy[r]`, with `shape` the input's shape
/// and `cols` the reduced extent (the whole tensor for `sum_all`).
pub fn expand_rows(dy: &Tensor, shape: &[usize], cols: usize, alpha: f32) -> Result<Tensor> {
    let backend = dy.backend();
    let out = Tensor::uninit(&backend, shape, DType::F32)?;
    if out.numel() != dy.numel() * cols {
        return Err(Error::shape(
            "expand_rows",
            format!("dy {:?} x {cols} vs {shape:?}", dy.shape()),
        ));
    }
    match &backend {
        Backend::Cpu => {
            let g = dy.cpu_read()?;
            for (i, o) in out.cpu_write()?.iter_mut().enumerate() {
                *o = alpha * g[i / cols];
            }
        }
        Backend::Gpu(gpu) => {
            let params = Params {
                rows: 0,
                cols: u32_len("expand", cols)?,
                n: u32_len("expand", out.numel())?,
                square: 0,
                alpha,
                _pad: [0; 3],
            };
            gpu.dispatch(
                Kernel::f32("reduce", "expand_rows"),
                bytemuck::bytes_of(&params),
                &[dy.bind(1)?, out.bind(2)?],
                grid(out.numel(), 256),
            )?;
        }
    }
    Ok(out)
}

/// The CPU reference (f64 accumulation).
pub(crate) mod cpu {
    pub(crate) fn sum_rows(x: &[f32], out: &mut [f32], cols: usize, square: bool, alpha: f32) {
        for (r, o) in out.iter_mut().enumerate() {
            let row = &x[r * cols..((r + 1) * cols).min(x.len())];
            let s: f64 = row
                .iter()
                .map(|&v| {
                    if square {
                        v as f64 * v as f64
                    } else {
                        v as f64
                    }
                })
                .sum();
            *o = (alpha as f64 * s) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, pair};

    #[test]
    fn gpu_matches_cpu() {
        for (i, shape) in [
            &[1usize][..],
            &[7],
            &[33, 7],
            &[3, 257],
            &[5, 1000],
            &[100_003],
        ]
        .iter()
        .enumerate()
        {
            let (c, g) = pair(shape, i as u64);
            // f32 tree sums vs f64 sums of up to 1e5 terms: 1e-4 relative, 1e-4 absolute.
            assert_close(
                &format!("sum_last {shape:?}"),
                &sum_last(&g).unwrap(),
                &sum_last(&c).unwrap(),
                1e-4,
                1e-4,
            );
            assert_close(
                &format!("sum_all {shape:?}"),
                &sum_all(&g).unwrap(),
                &sum_all(&c).unwrap(),
                1e-4,
                1e-3,
            );
            assert_close(
                &format!("mean {shape:?}"),
                &mean_all(&g).unwrap(),
                &mean_all(&c).unwrap(),
                1e-4,
                1e-6,
            );
            assert_close(
                &format!("sumsq {shape:?}"),
                &sum_squares(&g).unwrap(),
                &sum_squares(&c).unwrap(),
                1e-4,
                1e-4,
            );
        }
    }

    /// The sum is linear, so its gradient is exactly the expanded output gradient.
    #[test]
    fn backward_expands_rows() {
        let (dc, dg) = pair(&[3], 1);
        let want = expand_rows(&dc, &[3, 5], 5, 0.5).unwrap();
        let v = want.to_vec().unwrap();
        let d = dc.to_vec().unwrap();
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, 0.5 * d[i / 5]);
        }
        assert_close(
            "expand",
            &expand_rows(&dg, &[3, 5], 5, 0.5).unwrap(),
            &want,
            0.0,
            0.0,
        );
    }
}
