//! The `.pupil` model file format: round trips, the readable manifest, and
//! rejection of truncated, corrupted and hostile files.

use pupil::format::{ConfigValue, DType, FormatError, ModelBuilder, ModelFile, ModelFileError};
use pupil_wire::{encode_file, seal, ModelView, Shape, TensorEntry, HEADER_LEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Values `0, 1, …` scaled into a smooth ramp in [-1, 1).
fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 / n as f32) * 2.0 - 1.0).collect()
}

/// A small model with every dtype, every config value kind and a parent.
fn builder() -> ModelBuilder {
    let mut b = ModelBuilder::new("mnist-mlp", "mlp").unwrap();
    b.version(3)
        .parent(Some([0xab; 32]))
        .created_by("pupil-tests")
        .unwrap()
        .config_ints("hidden", &[784, 128, 10])
        .unwrap()
        .config_str("activation", "relu")
        .unwrap()
        .config_float("dropout", 0.1)
        .unwrap()
        .config_int("classes", 10)
        .unwrap();
    b.add_f32("fc1.weight", &[2, 3], &[1.0, -2.0, 3.5, 0.25, -0.125, 8.0])
        .unwrap()
        .add_f32_as("fc1.bias", DType::F16, &[4], &[0.5, -1.25, 2.0, 0.0])
        .unwrap()
        .add_f32_as("norm.scale", DType::BF16, &[2], &[1.5, -3.0])
        .unwrap()
        .add_tensor("ids.i8", DType::I8, &[3], vec![0xff, 0x00, 0x7f])
        .unwrap()
        .add_tensor("ids.i32", DType::I32, &[1], (-70000i32).to_le_bytes())
        .unwrap()
        .add_tensor("ids.u8", DType::U8, &[2], vec![0, 255])
        .unwrap()
        .add_f32_as("q.q8", DType::Q8_0, &[2, 32], &ramp(64))
        .unwrap()
        .add_f32_as("q.q4_0", DType::Q4_0, &[2, 32], &ramp(64))
        .unwrap()
        .add_f32_as("q.q4_1", DType::Q4_1, &[64], &ramp(64))
        .unwrap();
    b
}

/// The encoded bytes of [`builder`].
fn model_bytes() -> Vec<u8> {
    builder().to_bytes().unwrap()
}

/// The wire-level error of `bytes`, expecting rejection.
fn rejection(bytes: Vec<u8>) -> FormatError {
    match ModelFile::from_bytes(bytes) {
        Err(ModelFileError::Invalid { source, .. }) => source,
        other => panic!("expected an invalid-file error, got {other:?}"),
    }
}

/// A file of `entries` over `data_len` zero bytes, sealed with a valid hash.
fn crafted(entries: &[TensorEntry<'_>], data_len: usize) -> Vec<u8> {
    let model = ModelFile::from_bytes(model_bytes()).unwrap();
    encode_file(model.info(), entries, &vec![0; data_len]).unwrap()
}

/// A table entry.
fn entry<'a>(name: &'a str, dtype: DType, shape: &[u64], offset: u64, len: u64) -> TensorEntry<'a> {
    let shape = Shape::from_slice(shape).unwrap();
    TensorEntry {
        name,
        dtype,
        shape,
        offset,
        len,
    }
}

/// The model bytes with `bytes` written at `at` and the hash recomputed, so
/// that the structural error shows rather than a hash mismatch.
fn patched(at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut file = model_bytes();
    file[at..at + bytes.len()].copy_from_slice(bytes);
    seal(&mut file).unwrap();
    file
}

/// The header's manifest length.
fn manifest_len(file: &[u8]) -> usize {
    u32::from_le_bytes(file[16..20].try_into().unwrap()) as usize
}

/// Where the data section starts.
fn data_start(file: &[u8]) -> usize {
    (HEADER_LEN + manifest_len(file)).next_multiple_of(64)
}

#[test]
fn round_trip_keeps_everything() {
    let b = builder();
    let bytes = b.to_bytes().unwrap();
    assert_eq!(bytes, b.to_bytes().unwrap(), "encoding is deterministic");
    let model = ModelFile::from_bytes(bytes.clone()).unwrap();
    let info = model.info();
    assert_eq!(info.model_id.as_str(), "mnist-mlp");
    assert_eq!(info.arch.as_str(), "mlp");
    assert_eq!(info.version, 3);
    assert_eq!(info.parent, Some([0xab; 32]));
    assert_eq!(info.created_by.as_str(), "pupil-tests");
    assert_eq!(
        info.get("hidden").and_then(ConfigValue::as_ints),
        Some(&[784i64, 128, 10][..])
    );
    assert_eq!(
        info.get("activation").and_then(ConfigValue::as_str),
        Some("relu")
    );
    assert_eq!(
        info.get("dropout").and_then(ConfigValue::as_float),
        Some(0.1)
    );
    assert_eq!(info.get("classes").and_then(ConfigValue::as_int), Some(10));
    assert_eq!(model.content_hash(), pupil_wire::content_hash(&bytes));
    assert_eq!(model.content_hash()[..], bytes[32..64]);
    assert_eq!(model.as_bytes(), &bytes[..]);

    let names: Vec<_> = model.tensors().map(|t| t.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "tensors are stored in name order");
    assert_eq!(names.len(), 9);
    for t in model.tensors() {
        let at = t.bytes.as_ptr() as usize - model.as_bytes().as_ptr() as usize;
        assert_eq!(at % 64, 0, "{} is 64-byte aligned in the file", t.name);
        assert_eq!(t.bytes.len() as u64, t.dtype.byte_len(t.shape).unwrap());
    }
}

#[test]
fn values_convert_to_f32() {
    let model = ModelFile::from_bytes(model_bytes()).unwrap();
    assert_eq!(
        model.to_f32("fc1.weight").unwrap(),
        [1.0, -2.0, 3.5, 0.25, -0.125, 8.0]
    );
    assert_eq!(model.to_f32("fc1.bias").unwrap(), [0.5, -1.25, 2.0, 0.0]);
    assert_eq!(model.to_f32("norm.scale").unwrap(), [1.5, -3.0]);
    assert_eq!(model.to_f32("ids.i8").unwrap(), [-1.0, 0.0, 127.0]);
    assert_eq!(model.to_f32("ids.i32").unwrap(), [-70000.0]);
    assert_eq!(model.to_f32("ids.u8").unwrap(), [0.0, 255.0]);
    let t = model.tensor("fc1.weight").unwrap();
    assert_eq!(
        (t.dtype, t.shape, t.elements()),
        (DType::F32, &[2u64, 3][..], 6)
    );
    let want = ramp(64);
    for (name, tolerance) in [("q.q8", 0.005), ("q.q4_0", 0.07), ("q.q4_1", 0.04)] {
        let got = model.to_f32(name).unwrap();
        assert_eq!(got.len(), 64);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= tolerance, "{name}: {g} vs {w}");
        }
    }
}

#[test]
fn block_formats_dequantize_by_their_layout() {
    // IEEE half floats, little-endian: 0.5, 2.0 and -1.0.
    let half = |x: f32| match x {
        0.5 => [0x00, 0x38],
        2.0 => [0x00, 0x40],
        _ => [0x00, 0xbc],
    };
    let mut q8 = half(0.5).to_vec();
    q8.extend((-16i8..16).map(|q| q as u8));
    let mut q4_0 = half(2.0).to_vec();
    q4_0.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    let mut q4_1 = half(0.5).to_vec();
    q4_1.extend(half(-1.0));
    q4_1.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    let mut b = ModelBuilder::new("blocks", "test").unwrap();
    b.add_tensor("q8", DType::Q8_0, &[32], q8)
        .unwrap()
        .add_tensor("q4_0", DType::Q4_0, &[32], q4_0)
        .unwrap()
        .add_tensor("q4_1", DType::Q4_1, &[32], q4_1)
        .unwrap();
    let model = ModelFile::from_bytes(b.to_bytes().unwrap()).unwrap();
    let nibbles: Vec<f32> = (0..16)
        .chain((0..16).map(|j| 15 - j))
        .map(|q| q as f32)
        .collect();
    let q8: Vec<f32> = (-16..16).map(|q| q as f32 * 0.5).collect();
    assert_eq!(model.to_f32("q8").unwrap(), q8);
    let q4_0: Vec<f32> = nibbles.iter().map(|q| (q - 8.0) * 2.0).collect();
    assert_eq!(model.to_f32("q4_0").unwrap(), q4_0);
    let q4_1: Vec<f32> = nibbles.iter().map(|q| q * 0.5 - 1.0).collect();
    assert_eq!(model.to_f32("q4_1").unwrap(), q4_1);
}

#[test]
fn write_atomic_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pupil");
    let hash = builder().write_atomic(&path).unwrap();
    let first = ModelFile::open(&path).unwrap();
    assert_eq!(first.content_hash(), hash);

    let mut child = builder();
    child.version(4).parent(Some(hash));
    let child_hash = child.write_atomic(&path).unwrap();
    let second = ModelFile::open(&path).unwrap();
    assert_eq!(second.content_hash(), child_hash);
    assert_ne!(child_hash, hash);
    assert_eq!(second.info().parent, Some(hash));
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["model.pupil"], "no temporary file is left behind");
}

#[test]
fn manifest_readable_form() {
    let model = ModelFile::from_bytes(model_bytes()).unwrap();
    insta::assert_snapshot!("manifest", model.manifest().to_string());
    assert_eq!(model.to_string(), model.manifest().to_string());
}

#[test]
fn io_and_lookup_errors_explain_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pupil");
    let err = ModelFile::open(&missing).unwrap_err();
    assert!(
        matches!(err, ModelFileError::Io { action: "read", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.pupil"), "{err}");

    let model = ModelFile::from_bytes(model_bytes()).unwrap();
    let err = model.tensor("fc2.weight").unwrap_err();
    assert_eq!(
        err.to_string(),
        "model \"mnist-mlp\" has no tensor named \"fc2.weight\"; its tensors are: fc1.bias, \
         fc1.weight, ids.i32, ids.i8, ids.u8, norm.scale, q.q4_0, q.q4_1, …"
    );
}

#[test]
fn builder_rejects_bad_input() {
    let mut b = ModelBuilder::new("m", "mlp").unwrap();
    b.add_f32("w", &[2], &[1.0, 2.0]).unwrap();
    let errors = [
        ModelBuilder::new("", "mlp").unwrap_err(),
        ModelBuilder::new(&"x".repeat(65), "mlp").unwrap_err(),
        b.add_f32("w", &[2], &[1.0, 2.0]).unwrap_err(),
        b.add_f32("x", &[3], &[1.0, 2.0]).unwrap_err(),
        b.add_tensor("x", DType::F16, &[3], vec![0; 5]).unwrap_err(),
        b.add_f32_as("x", DType::Q4_0, &[10], &[0.0; 10])
            .unwrap_err(),
        b.add_f32_as("x", DType::I8, &[2], &[1.0, 2.0]).unwrap_err(),
        b.add_f32("x", &[1; 9], &[1.0]).unwrap_err(),
        b.add_f32("", &[1], &[1.0]).unwrap_err(),
        b.config_ints("k", &[0; 17]).unwrap_err(),
        b.config_str("k", &"s".repeat(65)).unwrap_err(),
    ];
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    insta::assert_snapshot!("builder_errors", messages.join("\n"));
    assert_eq!(
        ModelFile::from_bytes(b.to_bytes().unwrap())
            .unwrap()
            .tensors()
            .count(),
        1
    );
}

#[test]
fn truncation_is_rejected() {
    let file = model_bytes();
    let start = data_start(&file);
    assert_eq!(
        rejection(file[..20].to_vec()),
        FormatError::TooShort { len: 20 }
    );
    assert!(matches!(
        rejection(file[..40].to_vec()),
        FormatError::TruncatedManifest { available: 8, .. }
    ));
    let data_len = (file.len() - start) as u64;
    assert_eq!(
        rejection(file[..file.len() - 10].to_vec()),
        FormatError::TruncatedData {
            declared: data_len,
            available: data_len - 10
        }
    );
    assert_eq!(rejection(Vec::new()), FormatError::TooShort { len: 0 });
}

#[test]
fn flipped_bytes_are_rejected() {
    let file = model_bytes();
    let flip = |at: usize| {
        let mut f = file.clone();
        f[at] ^= 0x10;
        rejection(f)
    };
    assert!(matches!(flip(0), FormatError::BadMagic { .. }));
    assert_eq!(flip(8), FormatError::UnsupportedVersion { found: 0x11 });
    assert!(
        matches!(flip(40), FormatError::HashMismatch { .. }),
        "in the stored hash"
    );
    assert!(
        matches!(
            flip(HEADER_LEN + manifest_len(&file) + 1),
            FormatError::HashMismatch { .. }
        ),
        "in padding"
    );
    assert!(
        matches!(flip(file.len() - 1), FormatError::HashMismatch { .. }),
        "in tensor data"
    );
}

#[test]
fn wrong_offsets_are_rejected() {
    let e = |entries: &[TensorEntry<'_>], data_len| rejection(crafted(entries, data_len));
    assert_eq!(
        e(&[entry("a", DType::F32, &[4], 32, 16)], 48),
        FormatError::MisalignedTensor {
            index: 0,
            offset: 32
        }
    );
    assert_eq!(
        e(
            &[
                entry("a", DType::F32, &[32], 0, 128),
                entry("b", DType::F32, &[4], 64, 16)
            ],
            128
        ),
        FormatError::OverlappingTensors {
            index: 1,
            offset: 64,
            prev_end: 128
        }
    );
    assert_eq!(
        e(&[entry("a", DType::F32, &[32], 64, 128)], 128),
        FormatError::TensorOutOfBounds {
            index: 0,
            offset: 64,
            len: 128,
            data_len: 128
        }
    );
    assert_eq!(
        e(
            &[
                entry("b", DType::F32, &[4], 0, 16),
                entry("a", DType::F32, &[4], 64, 16)
            ],
            80
        ),
        FormatError::NamesNotSorted { index: 1 }
    );
    assert_eq!(
        e(&[entry("a", DType::F32, &[4], 0, 16)], 64),
        FormatError::DataLengthMismatch {
            declared: 64,
            used: 16
        }
    );
}

#[test]
fn huge_declared_sizes_are_rejected() {
    assert_eq!(
        rejection(patched(16, &u32::MAX.to_le_bytes())),
        FormatError::ManifestTooLarge {
            len: u32::MAX.into()
        }
    );
    assert!(matches!(
        rejection(patched(24, &u64::MAX.to_le_bytes())),
        FormatError::TruncatedData {
            declared: u64::MAX,
            ..
        }
    ));
    let e = |entries: &[TensorEntry<'_>]| rejection(crafted(entries, 64));
    assert!(matches!(
        e(&[entry("a", DType::F32, &[1 << 40, 1 << 40], 0, 64)]),
        FormatError::BadShape { index: 0, .. }
    ));
    assert_eq!(
        e(&[entry("a", DType::F32, &[16], 0, u64::MAX)]),
        FormatError::LengthMismatch {
            index: 0,
            declared: u64::MAX,
            expected: 64
        }
    );
    assert_eq!(
        e(&[entry("a", DType::F32, &[1 << 60], 0, 1 << 62)]),
        FormatError::TensorOutOfBounds {
            index: 0,
            offset: 0,
            len: 1 << 62,
            data_len: 64
        }
    );
    let long = "n".repeat(129);
    assert_eq!(
        e(&[entry(&long, DType::F32, &[16], 0, 64)]),
        FormatError::BadNameLength { index: 0, len: 129 }
    );
}

#[test]
fn rejection_messages() {
    let file = model_bytes();
    let messages = [
        rejection(file[..20].to_vec()),
        rejection(file[..100].to_vec()),
        rejection(file[..file.len() - 1].to_vec()),
        rejection(patched(0, b"GGUF")),
        rejection(patched(8, &[9])),
        rejection(patched(16, &u32::MAX.to_le_bytes())),
        rejection(crafted(&[entry("a", DType::F32, &[4], 32, 16)], 48)),
        rejection(crafted(&[entry("a", DType::Q4_0, &[10], 0, 16)], 16)),
        {
            let mut f = file.clone();
            let last = f.len() - 1;
            f[last] ^= 1;
            rejection(f)
        },
    ]
    .map(|e| e.to_string());
    insta::assert_snapshot!("rejection_messages", messages.join("\n"));
}

#[test]
fn random_truncations_and_flips_never_pass() {
    let file = model_bytes();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for cut in 0..file.len() {
        assert!(
            ModelView::parse(&file[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
    for _ in 0..500 {
        let cut = rng.random_range(0..file.len());
        assert!(
            ModelFile::from_bytes(file[..cut].to_vec()).is_err(),
            "truncated at {cut}"
        );
    }
    for at in 0..file.len() {
        let mut f = file.clone();
        f[at] ^= rng.random_range(1..=255u8);
        assert!(ModelFile::from_bytes(f).is_err(), "flip at {at}");
    }
    for _ in 0..2000 {
        let mut f = file.clone();
        let at = rng.random_range(0..f.len());
        f[at] ^= rng.random_range(1..=255u8);
        assert!(ModelFile::from_bytes(f).is_err(), "flip at {at}");
    }
    for len in [0, 31, 32, 64, 100, 1000] {
        let mut f: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        assert!(ModelView::parse(&f).is_err());
        if len >= HEADER_LEN {
            f[..HEADER_LEN].copy_from_slice(&file[..HEADER_LEN]);
            assert!(ModelView::parse(&f).is_err());
        }
    }
}
