//! A token embedding table `[vocab, dim]`.

use crate::error::Result;
use crate::graph::{Graph, Var};
use crate::params::{Init, ParamId, Params, ParamsBuilder};

/// Looks up one row of the table per token id.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// The table `[vocab, dim]`.
    pub table: ParamId,
}

impl Embedding {
    /// Declare a table initialised N(0, 1) as in PyTorch.
    pub fn new(
        b: &mut ParamsBuilder,
        name: &str,
        vocab: usize,
        dim: usize,
        trainable: bool,
    ) -> Embedding {
        Embedding {
            table: b.add(
                format!("{name}.weight"),
                &[vocab, dim],
                Init::Normal(1.0),
                trainable,
            ),
        }
    }

    /// Rows for `ids` (f32 integers) of any shape: `[.., dim]`.
    pub fn forward(&self, g: &mut Graph, p: &Params, ids: Var) -> Result<Var> {
        let table = g.param(p, self.table)?;
        g.embedding(table, ids)
    }
}
