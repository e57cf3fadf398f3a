//! Importing the real models: all-MiniLM-L6-v2 (safetensors) and SmolLM2-135M-Instruct
//! (Q4_1 GGUF), fetched into the cache first when missing. The SmolLM2 token ids were made
//! by transformers 5.24 `AutoTokenizer.from_pretrained(dir, gguf_file=...)` (the reference
//! framework's tokenizer for GGUF files) with `HF_HUB_OFFLINE=1`.

use std::collections::HashMap;
use std::path::PathBuf;

use pupil::format::{ConfigValue, DType, ModelFile};
use pupil::import::{import_file, Gguf, Target, TOKENIZER_TENSOR};
use pupil::models::tokenizer::TextTokenizer;

#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

/// The cached file `name/file`, fetched when missing.
fn cached(name: &str, file: &str) -> PathBuf {
    fetch::cached(name, file).unwrap_or_else(|e| panic!("fetching {name}: {e}"))
}

/// The model's config as a map.
fn config(file: &ModelFile) -> HashMap<String, ConfigValue> {
    file.info()
        .config
        .iter()
        .map(|e| (e.key.to_string(), e.value.clone()))
        .collect()
}

#[test]
fn minilm_safetensors_imports_with_config_and_tokenizer() {
    let path = cached("minilm", "model.safetensors");
    let imported = import_file(&path, "minilm", Target::Keep).unwrap();
    assert_eq!(imported.skipped.len(), 1);
    assert!(imported.skipped[0].starts_with("embeddings.position_ids"));
    let file = ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap();
    assert_eq!(file.tensors().count(), 104, "103 weights and the tokenizer");
    let c = config(&file);
    for (key, want) in [
        ("hidden_size", 384),
        ("layers", 6),
        ("heads", 12),
        ("ffn_size", 1536),
        ("vocab_size", 30522),
        ("max_seq_len", 256),
    ] {
        assert_eq!(c[key], ConfigValue::Int(want), "{key}");
    }
    assert_eq!(c["norm_eps"], ConfigValue::Float(1e-12));
    let words = file.tensor("embeddings.word_embeddings.weight").unwrap();
    assert_eq!(
        (words.dtype, words.shape),
        (DType::F32, &[30522u64, 384][..])
    );
    let tok = TextTokenizer::from_model(&file, Some(256)).unwrap();
    assert_eq!(tok.encode("Hello world").unwrap(), [101, 7592, 2088, 102]);
}

#[test]
fn smollm2_gguf_keeps_quantized_blocks_and_builds_its_tokenizer() {
    let path = cached("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let gguf = Gguf::parse(&bytes).unwrap();
    let imported = import_file(&path, "smollm2", Target::Keep).unwrap();
    assert!(imported.skipped.is_empty(), "{:?}", imported.skipped);
    let file = ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap();
    let c = config(&file);
    for (key, want) in [
        ("hidden_size", 576),
        ("layers", 30),
        ("heads", 9),
        ("kv_heads", 3),
        ("ffn_size", 1536),
        ("vocab_size", 49152),
        ("tied_embeddings", 1),
        ("eos_id", 2),
    ] {
        assert_eq!(c[key], ConfigValue::Int(want), "{key}");
    }
    assert_eq!(c["rope_base"], ConfigValue::Float(1e5));
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.dtype, embd.shape),
        (DType::Q8_0, &[49152u64, 576][..])
    );
    let mut q4_1 = 0;
    for t in &gguf.tensors {
        let got = file.tensor(&t.name).unwrap();
        q4_1 += usize::from(got.dtype == DType::Q4_1);
        if t.name.contains("attn_q") || t.name.contains("attn_k") {
            let mut rows: Vec<&[u8]> = gguf.data(t).chunks(t.shape[1] as usize / 32 * 20).collect();
            let mut back: Vec<&[u8]> = got.bytes.chunks(t.shape[1] as usize / 32 * 20).collect();
            rows.sort();
            back.sort();
            assert_eq!(rows, back, "{}: the same rows, reordered", t.name);
        } else {
            assert_eq!(got.bytes, gguf.data(t), "{} bit-exact", t.name);
        }
    }
    assert_eq!(q4_1, 30 * 7);
    assert!(file.tensor(TOKENIZER_TENSOR).is_ok());
    let tok = TextTokenizer::from_model(&file, None).unwrap();
    let cases: [(&str, &[u32]); 6] = [
        ("Hello world", &[19556, 905]),
        (
            "The year 2024 had 366 days.",
            &[
                504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 30,
            ],
        ),
        (
            "Crème brûlée, naïve café — 東京 😀",
            &[
                25711, 11180, 1558, 1156, 41307, 92, 20174, 28, 15486, 46494, 37366, 1841, 17097,
                247, 126, 16736, 122, 40303, 218,
            ],
        ),
        (
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
            &[1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198],
        ),
        (
            "  spaces   and\ttabs\n\nnewlines",
            &[216, 5600, 256, 284, 197, 100, 7366, 198, 198, 2241, 5110],
        ),
        ("don't won't it's", &[12420, 982, 3763, 982, 357, 506]),
    ];
    for (text, want) in cases {
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
    }
}

/// A Hugging Face folder with the checkpoint in two shards and its
/// `model.safetensors.index.json` imports to the same model as the single file.
#[test]
fn a_sharded_model_folder_imports_like_the_single_file() {
    use pupil::import::import_path;
    use safetensors::tensor::{serialize, TensorView};

    let single = cached("minilm", "model.safetensors");
    let src = single.parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for side in ["config.json", "tokenizer.json", "sentence_bert_config.json"] {
        std::fs::copy(src.join(side), dir.path().join(side)).unwrap();
    }
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::copy(
        src.join("1_Pooling/config.json"),
        dir.path().join("1_Pooling/config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(&single).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView<'_>)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        std::fs::write(dir.path().join(&file), serialize(views, None).unwrap()).unwrap();
        for n in part {
            weight_map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let from_folder = import_path(dir.path(), "minilm", Target::Keep).unwrap();
    let from_file = import_file(&single, "minilm", Target::Keep).unwrap();
    assert_eq!(from_folder.skipped, from_file.skipped);
    assert_eq!(
        from_folder.builder.to_bytes().unwrap(),
        from_file.builder.to_bytes().unwrap(),
        "the same model, bit for bit"
    );
}
