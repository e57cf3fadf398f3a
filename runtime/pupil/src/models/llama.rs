//! Llama decoders (SmolLM2-135M and kin): pre-RMSNorm layers, rotary positions ("rotate
//! half"), grouped-query attention with a KV cache, SwiGLU feed-forward, optionally tied
//! embeddings; the base is frozen (adapters train over it).
//!
//! Weights carry the GGUF names (`token_embd.weight`, `blk.{i}.attn_q.weight`, ...) and are
//! loaded by name from a `.pupil` file made by [`crate::import`]. Block-quantized matrices
//! (Q8_0/Q4_0/Q4_1) stay quantized on the backend and are dequantized in registers where
//! they are multiplied: SmolLM2-135M's Q4_1/Q8_0 file takes 98 MB instead of 540 MB in f32.
//! Each weight is its own buffer rather than a slot of one [`crate::params::Params`] buffer:
//! all of them together can exceed one storage binding (128 MiB on lavapipe).
//! Shape key: batch B, new tokens T, cached tokens P, width D, heads H, kv heads Hkv, head
//! width Dh. Per layer: `h = x + Wo attn(rope(Wq n(x)), rope(Wk n(x)), Wv n(x))` over the
//! cached and new keys, causal; `y = h + W_down (silu(W_gate n(h)) * W_up n(h))`, with `n`
//! the layer's RMSNorm. Logits: `norm(y_last) E^T` with E the embedding table when tied.
//! Training ([`Llama::forward_all`]) runs without a cache, so gradients reach the adapters
//! of [`LlamaLora`] through keys and values too.

mod cache;
mod chat;
mod config;
pub mod lora;
pub mod lora_file;
mod run;
pub mod sample;
#[cfg(test)]
pub(crate) mod testing;
mod weight;

pub use cache::KvCache;
pub use chat::chat_prompt;
pub use config::LlamaConfig;
pub use lora::{LlamaLora, Target};
pub use run::{CausalLm, Generation};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::ModelFile;
use crate::graph::{Graph, Var};
use crate::tensor::Tensor;
use weight::{load_f32, Weight};

/// One decoder layer's weights (projections `[out, in]`).
#[derive(Clone, Debug)]
struct Layer {
    attn_norm: Tensor,
    q: Weight,
    k: Weight,
    v: Weight,
    o: Weight,
    ffn_norm: Tensor,
    gate: Weight,
    up: Weight,
    down: Weight,
}

/// A Llama decoder with its weights on one backend.
pub struct Llama {
    cfg: LlamaConfig,
    embed: Weight,
    layers: Vec<Layer>,
    norm: Tensor,
    /// The output projection `[V, D]`; the embedding table when tied.
    head: Weight,
    /// Low-rank adapters added to the frozen projections, if any.
    lora: Option<LlamaLora>,
}

impl Llama {
    /// Loads the config and every weight of `file` onto `backend` (block formats stay
    /// quantized, float matrices and norms load as f32).
    pub fn load(file: &ModelFile, backend: &Backend) -> Result<Llama> {
        let cfg = LlamaConfig::from_model(file)?;
        let (d, kv) = (cfg.hidden, cfg.kv_heads * cfg.head_dim);
        let w =
            |name: &str, [rows, cols]: [usize; 2]| Weight::load(file, backend, name, [rows, cols]);
        let vector = |name: &str| load_f32(file, backend, name, &[d]);
        let layers = (0..cfg.layers)
            .map(|i| {
                let p = |name: &str| format!("blk.{i}.{name}.weight");
                Ok(Layer {
                    attn_norm: vector(&p("attn_norm"))?,
                    q: w(&p("attn_q"), [d, d])?,
                    k: w(&p("attn_k"), [kv, d])?,
                    v: w(&p("attn_v"), [kv, d])?,
                    o: w(&p("attn_output"), [d, d])?,
                    ffn_norm: vector(&p("ffn_norm"))?,
                    gate: w(&p("ffn_gate"), [cfg.ffn, d])?,
                    up: w(&p("ffn_up"), [cfg.ffn, d])?,
                    down: w(&p("ffn_down"), [d, cfg.ffn])?,
                })
            })
            .collect::<Result<_>>()?;
        let embed = w("token_embd.weight", [cfg.vocab, d])?;
        let head = if cfg.tied_embeddings {
            embed.clone()
        } else {
            w("output.weight", [cfg.vocab, d])?
        };
        Ok(Llama {
            norm: vector("output_norm.weight")?,
            embed,
            layers,
            head,
            cfg,
            lora: None,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> Backend {
        self.norm.backend()
    }

    /// Bytes the weights occupy on the backend (a tied head counted once).
    pub fn weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|w| w.bytes())
                    .sum::<u64>()
                    + l.attn_norm.bytes()
                    + l.ffn_norm.bytes()
            })
            .sum();
        let head = if self.cfg.tied_embeddings {
            0
        } else {
            self.head.bytes()
        };
        layers + self.embed.bytes() + head + self.norm.bytes()
    }

    /// Puts low-rank adapters on the model (or removes them with `None`).
    pub fn set_lora(&mut self, lora: Option<LlamaLora>) {
        self.lora = lora;
    }

    /// The adapters, if any.
    pub fn lora(&self) -> Option<&LlamaLora> {
        self.lora.as_ref()
    }

    /// Removes the adapters and returns them.
    pub fn take_lora(&mut self) -> Option<LlamaLora> {
        self.lora.take()
    }

    /// Logits of every position `[B * T, V]` for `ids` `[B, T]` (no cache): the training and
    /// perplexity pass, differentiable with respect to the adapters.
    pub fn forward_all(&self, g: &mut Graph, ids: Var) -> Result<Var> {
        let [bsz, t] = batch_dims(g, ids)?;
        if t > self.cfg.max_positions {
            return Err(Error::Invalid(format!(
                "{t} tokens exceed the model's {} positions",
                self.cfg.max_positions
            )));
        }
        let mut x = self.embed.rows(g, ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer(g, (i, layer), x, None, [bsz, t])?;
        }
        let rows = g.reshape(x, &[bsz * t, self.cfg.hidden])?;
        let x = rms_norm(g, rows, &self.norm, self.cfg.eps)?;
        self.head.linear(g, x)
    }

    /// Runs new tokens `ids` (`[B, T]`, f32 integers) after the `cache`'s tokens, adds their
    /// keys and values to the cache and returns the logits of the last position `[B, V]`.
    pub fn forward(&self, g: &mut Graph, ids: Var, cache: &mut KvCache) -> Result<Var> {
        let shape = g.shape(ids).to_vec();
        let [bsz, t] = batch_dims(g, ids)?;
        if bsz != cache.batch() {
            return Err(Error::shape(
                "llama",
                format!(
                    "ids {shape:?} need T > 0 and B equal to the cache's batch {}",
                    cache.batch()
                ),
            ));
        }
        cache.check_room(t)?;
        let mut x = self.embed.rows(g, ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer(g, (i, layer), x, Some(cache), [bsz, t])?;
        }
        cache.advance(t);
        let d = self.cfg.hidden;
        let rows = g.reshape(x, &[bsz * t, d])?;
        let last: Vec<f32> = (0..bsz).map(|b| (b * t + t - 1) as f32).collect();
        let last = g.input(Tensor::from_slice(g.backend(), &[bsz], &last)?);
        let x = g.embedding(rows, last)?;
        let x = rms_norm(g, x, &self.norm, self.cfg.eps)?;
        self.head.linear(g, x)
    }

    /// `x W^T` for a layer's projection, plus its adapter's term when it has one.
    fn project(&self, g: &mut Graph, at: (usize, Target), w: &Weight, x: Var) -> Result<Var> {
        let y = w.linear(g, x)?;
        match &self.lora {
            Some(lora) => lora.apply(g, at, x, y),
            None => Ok(y),
        }
    }

    /// One pre-norm decoder layer over `x` `[B, T, D]`, reading and extending the cache when
    /// there is one (attending to the new tokens alone otherwise).
    fn layer(
        &self,
        g: &mut Graph,
        (index, l): (usize, &Layer),
        x: Var,
        cache: Option<&KvCache>,
        [bsz, t]: [usize; 2],
    ) -> Result<Var> {
        let c = &self.cfg;
        let (dh, offset) = (c.head_dim, cache.map_or(0, KvCache::len));
        let heads = |g: &mut Graph, v: Var, h: usize| -> Result<Var> {
            let v = g.reshape(v, &[bsz, t, h, dh])?;
            g.permute(v, &[0, 2, 1, 3])
        };
        let n = rms_norm(g, x, &l.attn_norm, c.eps)?;
        let q = self.project(g, (index, Target::Q), &l.q, n)?;
        let q = heads(g, q, c.heads)?;
        let q = g.rope(q, c.rope_base, offset)?;
        let k = self.project(g, (index, Target::K), &l.k, n)?;
        let k = heads(g, k, c.kv_heads)?;
        let k = g.rope(k, c.rope_base, offset)?;
        let v = self.project(g, (index, Target::V), &l.v, n)?;
        let v = g.reshape(v, &[bsz, t, c.kv_heads, dh])?;
        let (k_all, v_all) = match cache {
            Some(cache) => {
                // The cache is time-major [T, B, Hkv, Dh].
                let k_new = g.permute(k, &[2, 0, 1, 3])?;
                let v_new = g.permute(v, &[1, 0, 2, 3])?;
                let (k_all, v_all) = cache.append(index, g.value(k_new), g.value(v_new))?;
                let k_all = g.input(k_all);
                let v_all = g.input(v_all);
                (
                    g.permute(k_all, &[1, 2, 0, 3])?,
                    g.permute(v_all, &[1, 2, 0, 3])?,
                )
            }
            None => (k, g.permute(v, &[0, 2, 1, 3])?),
        };
        let a = g.attention(q, k_all, v_all, None, true)?;
        let a = g.permute(a, &[0, 2, 1, 3])?;
        let a = g.reshape(a, &[bsz, t, c.hidden])?;
        let a = self.project(g, (index, Target::O), &l.o, a)?;
        let h = g.add(x, a)?;
        let n = rms_norm(g, h, &l.ffn_norm, c.eps)?;
        let gate = self.project(g, (index, Target::Gate), &l.gate, n)?;
        let gate = g.silu(gate)?;
        let up = self.project(g, (index, Target::Up), &l.up, n)?;
        let f = g.mul(gate, up)?;
        let f = self.project(g, (index, Target::Down), &l.down, f)?;
        g.add(h, f)
    }
}

/// `[B, T]` of an ids input with T > 0.
fn batch_dims(g: &Graph, ids: Var) -> Result<[usize; 2]> {
    match g.shape(ids) {
        &[b, t] if t > 0 && b > 0 => Ok([b, t]),
        s => Err(Error::shape(
            "llama",
            format!("ids must be [B, T] with B, T > 0, got {s:?}"),
        )),
    }
}

/// RMSNorm of `x` over its last axis with a constant scale.
fn rms_norm(g: &mut Graph, x: Var, gamma: &Tensor, eps: f32) -> Result<Var> {
    let gamma = g.input(gamma.clone());
    g.rms_norm(x, gamma, eps)
}
