//! Writes the seed corpora of the fuzz targets into `seeds/<target>/`: small valid inputs
//! built with pupil's own encoders, so the fuzzer starts from files that parse.
//!
//!     cargo run --manifest-path tests/fuzz/Cargo.toml --bin seeds

use std::fs;
use std::path::Path;

use pupil_format::ModelBuilder;
use pupil_sync::client::sign_envelope;
use pupil_sync::KeyPair;
use pupil_wire::update::{EncodedDelta, UpdateDraft};
use pupil_wire::Metric;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    fs::create_dir_all(&dir).expect("the seeds directory");
    fs::write(dir.join(name), bytes).expect("a seed");
}

/// A small model: f32, f16 and i8 tensors and a config; `weight` fills its matrix.
fn model(weight: f32) -> Vec<u8> {
    let mut b = ModelBuilder::new("seed", "mlp").expect("a builder");
    b.config("classes", pupil_format::ConfigValue::Int(3))
        .expect("a config entry");
    b.add_f32("fc.weight", &[3, 4], &[weight; 12]).expect("f32");
    b.add_f32_as(
        "fc.bias",
        pupil_format::DType::F16,
        &[3],
        &[0.25, -1.0, 2.0],
    )
    .expect("f16");
    b.add_tensor("ids", pupil_format::DType::I8, &[4], vec![1, 2, 3, 4])
        .expect("i8");
    b.to_bytes().expect("the model")
}

/// A signed update with one delta of each encoding.
fn update() -> Vec<u8> {
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.01 - 0.05).collect();
    let encoded = [
        EncodedDelta::f16("a", &[12], &values).expect("f16"),
        EncodedDelta::int8("b", &[3, 4], &values).expect("int8"),
        EncodedDelta::top_k("c", &[12], &values, None, 4)
            .expect("top-k")
            .delta,
    ];
    let views: Vec<_> = encoded.iter().map(EncodedDelta::as_delta).collect();
    let body = UpdateDraft {
        model_id: "seed",
        base_version: [7; 32],
        device_id: "phone",
        seq: 3,
        num_examples: 10,
        metrics: &[Metric {
            name: "loss",
            value: 0.5,
        }],
        deltas: &views,
    }
    .encode()
    .expect("the body");
    sign_envelope(&KeyPair::from_seed([1; 32]), &body).expect("the envelope")
}

fn gguf_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A tiny Llama-like GGUF v3: settings, a token list and two tensors (F32 and Q8_0).
fn gguf() -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(2u64.to_le_bytes()); // tensors
    let ints = [
        ("llama.embedding_length", 32u32),
        ("llama.block_count", 1),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 1),
        ("llama.feed_forward_length", 64),
        ("llama.context_length", 128),
    ];
    out.extend((ints.len() as u64 + 2).to_le_bytes()); // metadata entries
    gguf_string(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    gguf_string(&mut out, "llama");
    for (k, v) in ints {
        gguf_string(&mut out, k);
        out.extend(4u32.to_le_bytes());
        out.extend(v.to_le_bytes());
    }
    gguf_string(&mut out, "tokenizer.ggml.tokens");
    out.extend(9u32.to_le_bytes());
    out.extend(8u32.to_le_bytes());
    out.extend(4u64.to_le_bytes());
    for t in ["a", "b", "c", "d"] {
        gguf_string(&mut out, t);
    }
    // token_embd: [4, 32] F32; output: [4, 32] Q8_0 (4 blocks of 34 bytes).
    let tensors = [
        ("token_embd.weight", 0u32, 4 * 32 * 4),
        ("output.weight", 8, 4 * 34),
    ];
    let mut offset = 0u64;
    for (name, ty, len) in tensors {
        gguf_string(&mut out, name);
        out.extend(2u32.to_le_bytes());
        out.extend(32u64.to_le_bytes());
        out.extend(4u64.to_le_bytes());
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset = (offset + len as u64).next_multiple_of(32);
    }
    out.resize(out.len().next_multiple_of(32), 0);
    let data = out.len();
    out.extend((0..4 * 32).flat_map(|i| (i as f32 * 0.01).to_le_bytes()));
    out.resize(data + 512, 0);
    for block in 0..4u8 {
        out.extend(half_bits(0.01 * f32::from(block + 1)));
        out.extend((0..32).map(|i| (i as u8).wrapping_mul(block + 3)));
    }
    out
}

/// An f16's little-endian bytes.
fn half_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// A safetensors file: F32, F16 and I64 tensors.
fn safetensors() -> Vec<u8> {
    let header = br#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"h":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},"position_ids":{"dtype":"I64","shape":[1],"data_offsets":[20,28]}}"#;
    let mut header = header.to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(&header);
    out.extend([1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()));
    out.extend(half_bits(0.5));
    out.extend(half_bits(-2.0));
    out.extend(0i64.to_le_bytes());
    out
}

/// A request seed: method byte, path byte, then path suffix, headers and body.
fn request(method: u8, path: u8, head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = vec![method, path];
    out.extend(head.as_bytes());
    out.extend(b"\n\n");
    out.extend(body);
    out
}

fn main() {
    let base = model(0.5);
    write("pupil_file", "model.pupil", &base);
    let update = update();
    write("update_decode", "update.bin", &update);
    write("gguf_import", "tiny-llama.gguf", &gguf());
    write("safetensors_import", "tiny.safetensors", &safetensors());

    let target = model(0.75);
    let delta = pupil_sync::delta::encode(&base, &target).expect("a delta");
    let mut seed = (base.len() as u32).to_le_bytes().to_vec();
    seed.extend(&base);
    seed.extend(&delta);
    write("delta_apply", "one-tensor-changed.bin", &seed);

    // Methods: 0 GET, 1 POST, 2 PUT; paths as in fuzz_targets/server_request.rs.
    write("server_request", "latest", &request(0, 5, "", b""));
    write("server_request", "challenge", &request(0, 0, "", b""));
    let register = br#"{"device_id":"d","public_key":"00","challenge":{},"signature":"00"}"#;
    let json = "\ncontent-type: application/json";
    write("server_request", "register", &request(1, 1, json, register));
    let bytes = "\ncontent-type: application/octet-stream";
    write("server_request", "update", &request(1, 2, bytes, &update));
    let open = br#"{"seq":1,"length":100,"sha256":"00"}"#;
    write("server_request", "upload", &request(1, 3, json, open));
    write(
        "server_request",
        "chunk",
        &request(2, 4, &format!("abc?offset=0{bytes}"), b"xyz"),
    );
    write(
        "server_request",
        "rollback",
        &request(1, 9, "\nx-pupil-admin: fuzz-admin", b"{\"version\":1}"),
    );
    println!("seeds written under {}/seeds", env!("CARGO_MANIFEST_DIR"));
}
