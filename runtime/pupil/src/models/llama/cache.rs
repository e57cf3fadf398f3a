//! The key/value cache of a Llama decoder.
//!
//! Per layer, keys (after RoPE) and values live in one zero-initialised tensor each, laid
//! out time-major `[Tmax, B, Hkv, Dh]`, so the rows of new tokens are one contiguous range
//! and the first T positions are a contiguous prefix. New rows are added in place with
//! `axpy` (`0 + 1 * x` is exact); attention reads the prefix as a view and permutes it to
//! `[B, Hkv, T, Dh]`.

use super::LlamaConfig;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::elementwise::axpy;
use crate::tensor::Tensor;

/// Keys and values of every layer for the tokens seen so far.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    batch: usize,
    /// Elements of one position: `B * Hkv * Dh`.
    row: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `capacity` tokens on `backend`.
    pub fn new(
        backend: &Backend,
        cfg: &LlamaConfig,
        batch: usize,
        capacity: usize,
    ) -> Result<KvCache> {
        if batch == 0 || capacity == 0 {
            return Err(Error::Invalid(format!(
                "kv cache: need a batch and a capacity above 0, got {batch} and {capacity}"
            )));
        }
        if capacity > cfg.max_positions {
            return Err(Error::Invalid(format!(
                "kv cache: {capacity} tokens exceed the model's {} positions; ask for fewer tokens",
                cfg.max_positions
            )));
        }
        let shape = [capacity, batch, cfg.kv_heads, cfg.head_dim];
        let zeros = || Tensor::zeros(backend, &shape);
        Ok(KvCache {
            keys: (0..cfg.layers).map(|_| zeros()).collect::<Result<_>>()?,
            values: (0..cfg.layers).map(|_| zeros()).collect::<Result<_>>()?,
            batch,
            row: batch * cfg.kv_heads * cfg.head_dim,
            capacity,
            len: 0,
        })
    }

    /// Tokens cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sequences per batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Fails when `t` more tokens do not fit.
    pub(crate) fn check_room(&self, t: usize) -> Result<()> {
        if self.len + t > self.capacity {
            return Err(Error::Invalid(format!(
                "kv cache full: {} cached + {t} new tokens exceed its capacity {}; make a larger cache",
                self.len, self.capacity
            )));
        }
        Ok(())
    }

    /// Writes keys and values `[T, B, Hkv, Dh]` of layer `layer` at positions
    /// `len..len + T`, and returns views of positions `0..len + T`, time-major.
    pub(crate) fn append(&self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.numel() / self.row.max(1);
        self.check_room(t)?;
        let (Some(keys), Some(values)) = (self.keys.get(layer), self.values.get(layer)) else {
            return Err(Error::Invalid(format!("kv cache: no layer {layer}")));
        };
        let shape = |n: usize| {
            let mut s = keys.shape().to_vec();
            s[0] = n;
            s
        };
        let at = self.len * self.row;
        axpy(&keys.view(at, &shape(t))?, 1.0, k)?;
        axpy(&values.view(at, &shape(t))?, 1.0, v)?;
        let all = shape(self.len + t);
        Ok((keys.view(0, &all)?, values.view(0, &all)?))
    }

    /// Marks `t` more tokens as cached (after every layer has appended them).
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
