//! Axis permutation (transpose) of up to 8 dimensions: `out = x.permute(axes)` where output
//! axis `d` is input axis `axes[d]`. Backward: the inverse permutation of `dy`.

use bytemuck::{Pod, Zeroable};

use super::{grid, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::graph::{Graph, Var};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    rank: u32,
    _pad: [u32; 2],
    dims: [[u32; 4]; 2],
    strides: [[u32; 4]; 2],
}

fn check(shape: &[usize], axes: &[usize]) -> Result<()> {
    let mut seen = [false; 8];
    let ok = axes.len() == shape.len()
        && axes.len() <= 8
        && axes
            .iter()
            .all(|&a| a < axes.len() && !std::mem::replace(&mut seen[a], true));
    if ok {
        Ok(())
    } else {
        Err(Error::shape(
            "permute",
            format!(
                "axes {axes:?} are not a permutation of the {} axes of {shape:?}",
                shape.len()
            ),
        ))
    }
}

/// `x` with its axes reordered: output axis `d` is input axis `axes[d]`.
pub fn permute(x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    require_f32("permute", &[x])?;
    let shape = x.shape();
    check(shape, axes)?;
    let mut in_strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let dims: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let strides: Vec<usize> = axes.iter().map(|&a| in_strides[a]).collect();
    let backend = x.backend();
    let out = Tensor::uninit(&backend, &dims, DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::permute(&x.cpu_read()?, &mut out.cpu_write()?, &dims, &strides),
        Backend::Gpu(gpu) => {
            let mut params = Params {
                n: u32_len("permute", x.numel())?,
                rank: dims.len() as u32,
                _pad: [0; 2],
                dims: [[0; 4]; 2],
                strides: [[0; 4]; 2],
            };
            for (i, (d, s)) in dims.iter().zip(&strides).enumerate() {
                params.dims[i / 4][i % 4] = *d as u32;
                params.strides[i / 4][i % 4] = *s as u32;
            }
            gpu.dispatch(
                Kernel::f32("layout", "permute"),
                bytemuck::bytes_of(&params),
                &[x.bind(1)?, out.bind(2)?],
                grid(x.numel(), 256),
            )?;
        }
    }
    Ok(out)
}

/// The permutation that undoes `axes`.
pub fn inverse(axes: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; axes.len()];
    for (d, &a) in axes.iter().enumerate() {
        inv[a] = d;
    }
    inv
}

impl Graph {
    /// Reorder axes: output axis `d` is input axis `axes[d]`.
    pub fn permute(&mut self, x: Var, axes: &[usize]) -> Result<Var> {
        let y = permute(self.value(x), axes)?;
        let inv = inverse(axes);
        Ok(self.record(y, &[x], move |_, _, dy| Ok(vec![Some(permute(dy, &inv)?)])))
    }
}

/// The CPU reference.
pub(crate) mod cpu {
    use crate::ops::elementwise::cpu::offset;

    /// Gathers `x` into `out` (shape `dims`, input strides `strides`), a row (the last
    /// axis) at a time: the source offset is decoded once per row.
    pub(crate) fn permute(x: &[f32], out: &mut [f32], dims: &[usize], strides: &[usize]) {
        let (Some((&n, outer)), Some((&step, outer_s))) = (dims.split_last(), strides.split_last())
        else {
            out.copy_from_slice(&x[..out.len()]);
            return;
        };
        if n == 0 {
            return;
        }
        for (r, row) in out.chunks_mut(n).enumerate() {
            let src = offset(r, outer, outer_s);
            if step == 1 {
                row.copy_from_slice(&x[src..src + n]);
            } else {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = x[src + j * step];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, pair};

    /// A gather copies values: GPU and CPU agree exactly, and the inverse restores the input.
    #[test]
    fn gpu_matches_cpu_and_inverse_restores() {
        for (i, (shape, axes)) in [
            (&[7usize, 33][..], &[1usize, 0][..]),
            (&[2, 5, 3, 4], &[0, 2, 1, 3]),
            (&[1, 257, 3], &[2, 0, 1]),
        ]
        .iter()
        .enumerate()
        {
            let (c, g) = pair(shape, i as u64);
            let pc = permute(&c, axes).unwrap();
            assert_close("permute", &permute(&g, axes).unwrap(), &pc, 0.0, 0.0);
            assert_close(
                "inverse",
                &permute(&pc, &inverse(axes)).unwrap(),
                &c,
                0.0,
                0.0,
            );
        }
        let v =
            Tensor::from_slice(&Backend::Cpu, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(
            permute(&v, &[1, 0]).unwrap().to_vec().unwrap(),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        assert!(matches!(permute(&v, &[0, 0]), Err(Error::Shape { .. })));
        assert!(matches!(permute(&v, &[0]), Err(Error::Shape { .. })));
        let _ = gpu();
    }

    /// The tape routes gradients back through the inverse permutation.
    #[test]
    fn graph_backward_is_the_inverse_permutation() {
        for backend in [Backend::Cpu, gpu()] {
            let mut g = Graph::new(&backend);
            let x = g.input_with_grad(
                Tensor::from_slice(&backend, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
            );
            let y = g.permute(x, &[1, 0]).unwrap();
            let w = g.input(
                Tensor::from_slice(&backend, &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
            );
            let p = g.mul(y, w).unwrap();
            let l = g.sum_all(p).unwrap();
            let grads = g.backward(l).unwrap();
            assert_eq!(
                grads.get(x).unwrap().to_vec().unwrap(),
                vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]
            );
        }
    }
}
