//! A frozen weight matrix of a decoder: block-quantized weights stay quantized on the
//! backend (Q8_0/Q4_0/Q4_1 products dequantize in registers), float ones load as f32.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::ModelFile;
use crate::graph::{Graph, Var};
use crate::ops::qmatmul::{QFormat, QMatrix};
use crate::tensor::Tensor;

/// A `[out, in]` matrix, dense or quantized.
#[derive(Clone, Debug)]
pub(crate) enum Weight {
    /// f32 values.
    Dense(Tensor),
    /// Blocks of a [`QFormat`], as the file stores them.
    Quant(QMatrix),
}

impl Weight {
    /// The matrix `name` of `file` on `backend`, which must have `shape`; block formats stay
    /// quantized.
    pub(crate) fn load(
        file: &ModelFile,
        backend: &Backend,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Weight> {
        let t = file.tensor(name).map_err(|_| missing(file, name))?;
        check_shape(name, t.shape, &shape)?;
        Ok(match QFormat::of(t.dtype) {
            Some(format) => Weight::Quant(QMatrix::from_blocks(backend, format, shape, t.bytes)?),
            None => Weight::Dense(Tensor::from_slice(backend, &shape, &t.to_f32())?),
        })
    }

    /// `x W^T` for `x` `[.., in]`.
    pub(crate) fn linear(&self, g: &mut Graph, x: Var) -> Result<Var> {
        match self {
            Weight::Dense(w) => {
                let w = g.input(w.clone());
                g.matmul_t(x, w, false, true)
            }
            Weight::Quant(w) => g.qmatmul(x, w),
        }
    }

    /// Rows picked by `ids` (an embedding lookup).
    pub(crate) fn rows(&self, g: &mut Graph, ids: Var) -> Result<Var> {
        match self {
            Weight::Dense(w) => {
                let table = g.input(w.clone());
                g.embedding(table, ids)
            }
            Weight::Quant(w) => g.qembedding(w, ids),
        }
    }

    /// Bytes the weight occupies on its backend.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            Weight::Dense(w) => w.bytes(),
            Weight::Quant(w) => w.bytes(),
        }
    }
}

/// The f32 vector or matrix `name` of `file` on `backend`, which must have `shape`.
pub(crate) fn load_f32(
    file: &ModelFile,
    backend: &Backend,
    name: &str,
    shape: &[usize],
) -> Result<Tensor> {
    let t = file.tensor(name).map_err(|_| missing(file, name))?;
    check_shape(name, t.shape, shape)?;
    Tensor::from_slice(backend, shape, &t.to_f32())
}

fn missing(file: &ModelFile, name: &str) -> Error {
    Error::Invalid(format!(
        "model {:?} lacks the llama weight {name:?}; convert the full GGUF with `pupil convert`",
        file.info().model_id.as_str()
    ))
}

fn check_shape(name: &str, got: &[u64], want: &[usize]) -> Result<()> {
    let got: Vec<usize> = got.iter().map(|&d| d as usize).collect();
    if got != want {
        return Err(Error::shape(
            "llama load",
            format!("{name}: file has {got:?}, the config implies {want:?}"),
        ));
    }
    Ok(())
}
