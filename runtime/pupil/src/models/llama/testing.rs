//! A tiny random Llama for tests.

use crate::format::{DType, ModelBuilder, ModelFile};
use crate::ops::testing::random;

/// A two-layer Llama (hidden 64, GQA 4/2, vocab 97) with random weights; matrices Q4_1
/// (embedding Q8_0) when `quantized`, f32 otherwise.
pub(crate) fn tiny(quantized: bool) -> ModelFile {
    let (d, layers, heads, kv, ffn, vocab) = (64usize, 2usize, 4usize, 2usize, 96usize, 97usize);
    let kvd = kv * d / heads;
    let mut b = ModelBuilder::new("tiny", "llama").unwrap();
    for (k, v) in [
        ("hidden_size", d),
        ("layers", layers),
        ("heads", heads),
        ("kv_heads", kv),
        ("ffn_size", ffn),
        ("vocab_size", vocab),
        ("max_positions", 64),
        ("tied_embeddings", 1),
    ] {
        b.config_int(k, v as i64).unwrap();
    }
    b.config_float("rope_base", 1e4).unwrap();
    b.config_float("norm_eps", 1e-5).unwrap();
    let mut seed = 0;
    let mut add = |b: &mut ModelBuilder, name: &str, shape: &[usize]| {
        seed += 1;
        let n: usize = shape.iter().product();
        let (dtype, values) = match shape.len() {
            1 => (DType::F32, vec![1.0; n]),
            _ if !quantized => (DType::F32, random(n, seed, 0.3)),
            _ if name == "token_embd.weight" => (DType::Q8_0, random(n, seed, 0.3)),
            _ => (DType::Q4_1, random(n, seed, 0.3)),
        };
        let dims: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
        b.add_f32_as(name, dtype, &dims, &values).unwrap();
    };
    add(&mut b, "token_embd.weight", &[vocab, d]);
    add(&mut b, "output_norm.weight", &[d]);
    for i in 0..layers {
        let p = |n: &str| format!("blk.{i}.{n}.weight");
        add(&mut b, &p("attn_norm"), &[d]);
        add(&mut b, &p("attn_q"), &[d, d]);
        add(&mut b, &p("attn_k"), &[kvd, d]);
        add(&mut b, &p("attn_v"), &[kvd, d]);
        add(&mut b, &p("attn_output"), &[d, d]);
        add(&mut b, &p("ffn_norm"), &[d]);
        add(&mut b, &p("ffn_gate"), &[ffn, d]);
        add(&mut b, &p("ffn_up"), &[ffn, d]);
        add(&mut b, &p("ffn_down"), &[d, ffn]);
    }
    ModelFile::from_bytes(b.to_bytes().unwrap()).unwrap()
}
