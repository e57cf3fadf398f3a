//! all-MiniLM-L6-v2 imported from its safetensors checkpoint agrees with
//! sentence-transformers (tests/reference/minilm.json, made by tests/reference/minilm.py):
//! identical token ids, and per input cosine >= 0.99999 and max |diff| <= 1e-4, on the CPU
//! reference backend and on the GPU (lavapipe in CI), with inputs batched and padded.

use std::sync::OnceLock;

use pupil::format::ModelFile;
use pupil::import::{import_file, Target};
use pupil::models::bert::SentenceEncoder;
use pupil::Backend;
use serde_json::Value;

#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

/// Inputs per batch: the reference inputs mix lengths, so batches carry padding.
const BATCH: usize = 4;

/// The model, converted from the cached checkpoint (fetched first if missing).
fn model() -> &'static ModelFile {
    static MODEL: OnceLock<ModelFile> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = fetch::cached("minilm", "model.safetensors").expect("fetching MiniLM");
        let imported = import_file(&path, "minilm", Target::Keep).expect("importing MiniLM");
        ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap()
    })
}

/// The reference inputs: text, token ids, embedding.
fn reference() -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let text = include_str!("reference/minilm.json");
    let json: Value = serde_json::from_str(text).unwrap();
    json["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let nums = |k: &str| {
                item[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
            };
            (
                item["text"].as_str().unwrap().to_owned(),
                nums("ids").map(|v| v as u32).collect(),
                nums("embedding").map(|v| v as f32).collect(),
            )
        })
        .collect()
}

/// Embeds every reference input on `backend` and checks it; returns the worst cosine and
/// max |diff| over all inputs.
fn check(backend: &Backend) -> (f64, f32) {
    let encoder = SentenceEncoder::load(model(), backend).unwrap();
    let reference = reference();
    assert!(reference.len() >= 10);
    let mut worst = (1.0f64, 0.0f32);
    for chunk in reference.chunks(BATCH) {
        let texts: Vec<&str> = chunk.iter().map(|r| r.0.as_str()).collect();
        let got = encoder.embed(&texts).unwrap();
        for ((text, _, want), got) in chunk.iter().zip(got) {
            assert_eq!(got.len(), want.len(), "{text:?}: width");
            let dot: f64 = got
                .iter()
                .zip(want)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let cosine = dot / (norm(&got) * norm(want));
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let short: String = text.chars().take(40).collect();
            eprintln!(
                "{}: 1 - cos {:.1e}, max|diff| {diff:.1e}, {short:?}",
                backend.describe(),
                1.0 - cosine
            );
            assert!(cosine >= 0.99999, "{text:?}: cosine {cosine}");
            assert!(diff <= 1e-4, "{text:?}: max |diff| {diff}");
            worst = (worst.0.min(cosine), worst.1.max(diff));
        }
    }
    eprintln!(
        "{}: worst 1 - cos {:.1e}, worst max|diff| {:.1e}",
        backend.describe(),
        1.0 - worst.0,
        worst.1
    );
    worst
}

#[test]
fn token_ids_match_sentence_transformers() {
    let encoder = SentenceEncoder::load(model(), &Backend::Cpu).unwrap();
    for (text, want, _) in reference() {
        let got = encoder.tokenize(&[text.as_str()]).unwrap().remove(0);
        assert_eq!(got, want, "{text:?}");
    }
}

#[test]
fn cpu_embeddings_match_sentence_transformers() {
    check(&Backend::Cpu);
}

/// Runs on `PUPIL_ADAPTER` or the best GPU; fails (never falls back to the CPU) without one.
#[test]
fn gpu_embeddings_match_sentence_transformers() {
    let wanted = std::env::var("PUPIL_ADAPTER")
        .ok()
        .filter(|w| !w.eq_ignore_ascii_case("cpu"));
    let backend = Backend::open(wanted.as_deref())
        .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
    check(&backend);
}

/// `pupil embed --model <the model's folder>`: the sentence-transformers folder as it is,
/// converted in memory, gives sentence-transformers' embeddings (same bounds).
#[test]
fn cli_embeds_from_the_model_folder_like_sentence_transformers() {
    let folder = fetch::cached("minilm", "model.safetensors")
        .expect("fetching MiniLM")
        .parent()
        .unwrap()
        .to_owned();
    let reference = reference();
    let mut args = vec![
        "embed".to_owned(),
        "--model".to_owned(),
        folder.display().to_string(),
        "--adapter".to_owned(),
        "cpu".to_owned(),
        "--json".to_owned(),
    ];
    args.extend(reference.iter().map(|r| r.0.clone()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pupil"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), reference.len());
    for (item, (text, _, want)) in got.iter().zip(&reference) {
        assert_eq!(item["text"].as_str(), Some(text.as_str()));
        let e: Vec<f32> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let diff = e
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 1e-4, "{text:?}: max |diff| {diff}");
    }
}
