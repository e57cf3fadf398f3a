//! BERT encoders (post-LayerNorm, GELU, absolute positions) and sentence embeddings in the
//! style of sentence-transformers (all-MiniLM-L6-v2): mean pooling over the non-padding
//! tokens, then L2 normalisation.
//!
//! Parameters carry the Hugging Face names (`embeddings.word_embeddings.weight`,
//! `encoder.layer.{i}.attention.self.query.weight`, ...) and are loaded by name from a
//! `.pupil` file made by [`crate::import`]. Shape key: batch B, tokens T, width D, heads H.
//! Per layer: `h = LN(x + Wo attn(x))`, `y = LN(h + W2 gelu(W1 h))`.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::{ConfigValue, ModelBuilder, ModelFile};
use crate::graph::{Graph, Var};
use crate::import::TOKENIZER_TENSOR;
use crate::models::tokenizer::TextTokenizer;
use crate::nn::{Embedding, LayerNorm, Linear};
use crate::params::{Params, ParamsBuilder};
use crate::tensor::Tensor;

/// The shape of a BERT encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Width D.
    pub hidden: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads H.
    pub heads: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Position table size (the longest input).
    pub max_positions: usize,
    /// Token type (segment) table size.
    pub type_vocab: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Inputs are truncated to this many tokens (sentence-transformers' `max_seq_length`).
    pub max_seq_len: usize,
}

impl BertConfig {
    /// Reads the config of a model file written by [`crate::import`] from a BERT checkpoint.
    pub fn from_model(file: &ModelFile) -> Result<BertConfig> {
        let info = file.info();
        if info.arch.as_str() != "bert" {
            return Err(Error::Invalid(format!(
                "model {:?} is a {:?}, not a bert encoder; pick a model converted from a BERT checkpoint",
                info.model_id.as_str(),
                info.arch.as_str()
            )));
        }
        let value = |key: &str| info.get(key);
        let int = |key: &str| match value(key) {
            Some(ConfigValue::Int(v)) => usize::try_from(*v).map_err(|_| missing(key)),
            _ => Err(missing(key)),
        };
        let max_positions = int("max_positions")?;
        Ok(BertConfig {
            hidden: int("hidden_size")?,
            layers: int("layers")?,
            heads: int("heads")?,
            ffn: int("ffn_size")?,
            vocab: int("vocab_size")?,
            max_positions,
            type_vocab: int("type_vocab_size").unwrap_or(2),
            eps: match value("norm_eps") {
                Some(ConfigValue::Float(v)) => *v as f32,
                _ => 1e-12,
            },
            max_seq_len: int("max_seq_len")
                .unwrap_or(max_positions)
                .min(max_positions),
        })
    }
}

/// The error for a config key the model file lacks.
fn missing(key: &str) -> Error {
    Error::Invalid(format!(
        "the model's config has no integer {key:?}; convert the model again with `pupil convert` from a folder with its config.json"
    ))
}

/// One encoder layer.
#[derive(Clone, Debug)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// A BERT encoder's layers (parameters live in a [`Params`] store).
#[derive(Clone, Debug)]
pub struct Bert {
    cfg: BertConfig,
    words: Embedding,
    positions: Embedding,
    types: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    /// Declares every parameter under its Hugging Face name, frozen.
    pub fn new(b: &mut ParamsBuilder, cfg: &BertConfig) -> Result<Bert> {
        if cfg.heads == 0 || !cfg.hidden.is_multiple_of(cfg.heads) {
            return Err(Error::Invalid(format!(
                "bert: width {} is not a multiple of {} heads",
                cfg.hidden, cfg.heads
            )));
        }
        let (d, eps) = (cfg.hidden, cfg.eps);
        let linear = |b: &mut ParamsBuilder, name: String, i: usize, o: usize| {
            Linear::build(b, &name, i, o, true, false)
        };
        let layers = (0..cfg.layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Layer {
                    query: linear(b, format!("{p}.attention.self.query"), d, d),
                    key: linear(b, format!("{p}.attention.self.key"), d, d),
                    value: linear(b, format!("{p}.attention.self.value"), d, d),
                    attn_out: linear(b, format!("{p}.attention.output.dense"), d, d),
                    attn_norm: LayerNorm::new(
                        b,
                        &format!("{p}.attention.output.LayerNorm"),
                        d,
                        eps,
                        false,
                    ),
                    up: linear(b, format!("{p}.intermediate.dense"), d, cfg.ffn),
                    down: linear(b, format!("{p}.output.dense"), cfg.ffn, d),
                    out_norm: LayerNorm::new(b, &format!("{p}.output.LayerNorm"), d, eps, false),
                }
            })
            .collect();
        Ok(Bert {
            words: Embedding::new(b, "embeddings.word_embeddings", cfg.vocab, d, false),
            positions: Embedding::new(
                b,
                "embeddings.position_embeddings",
                cfg.max_positions,
                d,
                false,
            ),
            types: Embedding::new(
                b,
                "embeddings.token_type_embeddings",
                cfg.type_vocab,
                d,
                false,
            ),
            embed_norm: LayerNorm::new(b, "embeddings.LayerNorm", d, eps, false),
            layers,
            cfg: cfg.clone(),
        })
    }

    /// The last hidden states `[B, T, D]` of token `ids` `[B, T]` (f32 integers) with
    /// padding `mask` `[B, T]` (1 token, 0 padding); every token has segment 0.
    pub fn forward(&self, g: &mut Graph, p: &Params, ids: Var, mask: Var) -> Result<Var> {
        let shape = g.shape(ids).to_vec();
        let [bsz, t] = shape[..] else {
            return Err(Error::shape(
                "bert",
                format!("ids must be [B, T], got {shape:?}"),
            ));
        };
        if t > self.cfg.max_positions {
            return Err(Error::shape(
                "bert",
                format!(
                    "{t} tokens exceed the {} positions; truncate the input",
                    self.cfg.max_positions
                ),
            ));
        }
        let backend = g.backend().clone();
        let pos: Vec<f32> = (0..bsz).flat_map(|_| (0..t).map(|i| i as f32)).collect();
        let pos = g.input(Tensor::from_slice(&backend, &[bsz, t], &pos)?);
        let segments = g.input(Tensor::zeros(&backend, &[bsz, t])?);
        let words = self.words.forward(g, p, ids)?;
        let positions = self.positions.forward(g, p, pos)?;
        let types = self.types.forward(g, p, segments)?;
        let x = g.add(words, positions)?;
        let x = g.add(x, types)?;
        let mut x = self.embed_norm.forward(g, p, x)?;
        for layer in &self.layers {
            x = self.layer(g, p, layer, x, mask, [bsz, t])?;
        }
        Ok(x)
    }

    /// The encoder's shape.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The last hidden states `[B, T, D]` of token id sequences, run as one batch padded to
    /// the longest (padding is masked out of attention), and their mean over each sequence's
    /// own tokens `[B, D]`. The mean is not normalised: sentence embeddings are it scaled to
    /// unit length.
    pub fn encode(&self, g: &mut Graph, p: &Params, ids: &[Vec<u32>]) -> Result<(Var, Var)> {
        let bsz = ids.len();
        let t = ids.iter().map(Vec::len).max().unwrap_or(0);
        if bsz == 0 || t == 0 {
            return Err(Error::Invalid(
                "bert: nothing to pool (no sequences, or only empty ones)".into(),
            ));
        }
        let mut flat = vec![0.0f32; bsz * t];
        let mut mask = vec![0.0f32; bsz * t];
        for (row, seq) in ids.iter().enumerate() {
            for (j, &id) in seq.iter().enumerate() {
                flat[row * t + j] = id as f32;
                mask[row * t + j] = 1.0;
            }
        }
        let counts: Vec<f32> = ids.iter().map(|s| s.len().max(1) as f32).collect();
        let backend = g.backend().clone();
        let idv = g.input(Tensor::from_slice(&backend, &[bsz, t], &flat)?);
        let maskv = g.input(Tensor::from_slice(&backend, &[bsz, t], &mask)?);
        let countv = g.input(Tensor::from_slice(&backend, &[bsz, 1], &counts)?);
        let hidden = self.forward(g, p, idv, maskv)?;
        let weights = g.reshape(maskv, &[bsz, 1, t])?;
        let sums = g.matmul(weights, hidden)?;
        let sums = g.reshape(sums, &[bsz, self.cfg.hidden])?;
        Ok((hidden, g.div(sums, countv)?))
    }

    /// One post-LN encoder layer over `x` `[B, T, D]`.
    fn layer(
        &self,
        g: &mut Graph,
        p: &Params,
        l: &Layer,
        x: Var,
        mask: Var,
        [bsz, t]: [usize; 2],
    ) -> Result<Var> {
        let (d, h) = (self.cfg.hidden, self.cfg.heads);
        let split = |g: &mut Graph, v: Var| -> Result<Var> {
            let v = g.reshape(v, &[bsz, t, h, d / h])?;
            g.permute(v, &[0, 2, 1, 3])
        };
        let q = l.query.forward(g, p, x)?;
        let k = l.key.forward(g, p, x)?;
        let v = l.value.forward(g, p, x)?;
        let (q, k, v) = (split(g, q)?, split(g, k)?, split(g, v)?);
        let a = g.attention(q, k, v, Some(mask), false)?;
        let a = g.permute(a, &[0, 2, 1, 3])?;
        let a = g.reshape(a, &[bsz, t, d])?;
        let a = l.attn_out.forward(g, p, a)?;
        let x = g.add(x, a)?;
        let x = l.attn_norm.forward(g, p, x)?;
        let f = l.up.forward(g, p, x)?;
        let f = g.gelu(f)?;
        let f = l.down.forward(g, p, f)?;
        let y = g.add(x, f)?;
        l.out_norm.forward(g, p, y)
    }
}

/// A sentence embedder: tokenizer, BERT encoder and its loaded parameters on one backend.
pub struct SentenceEncoder {
    bert: Bert,
    params: Params,
    tokenizer: TextTokenizer,
}

impl SentenceEncoder {
    /// Loads the encoder, its parameters and its tokenizer (no padding, truncation at the
    /// config's `max_seq_len`) from `file` onto `backend`, every parameter frozen.
    pub fn load(file: &ModelFile, backend: &Backend) -> Result<SentenceEncoder> {
        let layers: Vec<usize> = (0..BertConfig::from_model(file)?.layers).collect();
        Self::load_layers(file, backend, &layers, |_| false)
    }

    /// Loads a shallower encoder from `file`: its layer `j` starts as the file's layer
    /// `layers[j]` (embeddings and tokenizer as in the file). Parameters whose Hugging Face
    /// name `trainable` accepts are trainable, the rest frozen.
    pub fn load_layers(
        file: &ModelFile,
        backend: &Backend,
        layers: &[usize],
        trainable: impl Fn(&str) -> bool,
    ) -> Result<SentenceEncoder> {
        let mut cfg = BertConfig::from_model(file)?;
        if layers.is_empty() || layers.iter().any(|&l| l >= cfg.layers) {
            return Err(Error::Invalid(format!(
                "layers {layers:?}: pick at least one of the model's layers 0 to {}",
                cfg.layers.saturating_sub(1)
            )));
        }
        cfg.layers = layers.len();
        let mut b = ParamsBuilder::new(0);
        let bert = Bert::new(&mut b, &cfg)?;
        b.train_only(trainable);
        let params = b.build(backend)?;
        let missing = params.load_mapped(file, |name| source_name(name, layers))?;
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "model {:?} lacks {} bert parameters, first {:?}; convert the full checkpoint",
                file.info().model_id.as_str(),
                missing.len(),
                missing[0]
            )));
        }
        let tokenizer = TextTokenizer::from_model(file, Some(cfg.max_seq_len))?;
        Ok(SentenceEncoder {
            bert,
            params,
            tokenizer,
        })
    }

    /// A model file of this encoder: the config of `source` (the file it was loaded from,
    /// which keeps pooling, truncation and the like) with this encoder's layer count, its
    /// tokenizer, and every parameter as f32 under its Hugging Face name.
    pub fn to_builder(&self, source: &ModelFile, model_id: &str) -> Result<ModelBuilder> {
        let mut b = ModelBuilder::new(model_id, "bert")?;
        for entry in source.info().config.iter() {
            b.config(entry.key.as_str(), entry.value.clone())?;
        }
        b.config_int("layers", self.bert.cfg.layers as i64)?;
        let tok = source.tensor(TOKENIZER_TENSOR)?;
        b.add_tensor(TOKENIZER_TENSOR, tok.dtype, tok.shape, tok.bytes)?;
        self.params.export(&mut b)?;
        Ok(b)
    }

    /// The encoder's layers.
    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    /// The encoder's parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The embedding width.
    pub fn dim(&self) -> usize {
        self.bert.cfg.hidden
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The token ids of each text, truncated as the model expects.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.tokenizer.encode(t)).collect()
    }

    /// Unit-length embeddings of `texts`, run as one batch padded to the longest text (sort
    /// many texts by length and call this per batch to limit padding).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        self.embed_ids(&ids)
    }

    /// Unit-length embeddings of token id sequences, run as one padded batch.
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if ids.iter().all(Vec::is_empty) {
            return Ok(vec![Vec::new(); ids.len()]);
        }
        let mut g = Graph::new(self.params.backend());
        let (_, mean) = self.bert.encode(&mut g, &self.params, ids)?;
        let means = g.value(mean).to_vec()?;
        Ok(means.chunks_exact(self.dim()).map(unit_length).collect())
    }

    /// Unit-length embeddings of many token id sequences, in input order, run in batches of
    /// `batch` sequences of similar length (to limit padding); `done` sees the number of
    /// sequences embedded after each batch.
    pub fn embed_all(
        &self,
        ids: &[Vec<u32>],
        batch: usize,
        mut done: impl FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); ids.len()];
        let mut count = 0;
        for chunk in length_batches(ids, batch) {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            for (&i, e) in chunk.iter().zip(self.embed_ids(&seqs)?) {
                out[i] = e;
            }
            count += chunk.len();
            done(count);
        }
        Ok(out)
    }
}

/// The indices of `ids` in batches of at most `batch` sequences of similar length (sorted by
/// length, then cut), so that little compute goes to padding.
pub fn length_batches(ids: &[Vec<u32>], batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    order.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}

/// The name of the file parameter that student parameter `name` starts from when its layer
/// `j` is the file's layer `layers[j]` (other names are unchanged).
fn source_name(name: &str, layers: &[usize]) -> String {
    let Some(rest) = name.strip_prefix("encoder.layer.") else {
        return name.to_owned();
    };
    let Some((index, tail)) = rest.split_once('.') else {
        return name.to_owned();
    };
    match index.parse::<usize>().ok().and_then(|j| layers.get(j)) {
        Some(l) => format!("encoder.layer.{l}.{tail}"),
        None => name.to_owned(),
    }
}

/// `v` scaled to unit length (in f64; a zero vector stays zero).
pub fn unit_length(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
}
