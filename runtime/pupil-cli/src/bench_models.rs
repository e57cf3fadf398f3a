//! `pupil bench embed` and `pupil bench generate`: the MiniLM encoder and the SmolLM2 decoder
//! at their real shapes with random weights (so no download is needed and any card can run
//! them), timed with synchronisation around the measured work.

use std::time::Instant;

use pupil::format::{DType, ModelBuilder, ModelFile};
use pupil::graph::{Graph, Var};
use pupil::models::bert::{Bert, BertConfig};
use pupil::models::llama::{KvCache, Llama};
use pupil::params::ParamsBuilder;
use pupil::{Backend, Tensor};
use serde_json::json;

use crate::CliResult;

/// Arguments of `pupil bench embed`.
#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Sentences per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Tokens per sentence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Encoder layers: 6 is MiniLM, 3 a student distilled from it (`pupil distill`).
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Timed batches.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pupil bench generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Prompt length (one prefill pass).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time after the prompt.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Adapter (name, backend or cpu).
    #[arg(long)]
    adapter: Option<String>,
    /// Weight storage: `q4_1` stores like the shipped GGUF (layers Q4_1, embedding and tied
    /// head Q8_0, dequantized in registers); `f32` stores every matrix as f32.
    #[arg(long, default_value = "q4_1", value_parser = ["q4_1", "f32"])]
    weights: String,
    /// Time this Llama-architecture model instead (a .pupil file, a GGUF such as a K-quant
    /// one, or a model folder); --weights is then ignored.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Deterministic values in [-scale, scale).
fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// all-MiniLM-L6-v2's shape with `layers` layers (6 in the original).
fn minilm(layers: usize) -> BertConfig {
    BertConfig {
        hidden: 384,
        layers,
        heads: 12,
        ffn: 1536,
        vocab: 30522,
        max_positions: 512,
        type_vocab: 2,
        eps: 1e-12,
        max_seq_len: 512,
    }
}

/// A MiniLM-shaped encoder of `layers` layers with random weights and a batch of
/// `batch` x `seq` token ids under an all-ones mask: what the encoder benches run.
pub(crate) struct RandomEncoder {
    pub(crate) cfg: BertConfig,
    pub(crate) bert: Bert,
    pub(crate) params: pupil::params::Params,
    pub(crate) ids: Vec<f32>,
    pub(crate) mask: Vec<f32>,
    batch: usize,
    seq: usize,
}

impl RandomEncoder {
    /// The encoder on `backend`; refuses sizes the shape cannot take.
    pub(crate) fn new(
        backend: &Backend,
        layers: usize,
        batch: usize,
        seq: usize,
    ) -> Result<RandomEncoder, Box<dyn std::error::Error>> {
        let cfg = minilm(layers);
        if seq == 0 || seq > cfg.max_positions || batch == 0 || layers == 0 {
            return Err(format!(
                "--seq must be 1 to {} and --batch and --layers positive",
                cfg.max_positions
            )
            .into());
        }
        let mut b = ParamsBuilder::new(1);
        let bert = Bert::new(&mut b, &cfg)?;
        let params = b.build(backend)?;
        let ids = (0..batch * seq)
            .map(|i| (i * 7919 % cfg.vocab) as f32)
            .collect();
        Ok(RandomEncoder {
            cfg,
            bert,
            params,
            ids,
            mask: vec![1.0; batch * seq],
            batch,
            seq,
        })
    }

    /// The mask-weighted sum of the hidden states, `[batch, 1, hidden]`.
    pub(crate) fn pooled(&self, g: &mut Graph, ids: Var, mask: Var) -> pupil::Result<Var> {
        let hidden = self.bert.forward(g, &self.params, ids, mask)?;
        let weights = g.reshape(mask, &[self.batch, 1, self.seq])?;
        g.matmul(weights, hidden)
    }
}

/// Sentences per second of a MiniLM-shaped encoder forward with mean pooling.
pub fn embed(a: EmbedArgs) -> CliResult {
    let backend = Backend::auto(a.adapter.as_deref())?;
    let enc = RandomEncoder::new(&backend, a.layers, a.batch, a.seq)?;
    let pass = || -> pupil::Result<()> {
        let mut g = Graph::new(&backend);
        let idv = g.input(Tensor::from_slice(&backend, &[a.batch, a.seq], &enc.ids)?);
        let maskv = g.input(Tensor::from_slice(&backend, &[a.batch, a.seq], &enc.mask)?);
        let pooled = enc.pooled(&mut g, idv, maskv)?;
        g.value(pooled).to_vec().map(drop)
    };
    pass()?;
    backend.synchronize()?;
    let start = Instant::now();
    for _ in 0..a.reps.max(1) {
        pass()?;
    }
    let secs = start.elapsed().as_secs_f64() / a.reps.max(1) as f64;
    let rate = a.batch as f64 / secs;
    let adapter = backend.describe();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "adapter": adapter, "layers": a.layers, "batch": a.batch, "seq": a.seq, "ms_per_batch": secs * 1e3, "sentences_per_s": rate })
            )?
        );
    } else {
        println!(
            "embed: MiniLM-shaped encoder ({} x 384, random weights), batch {} x {} tokens, on {adapter}",
            a.layers, a.batch, a.seq
        );
        println!("{:.2} ms per batch, {rate:.1} sentences/s", secs * 1e3);
    }
    Ok(())
}

/// A SmolLM2-135M-shaped Llama decoder with random weights, as a model file; with
/// `quantized`, matrices are stored as the shipped GGUF stores them (Q4_1, embedding Q8_0).
fn smollm2_file(quantized: bool) -> pupil::Result<ModelFile> {
    let (d, layers, heads, kv, ffn, vocab) =
        (576usize, 30usize, 9usize, 3usize, 1536usize, 49152usize);
    let kvd = kv * (d / heads);
    let mut b = ModelBuilder::new("bench-smollm2", "llama")?;
    for (k, v) in [
        ("hidden_size", d),
        ("layers", layers),
        ("heads", heads),
        ("kv_heads", kv),
        ("ffn_size", ffn),
        ("vocab_size", vocab),
        ("max_positions", 8192),
        ("tied_embeddings", 1),
    ] {
        b.config_int(k, v as i64)?;
    }
    b.config_float("rope_base", 1e5)?
        .config_float("norm_eps", 1e-5)?;
    let mut seed = 0;
    let mut add =
        |b: &mut ModelBuilder, name: &str, shape: &[usize], ones: bool| -> pupil::Result<()> {
            let n: usize = shape.iter().product();
            seed += 1;
            let values = if ones {
                vec![1.0; n]
            } else {
                noise(n, seed, 0.05)
            };
            let dims: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
            let dtype = match (quantized, shape.len(), name) {
                (true, 2, "token_embd.weight") => DType::Q8_0,
                (true, 2, _) => DType::Q4_1,
                _ => DType::F32,
            };
            b.add_f32_as(name, dtype, &dims, &values)?;
            Ok(())
        };
    add(&mut b, "token_embd.weight", &[vocab, d], false)?;
    add(&mut b, "output_norm.weight", &[d], true)?;
    for i in 0..layers {
        let p = |n: &str| format!("blk.{i}.{n}.weight");
        add(&mut b, &p("attn_norm"), &[d], true)?;
        add(&mut b, &p("attn_q"), &[d, d], false)?;
        add(&mut b, &p("attn_k"), &[kvd, d], false)?;
        add(&mut b, &p("attn_v"), &[kvd, d], false)?;
        add(&mut b, &p("attn_output"), &[d, d], false)?;
        add(&mut b, &p("ffn_norm"), &[d], true)?;
        add(&mut b, &p("ffn_gate"), &[ffn, d], false)?;
        add(&mut b, &p("ffn_up"), &[ffn, d], false)?;
        add(&mut b, &p("ffn_down"), &[d, ffn], false)?;
    }
    Ok(ModelFile::from_bytes(b.to_bytes()?)?)
}

/// Prefill and decode tokens/s of a SmolLM2-shaped decoder, with greedy picks read back
/// every step (as generation does) and peak GPU memory.
pub fn generate(a: GenerateArgs) -> CliResult {
    let backend = Backend::auto(a.adapter.as_deref())?;
    if a.prompt_tokens == 0 {
        return Err("--prompt-tokens must be positive".into());
    }
    let (file, weights) = match &a.model {
        Some(path) => (
            pupil::import::load_model(path)?,
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
        ),
        None => (
            smollm2_file(a.weights == "q4_1")?,
            format!("{} random weights", a.weights),
        ),
    };
    let model = Llama::load(&file, &backend)?;
    let cfg = model.config().clone();
    if let Some(gpu) = backend.gpu() {
        gpu.reset_peak();
    }
    let mut cache = KvCache::new(&backend, &cfg, 1, a.prompt_tokens + a.new_tokens + 1)?;
    let prompt: Vec<f32> = (0..a.prompt_tokens)
        .map(|i| (i * 7919 % cfg.vocab) as f32)
        .collect();
    let forward = |cache: &mut KvCache, ids: &[f32]| -> pupil::Result<u32> {
        let mut g = Graph::new(&backend);
        let idv = g.input(Tensor::from_slice(&backend, &[1, ids.len()], ids)?);
        let logits = model.forward(&mut g, idv, cache)?;
        let z = g.value(logits).to_vec()?;
        Ok(z.iter()
            .enumerate()
            .fold(0, |b, (j, v)| if *v > z[b] { j } else { b }) as u32)
    };
    backend.synchronize()?;
    let start = Instant::now();
    let mut next = forward(&mut cache, &prompt)?;
    let prefill = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..a.new_tokens {
        next = forward(&mut cache, &[next as f32])?;
    }
    let decode = start.elapsed().as_secs_f64();
    let peak = backend.gpu().map(|g| g.peak_bytes());
    let adapter = backend.describe();
    let (p_rate, d_rate) = (
        a.prompt_tokens as f64 / prefill,
        a.new_tokens as f64 / decode.max(1e-9),
    );
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "adapter": adapter, "weights": weights, "weight_bytes": model.weight_bytes(), "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens, "prefill_tokens_per_s": p_rate, "decode_tokens_per_s": d_rate, "peak_gpu_bytes": peak })
            )?
        );
    } else {
        println!(
            "generate: {} layers x {}, GQA {}/{}, {weights}, {:.1} MB, on {adapter}",
            cfg.layers,
            cfg.hidden,
            cfg.heads,
            cfg.kv_heads,
            model.weight_bytes() as f64 / 1e6
        );
        println!(
            "prefill {} tokens: {:.1} ms ({p_rate:.1} tokens/s)",
            a.prompt_tokens,
            prefill * 1e3
        );
        println!(
            "decode {} tokens: {:.1} ms per token ({d_rate:.2} tokens/s)",
            a.new_tokens,
            decode * 1e3 / a.new_tokens.max(1) as f64
        );
        if let Some(p) = peak {
            println!(
                "peak GPU memory held by tensors: {:.1} MiB",
                p as f64 / (1024.0 * 1024.0)
            );
        }
    }
    Ok(())
}
