//! Parsing tests: one per error, plus round trips and the exact layout.

use alloc::vec;
use alloc::vec::Vec;

use crate::*;

/// Model info used by every test file.
fn info() -> ModelInfo {
    let mut info = ModelInfo {
        model_id: "test".try_into().unwrap(),
        arch: "mlp".try_into().unwrap(),
        version: 2,
        created_by: "tests".try_into().unwrap(),
        ..ModelInfo::default()
    };
    let hidden = ConfigValue::Ints(Vec::from([4i64, 2]).as_slice().try_into().unwrap());
    info.config
        .push(ConfigEntry {
            key: "hidden".try_into().unwrap(),
            value: hidden,
        })
        .unwrap();
    info
}

/// A table entry with the length its dtype and shape need.
fn entry<'a>(name: &'a str, dtype: DType, shape: &[u64], offset: u64) -> TensorEntry<'a> {
    TensorEntry {
        name,
        dtype,
        shape: Shape::from_slice(shape).unwrap(),
        offset,
        len: dtype.byte_len(shape).unwrap(),
    }
}

/// A valid file: `a` f32 [2, 2] at 0, `b` q4_0 [32] at 64.
fn valid() -> Vec<u8> {
    let mut data = vec![1u8; 16];
    data.resize(64, 0);
    data.extend([2u8; 18]);
    let entries = [
        entry("a", DType::F32, &[2, 2], 0),
        entry("b", DType::Q4_0, &[32], 64),
    ];
    encode_file(&info(), &entries, &data).unwrap()
}

/// One raw table entry, encoded field by field.
fn raw_entry(name: &[u8], code: u32, shape: &[u64], offset: u64, len: u64) -> Vec<u8> {
    postcard::to_extend(&(name, code, shape, offset, len), Vec::new()).unwrap()
}

/// A sealed file with a hand-made table of `count` entries.
fn raw_file(table: &[u8], count: u64, data: &[u8]) -> Vec<u8> {
    let mut manifest = vec![0u8; HASH_LEN];
    manifest = postcard::to_extend(&info(), manifest).unwrap();
    manifest = postcard::to_extend(&count, manifest).unwrap();
    manifest.extend_from_slice(table);
    let header = Header::new(manifest.len() as u32, data.len() as u64);
    let mut file = header.to_bytes().to_vec();
    file.extend(&manifest);
    file.resize(header.data_start() as usize, 0);
    file.extend(data);
    seal(&mut file).unwrap();
    file
}

/// The error of parsing `file`.
fn err(file: &[u8]) -> FormatError {
    ModelView::parse(file).unwrap_err()
}

/// Overwrites header bytes `at..` with `bytes` and reseals.
fn patched(at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut file = valid();
    file[at..at + bytes.len()].copy_from_slice(bytes);
    seal(&mut file).unwrap();
    file
}

#[test]
fn round_trip() {
    let file = valid();
    let view = ModelView::parse(&file).unwrap();
    assert_eq!(view.manifest.info, info());
    assert_eq!(
        view.manifest
            .info
            .get("hidden")
            .and_then(ConfigValue::as_ints),
        Some(&[4i64, 2][..])
    );
    let entries: Vec<_> = view.manifest.tensors.iter().map(Result::unwrap).collect();
    assert_eq!(
        entries,
        [
            entry("a", DType::F32, &[2, 2], 0),
            entry("b", DType::Q4_0, &[32], 64)
        ]
    );
    let b = view.find("b").unwrap().unwrap();
    assert_eq!(view.tensor_data(&b).unwrap(), &[2u8; 18]);
    assert_eq!(view.find("c").unwrap(), None);
}

#[test]
fn exact_layout() {
    let file = valid();
    assert_eq!(&file[..8], b"PUPILMDL");
    assert_eq!(file[8..12], 1u32.to_le_bytes());
    assert_eq!(file[12..16], [0; 4]);
    let manifest_len = u32::from_le_bytes(file[16..20].try_into().unwrap());
    assert_eq!(file[20..24], [0; 4]);
    assert_eq!(file[24..32], 82u64.to_le_bytes());
    assert_eq!(file[32..64], content_hash(&file));
    let data_start = (32 + manifest_len as usize).next_multiple_of(64);
    assert_eq!(file.len(), data_start + 82);
    assert!(file[32 + manifest_len as usize..data_start]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(file[data_start + 64..], [2u8; 18]);
}

#[test]
fn empty_model() {
    let file = encode_file(&info(), &[], &[]).unwrap();
    let view = ModelView::parse(&file).unwrap();
    assert!(view.manifest.tensors.is_empty());
    assert!(view.data().is_empty());
}

#[test]
fn dtype_sizes() {
    let sizes = [4, 2, 2, 1, 4, 1, 34, 18, 20, 22, 24, 144, 176, 210];
    for (d, size) in DType::ALL.into_iter().zip(sizes) {
        assert_eq!(DType::from_code(d.code()), Some(d));
        assert_eq!(DType::from_name(d.name()), Some(d));
        assert_eq!(d.byte_len(&[2, 256]).unwrap(), 512 / d.block_elems() * size);
    }
    assert_eq!(DType::from_code(14), None);
    assert_eq!(
        DType::Q4_K.byte_len(&[2, 32]),
        Err(ShapeError::NotBlockMultiple {
            elements: 64,
            block: 256
        })
    );
    assert_eq!(DType::F32.byte_len(&[]), Ok(4));
    assert_eq!(
        DType::Q8_0.byte_len(&[3, 5]),
        Err(ShapeError::NotBlockMultiple {
            elements: 15,
            block: 32
        })
    );
    assert_eq!(
        DType::F32.byte_len(&[u64::MAX / 2, 2]),
        Err(ShapeError::Overflow)
    );
    assert_eq!(
        DType::F32.byte_len(&[u64::MAX, 2]),
        Err(ShapeError::Overflow)
    );
}

#[test]
fn header_errors() {
    assert_eq!(err(&valid()[..31]), FormatError::TooShort { len: 31 });
    assert!(matches!(
        err(&patched(0, b"GGUF")),
        FormatError::BadMagic { .. }
    ));
    assert_eq!(
        err(&patched(8, &[2, 0, 0, 0])),
        FormatError::UnsupportedVersion { found: 2 }
    );
    assert_eq!(
        err(&patched(12, &[1, 0, 0, 0])),
        FormatError::UnsupportedFlags { flags: 1 }
    );
    assert_eq!(
        err(&patched(20, &[0, 0, 0, 1])),
        FormatError::ReservedNotZero { value: 1 << 24 }
    );
    assert_eq!(
        err(&patched(16, &u32::MAX.to_le_bytes())),
        FormatError::ManifestTooLarge {
            len: u32::MAX.into()
        }
    );
    assert_eq!(
        err(&patched(16, &[31, 0, 0, 0])),
        FormatError::ManifestTooSmall { len: 31 }
    );
}

#[test]
fn length_errors() {
    let file = valid();
    assert_eq!(
        err(&patched(16, &MAX_MANIFEST_LEN.to_le_bytes())),
        FormatError::TruncatedManifest {
            declared: MAX_MANIFEST_LEN.into(),
            available: file.len() as u64 - 32,
        }
    );
    assert_eq!(
        err(&file[..file.len() - 1]),
        FormatError::TruncatedData {
            declared: 82,
            available: 81
        }
    );
    assert_eq!(
        err(&patched(24, &u64::MAX.to_le_bytes())),
        FormatError::TruncatedData {
            declared: u64::MAX,
            available: 82
        }
    );
    let mut longer = file.clone();
    longer.push(0);
    seal(&mut longer).unwrap();
    assert_eq!(err(&longer), FormatError::TrailingBytes { extra: 1 });
    let mut flipped = file;
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(err(&flipped), FormatError::HashMismatch { .. }));
}

#[test]
fn manifest_errors() {
    let garbage = {
        let mut m = vec![0u8; HASH_LEN];
        m.extend([0xff; 16]);
        let header = Header::new(m.len() as u32, 0);
        let mut file = header.to_bytes().to_vec();
        file.extend(&m);
        file.resize(header.data_start() as usize, 0);
        seal(&mut file).unwrap();
        file
    };
    assert!(matches!(
        err(&garbage),
        FormatError::MalformedManifest { .. }
    ));
    assert_eq!(
        err(&raw_file(&[], 5000, &[])),
        FormatError::TooManyTensors { count: 5000 }
    );
    assert_eq!(
        err(&raw_file(&[], 1, &[])),
        FormatError::MalformedEntry {
            index: 0,
            error: postcard::Error::DeserializeUnexpectedEnd
        }
    );
    let mut extra = raw_entry(b"a", 0, &[1], 0, 4);
    extra.push(7);
    let file = raw_file(&extra, 1, &[0; 4]);
    let declared = u32::from_le_bytes(file[16..20].try_into().unwrap()).into();
    assert_eq!(
        err(&file),
        FormatError::ManifestLengthMismatch {
            declared,
            used: declared - 1
        }
    );
}

#[test]
fn entry_errors() {
    let one = |name: &[u8], code, shape: &[u64], offset, len| {
        err(&raw_file(
            &raw_entry(name, code, shape, offset, len),
            1,
            &[0; 256],
        ))
    };
    assert_eq!(
        one(b"", 0, &[1], 0, 4),
        FormatError::BadNameLength { index: 0, len: 0 }
    );
    assert_eq!(
        one(&[b'x'; 129], 0, &[1], 0, 4),
        FormatError::BadNameLength { index: 0, len: 129 }
    );
    assert_eq!(
        one(&[0xff, 0xfe], 0, &[1], 0, 4),
        FormatError::NameNotUtf8 { index: 0 }
    );
    assert_eq!(
        one(b"a", 99, &[1], 0, 4),
        FormatError::UnknownDType { index: 0, code: 99 }
    );
    assert_eq!(
        one(b"a", 0, &[1; 9], 0, 4),
        FormatError::RankTooLarge { index: 0, rank: 9 }
    );
    assert_eq!(
        one(b"a", 0, &[u64::MAX, 2], 0, 4),
        FormatError::BadShape {
            index: 0,
            error: ShapeError::Overflow
        }
    );
    assert_eq!(
        one(b"a", DType::Q4_0.code(), &[10], 0, 4),
        FormatError::BadShape {
            index: 0,
            error: ShapeError::NotBlockMultiple {
                elements: 10,
                block: 32
            }
        }
    );
    assert_eq!(
        one(b"a", 0, &[1], 0, 1 << 40),
        FormatError::LengthMismatch {
            index: 0,
            declared: 1 << 40,
            expected: 4
        }
    );
    assert_eq!(
        one(b"a", 0, &[1], 8, 4),
        FormatError::MisalignedTensor {
            index: 0,
            offset: 8
        }
    );
    assert_eq!(
        one(b"a", 0, &[64, 2], 128, 512),
        FormatError::TensorOutOfBounds {
            index: 0,
            offset: 128,
            len: 512,
            data_len: 256
        }
    );
    assert_eq!(
        one(b"a", 0, &[1], u64::MAX - 63, 4),
        FormatError::TensorOutOfBounds {
            index: 0,
            offset: u64::MAX - 63,
            len: 4,
            data_len: 256
        }
    );
    assert_eq!(
        one(b"a", 0, &[1], 0, 4),
        FormatError::DataLengthMismatch {
            declared: 256,
            used: 4
        }
    );
}

#[test]
fn table_errors() {
    let two = |first: (&[u8], u64), second: (&[u8], u64)| {
        let mut table = raw_entry(first.0, 0, &[16], first.1, 64);
        table.extend(raw_entry(second.0, 0, &[16], second.1, 64));
        err(&raw_file(&table, 2, &[0; 128]))
    };
    assert_eq!(
        two((b"b", 0), (b"a", 64)),
        FormatError::NamesNotSorted { index: 1 }
    );
    assert_eq!(
        two((b"a", 0), (b"a", 64)),
        FormatError::NamesNotSorted { index: 1 }
    );
    assert_eq!(
        two((b"a", 64), (b"b", 0)),
        FormatError::OverlappingTensors {
            index: 1,
            offset: 0,
            prev_end: 128
        }
    );
    assert!(ModelView::parse(&{
        let mut table = raw_entry(b"a", 0, &[16], 0, 64);
        table.extend(raw_entry(b"b", 0, &[16], 64, 64));
        raw_file(&table, 2, &[0; 128])
    })
    .is_ok());
}

#[test]
fn messages_say_what_to_do() {
    let e = FormatError::TruncatedManifest {
        declared: 812,
        available: 40,
    };
    assert_eq!(
        alloc::format!("{e}"),
        "file truncated: header declares manifest of 812 bytes but only 40 remain; the file is incomplete — download or copy it again"
    );
}
