//! Importer tests on small GGUF and safetensors files built here.

use std::collections::HashMap;

use half::f16;

use super::*;
use crate::format::{ConfigValue, DType, ModelFile};

/// One metadata value as GGUF writes it: type code, then the bytes.
enum W {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(&'static str),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    Raw(u32, Vec<u8>),
}

fn gstr(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn wvalue(out: &mut Vec<u8>, v: &W) {
    let (ty, body): (u32, Vec<u8>) = match v {
        W::U32(x) => (4, x.to_le_bytes().to_vec()),
        W::F32(x) => (6, x.to_le_bytes().to_vec()),
        W::Bool(b) => (7, vec![u8::from(*b)]),
        W::Str(s) => {
            let mut b = Vec::new();
            gstr(&mut b, s);
            (8, b)
        }
        W::Strs(items) => {
            let mut b = 8u32.to_le_bytes().to_vec();
            b.extend((items.len() as u64).to_le_bytes());
            for s in items {
                gstr(&mut b, s);
            }
            (9, b)
        }
        W::I32s(items) => {
            let mut b = 5u32.to_le_bytes().to_vec();
            b.extend((items.len() as u64).to_le_bytes());
            b.extend(items.iter().flat_map(|x| x.to_le_bytes()));
            (9, b)
        }
        W::Raw(ty, b) => (*ty, b.clone()),
    };
    out.extend(ty.to_le_bytes());
    out.extend(body);
}

/// A GGUF v3 file with `meta` and tensors `(name, shape outermost first, type, bytes)`.
fn gguf(meta: &[(&str, W)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)], align: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        gstr(&mut out, k);
        wvalue(&mut out, v);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, shape, ty, bytes) in tensors {
        gstr(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + bytes.len() as u64).next_multiple_of(align);
    }
    let start = (out.len() as u64).next_multiple_of(align);
    for ((_, _, _, bytes), off) in tensors.iter().zip(offsets) {
        out.resize((start + off) as usize, 0);
        out.extend(bytes);
    }
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as u8
        })
        .collect()
}

/// Q8_0 / Q4_1 blocks with finite f16 scales and random quants.
fn blocks(n: usize, block: usize, scales: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, q) in noise(n * block, seed).chunks(block).enumerate() {
        let mut b = q.to_vec();
        for s in 0..scales {
            let v = f16::from_f32(0.01 * (i + s + 1) as f32).to_le_bytes();
            b[2 * s..2 * s + 2].copy_from_slice(&v);
        }
        out.extend(b);
    }
    out
}

/// A tiny Llama-like GGUF: 2 heads of dim 4 over width 8 (1 KV head), quantized weights,
/// a gpt2 tokenizer over the letters a-d with two merges.
fn tiny_llama(align: u64) -> Vec<u8> {
    let tokens = ["<|endoftext|>", "a", "b", "c", "d", "ab", "abc"];
    let meta = [
        ("general.architecture", W::Str("llama")),
        ("general.alignment", W::U32(align as u32)),
        ("llama.embedding_length", W::U32(8)),
        ("llama.block_count", W::U32(1)),
        ("llama.attention.head_count", W::U32(2)),
        ("llama.attention.head_count_kv", W::U32(1)),
        ("llama.rope.freq_base", W::F32(100_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", W::F32(1e-5)),
        ("tokenizer.ggml.add_bos_token", W::Bool(false)),
        ("tokenizer.ggml.model", W::Str("gpt2")),
        ("tokenizer.ggml.pre", W::Str("smollm")),
        (
            "tokenizer.ggml.tokens",
            W::Strs(tokens.iter().map(|s| s.to_string()).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            W::I32s(vec![3, 1, 1, 1, 1, 1, 1]),
        ),
        (
            "tokenizer.ggml.merges",
            W::Strs(vec!["a b".into(), "ab c".into()]),
        ),
        ("tokenizer.ggml.eos_token_id", W::U32(0)),
        ("misc.u8", W::Raw(0, vec![7])),
        ("misc.i16", W::Raw(3, (-5i16).to_le_bytes().to_vec())),
        ("misc.u64", W::Raw(10, 9u64.to_le_bytes().to_vec())),
        ("misc.f64", W::Raw(12, 2.5f64.to_le_bytes().to_vec())),
    ];
    let q_rows: Vec<u8> = (0..8u8).flat_map(|r| [r; 34]).collect();
    let k_rows: Vec<u8> = (0..4u8).flat_map(|r| [r; 34]).collect();
    let tensors = [
        ("token_embd.weight", vec![7, 32], 8, blocks(7, 34, 1, 1)),
        ("blk.0.attn_q.weight", vec![8, 32], 8, q_rows),
        ("blk.0.attn_k.weight", vec![4, 32], 8, k_rows),
        ("blk.0.ffn_up.weight", vec![2, 64], 3, blocks(4, 20, 2, 2)),
        ("blk.0.ffn_down.weight", vec![1, 32], 2, blocks(1, 18, 1, 3)),
        ("blk.0.attn_norm.weight", vec![8], 0, f32_bytes(&[1.5; 8])),
        (
            "output_norm.weight",
            vec![8],
            1,
            [f16::from_f32(0.5).to_le_bytes(); 8].concat(),
        ),
    ];
    gguf(&meta, &tensors, align)
}

#[test]
fn gguf_round_trip_keeps_blocks_bit_exact() {
    for align in [32, 64] {
        let src = tiny_llama(align);
        let parsed = Gguf::parse(&src).unwrap();
        assert_eq!(parsed.get("misc.i16"), Some(&MetaValue::I16(-5)));
        assert_eq!(
            parsed.get("misc.f64").and_then(MetaValue::as_f64),
            Some(2.5)
        );
        let imported = import_gguf(&src, "tiny", Target::Keep).unwrap();
        assert!(imported.skipped.is_empty(), "{:?}", imported.skipped);
        let file = ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap();
        assert_eq!(&*file.info().arch, "llama");
        for t in &parsed.tensors {
            let got = file.tensor(&t.name).unwrap();
            assert_eq!(got.shape, t.shape.as_slice(), "{}", t.name);
            assert_eq!(Some(got.dtype), t.ggml_type.pupil_dtype());
            if !t.name.contains("attn_q") && !t.name.contains("attn_k") {
                assert_eq!(got.bytes, parsed.data(t), "{} bit-exact", t.name);
            }
        }
        let config: HashMap<String, ConfigValue> = file
            .info()
            .config
            .iter()
            .map(|e| (e.key.to_string(), e.value.clone()))
            .collect();
        assert_eq!(config["hidden_size"], ConfigValue::Int(8));
        assert_eq!(config["kv_heads"], ConfigValue::Int(1));
        assert_eq!(config["rope_base"], ConfigValue::Float(100_000.0));
        assert_eq!(config["tied_embeddings"], ConfigValue::Int(1));
        assert_eq!(
            file.tensor("output_norm.weight").unwrap().to_f32(),
            vec![0.5; 8]
        );
    }
}

/// Query rows 0..8 in llama.cpp order (2 heads of 4: rows 0,1,2,3 hold original rows
/// 0,2,1,3) come back in Hugging Face order, rows moved whole.
#[test]
fn gguf_llama_query_and_key_rows_are_unpermuted() {
    let imported = import_gguf(&tiny_llama(32), "tiny", Target::Keep).unwrap();
    let file = ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap();
    let first_bytes = |name: &str| -> Vec<u8> {
        file.tensor(name)
            .unwrap()
            .bytes
            .chunks(34)
            .map(|r| r[0])
            .collect()
    };
    assert_eq!(first_bytes("blk.0.attn_q.weight"), [0, 2, 1, 3, 4, 6, 5, 7]);
    assert_eq!(first_bytes("blk.0.attn_k.weight"), [0, 2, 1, 3]);
}

/// A Llama query or key projection with a zero dimension is refused with an error, not a
/// division by zero or a zero-sized chunk.
#[test]
fn gguf_llama_attention_with_a_zero_dimension_is_an_error() {
    let meta = [
        ("general.architecture", W::Str("llama")),
        ("llama.attention.head_count", W::U32(2)),
    ];
    for (name, shape) in [
        ("blk.0.attn_q.weight", vec![8, 0]),
        ("blk.0.attn_q.weight", vec![0, 32]),
        ("blk.0.attn_k.weight", vec![0, 0]),
    ] {
        let src = gguf(&meta, &[(name, shape.clone(), 0, Vec::new())], 32);
        assert!(Gguf::parse(&src).is_ok(), "{shape:?} parses");
        match import_gguf(&src, "t", Target::Keep) {
            Err(ImportError::Gguf(why)) => assert!(why.contains("no elements"), "{why}"),
            other => panic!("{name} {shape:?}: {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn gguf_targets_convert_floats() {
    let src = tiny_llama(32);
    let f32s = import_gguf(&src, "t", Target::F32)
        .unwrap()
        .builder
        .to_bytes()
        .unwrap();
    let f32s = ModelFile::from_bytes(f32s).unwrap();
    let keep = import_gguf(&src, "t", Target::Keep)
        .unwrap()
        .builder
        .to_bytes()
        .unwrap();
    let keep = ModelFile::from_bytes(keep).unwrap();
    for t in f32s.tensors().filter(|t| t.name.ends_with(".weight")) {
        assert_eq!(t.dtype, DType::F32, "{}", t.name);
        assert_eq!(
            t.to_f32(),
            keep.tensor(t.name).unwrap().to_f32(),
            "{}",
            t.name
        );
    }
    let f16s = import_gguf(&src, "t", Target::F16)
        .unwrap()
        .builder
        .to_bytes()
        .unwrap();
    let f16s = ModelFile::from_bytes(f16s).unwrap();
    assert_eq!(f16s.tensor("token_embd.weight").unwrap().dtype, DType::F16);
    assert_eq!(f16s.tensor("output_norm.weight").unwrap().dtype, DType::F32);
}

#[test]
fn gguf_tokenizer_is_built_and_loads() {
    let imported = import_gguf(&tiny_llama(32), "tiny", Target::Keep).unwrap();
    let file = ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap();
    let json = file.tensor(TOKENIZER_TENSOR).unwrap().bytes;
    let tok = tokenizers::Tokenizer::from_bytes(json).unwrap();
    let enc = tok.encode("abcd<|endoftext|>", false).unwrap();
    assert_eq!(enc.get_ids(), [6, 4, 0]);
}

/// Every truncation of a valid file, and files with hostile counts, lengths, types, ranks,
/// alignments and offsets, are rejected with errors (never a panic or a huge allocation).
#[test]
fn gguf_rejects_truncated_and_hostile_files() {
    let src = tiny_llama(32);
    for len in (0..src.len()).step_by(7) {
        assert!(Gguf::parse(&src[..len]).is_err(), "prefix of {len} bytes");
    }
    let mut bad_magic = src.clone();
    bad_magic[0] = b'X';
    assert!(matches!(Gguf::parse(&bad_magic), Err(ImportError::Gguf(_))));
    let mut bad_version = src.clone();
    bad_version[4] = 9;
    assert!(matches!(
        Gguf::parse(&bad_version),
        Err(ImportError::Gguf(_))
    ));
    let mut huge_count = src.clone();
    huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        Gguf::parse(&huge_count),
        Err(ImportError::Truncated { .. })
    ));
    let mut huge_meta = src.clone();
    huge_meta[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(Gguf::parse(&huge_meta).is_err());
    let mut huge_key = src.clone();
    huge_key[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        Gguf::parse(&huge_key),
        Err(ImportError::Truncated { .. })
    ));
    let mut bad_align = src.clone();
    let at = find(&bad_align, b"general.alignment") + 17 + 4;
    bad_align[at..at + 4].copy_from_slice(&24u32.to_le_bytes());
    assert!(matches!(Gguf::parse(&bad_align), Err(ImportError::Gguf(_))));
    let tensor = |ty: u32, shape: Vec<u64>, offset: u64| {
        let mut f = gguf(&[], &[("t", shape, ty, vec![0; 64])], 32);
        if offset > 0 {
            let at = find(&f, b"t") + 1 + 4 + 8 + 4;
            f[at..at + 8].copy_from_slice(&offset.to_le_bytes());
        }
        f
    };
    assert!(Gguf::parse(&tensor(0, vec![16], 0)).is_ok());
    assert!(
        Gguf::parse(&tensor(0, vec![17], 0)).is_err(),
        "past the end"
    );
    assert!(
        Gguf::parse(&tensor(0, vec![16], 32)).is_err(),
        "offset past the end"
    );
    assert!(
        Gguf::parse(&tensor(0, vec![16], 3)).is_err(),
        "unaligned offset"
    );
    assert!(
        Gguf::parse(&tensor(0, vec![u64::MAX, 2], 0)).is_err(),
        "overflowing shape"
    );
    assert!(
        Gguf::parse(&tensor(8, vec![16], 0)).is_err(),
        "partial Q8_0 block"
    );
    assert!(
        Gguf::parse(&tensor(99, vec![16], 0)).is_err(),
        "unknown type"
    );
    assert!(
        Gguf::parse(&tensor(0, vec![1, 1, 1, 1, 16], 0)).is_err(),
        "rank 5"
    );
    // Q2_K parses (its extent is known) but is not imported; Q4_K is, bit for bit.
    let q2k = gguf(
        &[("general.architecture", W::Str("llama"))],
        &[("t", vec![256], 10, vec![0; 84])],
        32,
    );
    assert!(Gguf::parse(&q2k).is_ok());
    assert!(matches!(
        import_gguf(&q2k, "t", Target::Keep),
        Err(ImportError::UnsupportedType { .. })
    ));
    let q4k_bytes: Vec<u8> = (0..144u8).collect();
    let q4k = gguf(
        &[("general.architecture", W::Str("llama"))],
        &[("t", vec![256], 12, q4k_bytes.clone())],
        32,
    );
    let imported = import_gguf(&q4k, "t", Target::Keep).unwrap();
    let file = ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap();
    let t = file.tensor("t").unwrap();
    assert_eq!((t.dtype, t.bytes), (DType::Q4_K, &q4k_bytes[..]));
    let mut deep = b"GGUF".to_vec();
    deep.extend(3u32.to_le_bytes());
    deep.extend(0u64.to_le_bytes());
    deep.extend(1u64.to_le_bytes());
    gstr(&mut deep, "k");
    deep.extend(9u32.to_le_bytes());
    for _ in 0..8 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    deep.resize(deep.len() + 64, 0);
    assert!(matches!(Gguf::parse(&deep), Err(ImportError::Gguf(_))));
    for seed in 0..64 {
        let mut garbage = b"GGUF\x03\0\0\0".to_vec();
        garbage.extend(noise(256, seed));
        let _ = import_gguf(&garbage, "t", Target::Keep);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

/// A folder under the temp dir for one test.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pupil-import-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn safetensors_round_trip_with_side_files() {
    use ::safetensors::tensor::{serialize, Dtype, TensorView};
    let dir = scratch("st");
    let w = f32_bytes(&(0..64).map(|i| i as f32 * 0.25 - 3.0).collect::<Vec<_>>());
    let h: Vec<u8> = (0..32u16)
        .flat_map(|i| f16::from_f32(f32::from(i)).to_le_bytes())
        .collect();
    let ids: Vec<u8> = (0..4i64).flat_map(|i| i.to_le_bytes()).collect();
    let views = [
        (
            "enc.weight",
            TensorView::new(Dtype::F32, vec![2, 32], &w).unwrap(),
        ),
        (
            "enc.half",
            TensorView::new(Dtype::F16, vec![32], &h).unwrap(),
        ),
        (
            "position_ids",
            TensorView::new(Dtype::I64, vec![1, 4], &ids).unwrap(),
        ),
    ];
    let bytes = serialize(views.iter().map(|(n, v)| (*n, v.clone())), None).unwrap();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "layer_norm_eps": 1e-12}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        r#"{"max_seq_length": 256}"#,
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    let imported = import_file(&path, "st", Target::Keep).unwrap();
    assert_eq!(imported.skipped.len(), 1, "{:?}", imported.skipped);
    let file = ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap();
    assert_eq!(&*file.info().arch, "bert");
    assert_eq!(file.tensor("enc.weight").unwrap().bytes, w.as_slice());
    assert_eq!(file.tensor("enc.half").unwrap().dtype, DType::F16);
    assert_eq!(file.tensor(TOKENIZER_TENSOR).unwrap().bytes, b"{}");
    assert!(file.tensor("position_ids").is_err());
    let keys: Vec<String> = file
        .info()
        .config
        .iter()
        .map(|e| e.key.to_string())
        .collect();
    assert_eq!(keys, ["hidden_size", "layers", "max_seq_len", "norm_eps"]);
    let f16s = import_file(&path, "st", Target::F16)
        .unwrap()
        .builder
        .to_bytes()
        .unwrap();
    let f16s = ModelFile::from_bytes(f16s).unwrap();
    assert_eq!(f16s.tensor("enc.weight").unwrap().dtype, DType::F16);

    for len in [0, 7, 8, 20, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        assert!(
            import_file(&path, "st", Target::Keep).is_err(),
            "prefix of {len}"
        );
    }
    std::fs::write(&path, noise(300, 5)).unwrap();
    assert!(import_file(&path, "st", Target::Keep).is_err());
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(dir.join("config.json"), b"{not json").unwrap();
    assert!(matches!(
        import_file(&path, "st", Target::Keep),
        Err(ImportError::SideFile { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
