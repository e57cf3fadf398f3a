//! Embedding lookup: `out[.., :] = table[ids[..], :]`.
//!
//! Shape key: table `[V, D]`, ids `[..]` (any shape, N positions in all) as f32 integers,
//! out `[.., D]`. Ids must lie in `[0, V)`: the CPU backend refuses any other id with
//! [`Error::Invalid`]; a kernel cannot report one without a readback, so the GPU backend
//! truncates and clamps it into `[0, V - 1]` (forward and backward use the same row).
//! Backward (ids get no gradient): a scatter-add,
//!   `dtable[v, c] = sum over positions n with ids[n] == v of dy[n, c]`,
//! computed on the GPU without float atomics: one workgroup per (row, 1024 columns) scans
//! every id, so the cost is `V * N` id reads (fine for the batches we train).

use bytemuck::{Pod, Zeroable};

use super::{common_backend, grid, groups_for, require_f32, u32_len};
use crate::backend::Backend;
use crate::device::Kernel;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Columns one workgroup of the backward kernel handles (`BLOCK` in the shader).
const BLOCK: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    vocab: u32,
    tokens: u32,
    blocks: u32,
    _pad: [u32; 3],
}

/// `(V, D)` of a table, checked to be a non-empty-vocabulary matrix.
fn table_dims(table: &Tensor) -> Result<(usize, usize)> {
    match table.shape() {
        &[v, d] if v > 0 => Ok((v, d)),
        s => Err(Error::shape(
            "embedding",
            format!("table must be [V, D] with V > 0, got {s:?}"),
        )),
    }
}

fn params(vocab: usize, dim: usize, tokens: usize) -> Result<Params> {
    let op = "embedding";
    let blocks = dim.div_ceil(BLOCK);
    // The kernels index the table as row * D + c and the backward grid as v * blocks + b.
    u32_len(op, vocab * dim)?;
    u32_len(op, vocab * blocks)?;
    Ok(Params {
        n: u32_len(op, tokens * dim)?,
        dim: u32_len(op, dim)?,
        vocab: u32_len(op, vocab)?,
        tokens: u32_len(op, tokens)?,
        blocks: u32_len(op, blocks)?,
        _pad: [0; 3],
    })
}

/// Gather rows of `table` (`[V, D]`) by `ids` (`[..]`, f32 integers): output `[.., D]`.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let backend = common_backend("embedding", &[table, ids])?;
    require_f32("embedding", &[table, ids])?;
    let (v, d) = table_dims(table)?;
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    let out = Tensor::uninit(&backend, &shape, DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::forward(
            &table.cpu_read()?,
            &ids.cpu_read()?,
            &mut out.cpu_write()?,
            v,
            d,
        )?,
        Backend::Gpu(gpu) => {
            let p = params(v, d, ids.numel())?;
            gpu.dispatch(
                Kernel::f32("embedding", "embedding_fwd"),
                bytemuck::bytes_of(&p),
                &[table.bind(1)?, ids.bind(2)?, out.bind(3)?],
                grid(out.numel(), 256),
            )?;
        }
    }
    Ok(out)
}

/// Gradient of [`embedding`] with respect to the table, `[V, D]` (rows no id names are 0).
/// `table` is the forward's table (only its shape is read), `dy` has shape `[.., D]`.
pub fn embedding_backward(table: &Tensor, ids: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let backend = common_backend("embedding", &[table, ids, dy])?;
    require_f32("embedding", &[ids, dy])?;
    let (v, d) = table_dims(table)?;
    let mut want = ids.shape().to_vec();
    want.push(d);
    if dy.shape() != want.as_slice() {
        return Err(Error::shape(
            "embedding backward",
            format!(
                "ids {:?} and table [{v}, {d}] need dy {want:?}, got {:?}",
                ids.shape(),
                dy.shape()
            ),
        ));
    }
    let out = Tensor::uninit(&backend, &[v, d], DType::F32)?;
    match &backend {
        Backend::Cpu => cpu::backward(
            &ids.cpu_read()?,
            &dy.cpu_read()?,
            &mut out.cpu_write()?,
            v,
            d,
        )?,
        Backend::Gpu(gpu) => {
            let p = params(v, d, ids.numel())?;
            gpu.dispatch(
                Kernel::f32("embedding", "embedding_bwd"),
                bytemuck::bytes_of(&p),
                &[ids.bind(2)?, out.bind(3)?, dy.bind(4)?],
                groups_for(v * d.div_ceil(BLOCK)),
            )?;
        }
    }
    Ok(out)
}

/// The CPU reference: refuses ids that are not integers in `[0, V)`.
pub(crate) mod cpu {
    use crate::error::{Error, Result};

    fn row(id: f32, n: usize, vocab: usize) -> Result<usize> {
        if id >= 0.0 && id < vocab as f32 && id.fract() == 0.0 {
            Ok(id as usize)
        } else {
            Err(Error::Invalid(format!(
                "embedding: id {id} at position {n} is not an integer in [0, {vocab}); check the tokenizer's vocabulary against the table"
            )))
        }
    }

    pub(crate) fn forward(
        table: &[f32],
        ids: &[f32],
        out: &mut [f32],
        vocab: usize,
        dim: usize,
    ) -> Result<()> {
        for (n, &id) in ids.iter().enumerate() {
            let r = row(id, n, vocab)?;
            out[n * dim..(n + 1) * dim].copy_from_slice(&table[r * dim..(r + 1) * dim]);
        }
        Ok(())
    }

    pub(crate) fn backward(
        ids: &[f32],
        dy: &[f32],
        out: &mut [f32],
        vocab: usize,
        dim: usize,
    ) -> Result<()> {
        let mut acc = vec![0.0f64; vocab * dim];
        for (n, &id) in ids.iter().enumerate() {
            let r = row(id, n, vocab)?;
            for (a, g) in acc[r * dim..(r + 1) * dim]
                .iter_mut()
                .zip(&dy[n * dim..(n + 1) * dim])
            {
                *a += *g as f64;
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = *a as f32;
        }
        Ok(())
    }
}

mod tape {
    use super::*;
    use crate::graph::{Graph, Var};

    impl Graph {
        /// Embedding lookup: rows of `table` (`[V, D]`) picked by `ids` (`[..]`, f32 integer
        /// ids, a constant: it gets no gradient); output `[.., D]`. See [`embedding`] for
        /// what happens to out-of-range ids on each backend.
        pub fn embedding(&mut self, table: Var, ids: Var) -> Result<Var> {
            let y = embedding(self.value(table), self.value(ids))?;
            Ok(self.record(y, &[table, ids], |i, _, dy| {
                Ok(vec![Some(embedding_backward(i[0], i[1], dy)?), None])
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::ops::testing::{assert_close, check_gradient, gpu, pair, probe, random};

    /// `n` ids in `[0, v)`, with repeats (and a few fixed ones so rows collide).
    fn ids(n: usize, v: usize, seed: u64) -> Vec<f32> {
        random(n, seed, 1.0)
            .iter()
            .enumerate()
            .map(|(i, x)| {
                if i % 5 == 0 {
                    0.0
                } else {
                    ((x + 1.0) * 0.5 * v as f32).floor().min(v as f32 - 1.0)
                }
            })
            .collect()
    }

    #[test]
    fn gpu_matches_cpu() {
        let cases: &[(usize, usize, &[usize])] = &[
            (1, 1, &[1]),
            (7, 33, &[5]),
            (50, 257, &[3, 7]),
            (10, 1100, &[33]),
            (300, 5, &[2, 300]),
            (4, 3, &[0]),
        ];
        for (i, &(v, d, ishape)) in cases.iter().enumerate() {
            let seed = i as u64;
            let (tc, tg) = pair(&[v, d], seed);
            let iv = ids(ishape.iter().product(), v, 100 + seed);
            let ic = Tensor::from_slice(&Backend::Cpu, ishape, &iv).unwrap();
            let ig = Tensor::from_slice(&gpu(), ishape, &iv).unwrap();
            let what = format!("V={v} D={d} ids {ishape:?}");
            // A gather copies values: exact.
            assert_close(
                &what,
                &embedding(&tg, &ig).unwrap(),
                &embedding(&tc, &ic).unwrap(),
                0.0,
                0.0,
            );
            let mut oshape = ishape.to_vec();
            oshape.push(d);
            let (dc, dg) = pair(&oshape, 200 + seed);
            // f32 sums of up to 600 dy values in position order against f64 sums:
            // 1e-5 relative, 1e-5 absolute (cancellation among the terms).
            assert_close(
                &format!("d{what}"),
                &embedding_backward(&tg, &ig, &dg).unwrap(),
                &embedding_backward(&tc, &ic, &dc).unwrap(),
                1e-5,
                1e-5,
            );
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let cpu = Backend::Cpu;
        let (v, d) = (5, 3);
        let tv = random(v * d, 1, 1.0);
        let iv = [1.0, 3.0, 1.0, 0.0];
        let ids = Tensor::from_slice(&cpu, &[2, 2], &iv).unwrap();
        let w = random(iv.len() * d, 2, 1.0);
        let dy = Tensor::from_slice(&cpu, &[2, 2, d], &w).unwrap();
        let table = Tensor::from_slice(&cpu, &[v, d], &tv).unwrap();
        let dt = embedding_backward(&table, &ids, &dy)
            .unwrap()
            .to_vec()
            .unwrap();
        let loss = |x: &[f32]| {
            let t = Tensor::from_slice(&cpu, &[v, d], x).unwrap();
            probe(&embedding(&t, &ids).unwrap().to_vec().unwrap(), &w)
        };
        check_gradient("dtable", &tv, &dt, loss, 1e-2);
    }

    /// `sum(embedding(table, ids) * w)` on the tape gives the same table gradient on both
    /// backends, and that gradient is the scatter-add of `w`.
    #[test]
    fn graph_method_on_both_backends() {
        let (v, d) = (6, 4);
        let tv = random(v * d, 3, 1.0);
        let iv = [2.0, 5.0, 2.0];
        let wv = random(iv.len() * d, 4, 1.0);
        let mut grads = vec![];
        for backend in [Backend::Cpu, gpu()] {
            let mut g = Graph::new(&backend);
            let table = g.input_with_grad(Tensor::from_slice(&backend, &[v, d], &tv).unwrap());
            let ids = g.input(Tensor::from_slice(&backend, &[3], &iv).unwrap());
            let w = g.input(Tensor::from_slice(&backend, &[3, d], &wv).unwrap());
            let e = g.embedding(table, ids).unwrap();
            let y = g.mul(e, w).unwrap();
            let l = g.sum_all(y).unwrap();
            grads.push(g.backward(l).unwrap().get(table).unwrap().to_vec().unwrap());
        }
        let mut want = vec![0.0f32; v * d];
        for (n, id) in iv.iter().enumerate() {
            for c in 0..d {
                want[*id as usize * d + c] += wv[n * d + c];
            }
        }
        for got in grads {
            for (a, b) in got.iter().zip(&want) {
                // Sums of at most two f32 values.
                assert!((a - b).abs() <= 1e-6, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn out_of_range_ids() {
        let cpu = Backend::Cpu;
        let table = Tensor::from_slice(&cpu, &[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        for bad in [-1.0, 3.0, 1.5] {
            let ids = Tensor::from_slice(&cpu, &[2], &[0.0, bad]).unwrap();
            assert!(
                matches!(embedding(&table, &ids), Err(Error::Invalid(_))),
                "id {bad}"
            );
        }
        // The GPU clamps: -3 reads row 0, 7 reads row 2.
        let g = gpu();
        let tg = table.to_backend(&g).unwrap();
        let ig = Tensor::from_slice(&g, &[2], &[-3.0, 7.0]).unwrap();
        assert_eq!(
            embedding(&tg, &ig).unwrap().to_vec().unwrap(),
            vec![0.0, 1.0, 4.0, 5.0]
        );
        let dy = Tensor::from_slice(&g, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(
            embedding_backward(&tg, &ig, &dy).unwrap().to_vec().unwrap(),
            vec![1.0, 2.0, 0.0, 0.0, 3.0, 4.0]
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        for backend in [Backend::Cpu, gpu()] {
            let ids = Tensor::from_slice(&backend, &[2], &[0.0, 1.0]).unwrap();
            let flat = Tensor::zeros(&backend, &[6]).unwrap();
            assert!(matches!(embedding(&flat, &ids), Err(Error::Shape { .. })));
            let empty = Tensor::zeros(&backend, &[0, 3]).unwrap();
            assert!(matches!(embedding(&empty, &ids), Err(Error::Shape { .. })));
            let table = Tensor::zeros(&backend, &[4, 3]).unwrap();
            let dy = Tensor::zeros(&backend, &[2, 4]).unwrap();
            assert!(matches!(
                embedding_backward(&table, &ids, &dy),
                Err(Error::Shape { .. })
            ));
        }
    }
}
