//! SmolLM2-135M-Instruct imported from its Q4_1 GGUF agrees with transformers loading the
//! same GGUF (tests/reference/smollm2.json, made by tests/reference/smollm2.py): identical
//! prompt token ids, identical 30 greedy new tokens (prefill, then one-token decode steps
//! through the KV cache), and the top-5 logits at the prompt's last position and after the
//! 30 new tokens within 1e-2. Every prompt runs in full on the CPU reference backend. The GPU
//! test runs the first prompt's prefill and 4 greedy tokens (3 decode steps through the
//! cache) only: on lavapipe with 2 cores a decode step of this model takes about 10 s.
//!
//! The same checks run on llama.cpp's requantizations of that file (`models/fetch kquants`:
//! Q4_K_M, Q5_K_M and Q6_K, whose 576-wide rows fall back to Q5_0, Q5_1 and Q8_0) against
//! transformers loading each of them (tests/reference/smollm2-*.json): every prompt on the
//! CPU, and on the GPU the Q4_K_M file's first prompt for 2 tokens.

use std::collections::HashMap;
use std::sync::Mutex;

use pupil::format::ModelFile;
use pupil::import::{import_file, Target};
use pupil::models::llama::sample::argmax;
use pupil::models::llama::CausalLm;
use pupil::Backend;
use serde_json::Value;

#[path = "../runtime/pupil-cli/src/fetch.rs"]
mod fetch;

/// Greatest allowed |pupil - transformers| of a logit.
const LOGIT_TOLERANCE: f32 = 1e-2;

/// A GGUF with its reference generations.
struct Reference {
    /// The `models/fetch` name whose folder holds the file.
    fetch: &'static str,
    /// The file name.
    file: &'static str,
    /// The reference JSON.
    json: &'static str,
}

/// The shipped Q4_1 file.
const Q4_1: Reference = Reference {
    fetch: "smollm2",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    json: include_str!("reference/smollm2.json"),
};

/// llama.cpp's k-quant requantizations of it.
const K_QUANTS: [Reference; 3] = [
    Reference {
        fetch: "kquants",
        file: "SmolLM2-135M-Instruct.Q4_K_M.gguf",
        json: include_str!("reference/smollm2-q4_k_m.json"),
    },
    Reference {
        fetch: "kquants",
        file: "SmolLM2-135M-Instruct.Q5_K_M.gguf",
        json: include_str!("reference/smollm2-q5_k_m.json"),
    },
    Reference {
        fetch: "kquants",
        file: "SmolLM2-135M-Instruct.Q6_K.gguf",
        json: include_str!("reference/smollm2-q6_k.json"),
    },
];

/// `r`'s model, converted from the cached GGUF (fetched first if missing) once per test run.
fn model_of(r: &Reference) -> &'static ModelFile {
    static MODELS: Mutex<Option<HashMap<&'static str, &'static ModelFile>>> = Mutex::new(None);
    let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
    models
        .get_or_insert_with(HashMap::new)
        .entry(r.file)
        .or_insert_with(|| {
            let path = fetch::cached(r.fetch, r.file).expect("fetching SmolLM2");
            let imported = import_file(&path, "smollm2", Target::Keep).expect("importing SmolLM2");
            Box::leak(Box::new(
                ModelFile::from_bytes(imported.builder.to_bytes().unwrap()).unwrap(),
            ))
        })
}

/// The shipped Q4_1 model.
fn model() -> &'static ModelFile {
    model_of(&Q4_1)
}

/// Top-5 token ids and logits.
type Top5 = Vec<(usize, f32)>;

/// One reference prompt.
struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    prompt_top5: Top5,
    final_top5: Top5,
}

fn reference(r: &Reference) -> Vec<Case> {
    let json: Value = serde_json::from_str(r.json).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let top5 = |v: &Value| -> Top5 {
        ids(&v["ids"])
            .into_iter()
            .zip(v["values"].as_array().unwrap())
            .map(|(i, x)| (i as usize, x.as_f64().unwrap() as f32))
            .collect()
    };
    json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Case {
            prompt: p["prompt"].as_str().unwrap().to_owned(),
            prompt_ids: ids(&p["prompt_ids"]),
            greedy_ids: ids(&p["greedy_ids"]),
            prompt_top5: top5(&p["prompt_top5"]),
            final_top5: top5(&p["final_top5"]),
        })
        .collect()
}

/// The largest |logit - reference| over the reference's top 5; the argmax must agree too.
fn logit_diff(what: &str, logits: &[f32], want: &Top5) -> f32 {
    assert_eq!(
        argmax(logits).unwrap() as usize,
        want[0].0,
        "{what}: argmax"
    );
    want.iter()
        .map(|&(id, v)| (logits[id] - v).abs())
        .fold(0.0, f32::max)
}

/// Runs the first `count` reference prompts of `r` on `backend` for up to `steps` greedy
/// tokens and checks them (the final logits only when every reference token ran); returns
/// the worst logit difference.
fn check(r: &Reference, backend: &Backend, count: usize, steps: usize) -> f32 {
    let lm = CausalLm::load(model_of(r), backend).unwrap();
    let mut worst = 0.0f32;
    for case in reference(r).iter().take(count) {
        let full = case.greedy_ids.len();
        let n = steps.min(full);
        let mut cache = lm.new_cache(case.prompt_ids.len() + n).unwrap();
        let mut logits = lm.step(&mut cache, &case.prompt_ids).unwrap();
        let first = logit_diff(&case.prompt, &logits, &case.prompt_top5);
        let mut got = Vec::with_capacity(n);
        for i in 0..n {
            let next = argmax(&logits).unwrap();
            got.push(next);
            if i + 1 < n || n == full {
                logits = lm.step(&mut cache, &[next]).unwrap();
            }
        }
        assert_eq!(got, case.greedy_ids[..n], "{:?}: greedy ids", case.prompt);
        let last = if n == full {
            logit_diff(&case.prompt, &logits, &case.final_top5)
        } else {
            0.0
        };
        let after = if n == full {
            format!(", after {n} tokens {last:.1e}")
        } else {
            String::new()
        };
        eprintln!(
            "{} {}: {:?}: {n} greedy ids equal, max |logit diff| prompt {first:.1e}{after}",
            r.file,
            backend.describe(),
            case.prompt
        );
        assert!(first <= LOGIT_TOLERANCE && last <= LOGIT_TOLERANCE);
        worst = worst.max(first).max(last);
    }
    worst
}

#[test]
fn prompt_token_ids_match_transformers() {
    let lm = CausalLm::load(model(), &Backend::Cpu).unwrap();
    for case in reference(&Q4_1) {
        let got = lm.tokenizer().encode(&case.prompt).unwrap();
        assert_eq!(got, case.prompt_ids, "{:?}", case.prompt);
    }
}

#[test]
fn cpu_greedy_generation_matches_transformers() {
    check(&Q4_1, &Backend::Cpu, usize::MAX, usize::MAX);
}

#[test]
fn cpu_greedy_generation_of_k_quants_matches_transformers() {
    for r in &K_QUANTS {
        check(r, &Backend::Cpu, usize::MAX, usize::MAX);
    }
}

/// `PUPIL_ADAPTER` or the best GPU; fails (never falls back to the CPU) without one.
fn gpu() -> Backend {
    let wanted = std::env::var("PUPIL_ADAPTER")
        .ok()
        .filter(|w| !w.eq_ignore_ascii_case("cpu"));
    Backend::open(wanted.as_deref()).unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
}

#[test]
fn gpu_greedy_generation_matches_transformers() {
    check(&Q4_1, &gpu(), 1, 4);
}

/// The k-quant and 5-bit kernels on the GPU: the Q4_K_M file (Q4_K, Q6_K, Q5_0, Q8_0).
#[test]
fn gpu_greedy_generation_of_q4_k_m_matches_transformers() {
    check(&K_QUANTS[0], &gpu(), 1, 2);
}

/// `n` greedy tokens of `lm` after `prompt`, through the KV cache.
fn greedy(lm: &CausalLm, prompt: &[u32], n: usize) -> Vec<u64> {
    let mut cache = lm.new_cache(prompt.len() + n).unwrap();
    let mut logits = lm.step(&mut cache, prompt).unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits).unwrap();
        ids.push(u64::from(next));
        logits = lm.step(&mut cache, &[next]).unwrap();
    }
    ids
}

/// `pupil generate --lora` runs the base with the adapters the file holds: its greedy tokens
/// are the library's with the same adapters, and adapters over another base are refused.
#[test]
fn generate_with_lora_runs_base_plus_adapters() {
    use pupil::models::llama::{LlamaLora, Target as Proj};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.pupil");
    std::fs::write(&base, model().as_bytes()).unwrap();
    let backend = Backend::Cpu;
    let mut lm = CausalLm::load(model(), &backend).unwrap();
    let cfg = lm.config().clone();
    let lora = LlamaLora::new(&cfg, &[Proj::Q, Proj::V], 2, 16.0, &backend, 1).unwrap();
    for (i, info) in lora.params().infos().iter().enumerate() {
        let id = lora.params().find(&info.name).unwrap();
        let n = lora.params().value(id).unwrap().numel();
        let values: Vec<f32> = (0..n)
            .map(|j| (((j * 7919 + i * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 2.0)
            .collect();
        lora.params().set(id, &values).unwrap();
    }
    let adapters = dir.path().join("lora.pupil");
    lora.to_builder(model())
        .unwrap()
        .write_atomic(&adapters)
        .unwrap();
    lm.model_mut().set_lora(Some(lora));
    let prompt = lm.tokenizer().encode("The capital of France is").unwrap();
    let want = greedy(&lm, &prompt, 4);
    // The adapters matter: the base alone says something else.
    let base_ids = greedy(&CausalLm::load(model(), &backend).unwrap(), &prompt, 4);
    assert_ne!(base_ids, want, "the test adapters change nothing");

    let generate = |lora: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pupil"))
            .args([
                "generate",
                "--prompt",
                "The capital of France is",
                "--max-tokens",
                "4",
            ])
            .args(["--json", "--adapter", "cpu", "--model"])
            .arg(&base)
            .arg("--lora")
            .arg(lora)
            .output()
            .unwrap()
    };
    let out = generate(&adapters);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<u64> = json["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(got, want);

    // Adapters made over another base (here the MNIST student) are refused, saying why.
    let student = ModelFile::open(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-student.pupil"),
    )
    .unwrap();
    let other = dir.path().join("other.pupil");
    let lora = LlamaLora::new(&cfg, &[Proj::Q], 2, 4.0, &backend, 1).unwrap();
    lora.to_builder(&student)
        .unwrap()
        .write_atomic(&other)
        .unwrap();
    let out = generate(&other);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trained over the base model"), "{err}");
}
