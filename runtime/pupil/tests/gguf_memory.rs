//! Parsing GGUF metadata costs about the file's size in memory: a 32 MiB array of bytes and
//! an 8 MiB array of a million empty strings, with the peak of live heap bytes counted by
//! the allocator. (When every array element was a 32-byte enum value, a 32 MiB array took
//! 1.06 GiB.)

use pupil::import::{Gguf, MetaValue};

#[path = "../../../tests/support/counting_alloc.rs"]
mod counting_alloc;

/// Appends a GGUF string.
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A GGUF file with no tensors and two large arrays.
fn hostile_gguf(bytes: usize, strings: usize) -> Vec<u8> {
    let mut f = b"GGUF".to_vec();
    f.extend_from_slice(&3u32.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes());
    f.extend_from_slice(&2u64.to_le_bytes());
    put_str(&mut f, "junk.bytes");
    f.extend_from_slice(&9u32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&(bytes as u64).to_le_bytes());
    f.resize(f.len() + bytes, 7);
    put_str(&mut f, "junk.strings");
    f.extend_from_slice(&9u32.to_le_bytes());
    f.extend_from_slice(&8u32.to_le_bytes());
    f.extend_from_slice(&(strings as u64).to_le_bytes());
    for _ in 0..strings {
        put_str(&mut f, "");
    }
    f
}

#[test]
fn large_metadata_arrays_cost_about_their_size() {
    let file = hostile_gguf(32 << 20, 1 << 20);
    let (parsed, peak) = counting_alloc::peak_during(|| Gguf::parse(&file).unwrap());
    let bytes = parsed
        .get("junk.bytes")
        .and_then(MetaValue::as_array)
        .unwrap();
    assert_eq!(
        (bytes.len(), bytes.scalar(5)),
        (32 << 20, Some(MetaValue::U8(7)))
    );
    let strings = parsed
        .get("junk.strings")
        .and_then(MetaValue::as_array)
        .unwrap();
    assert_eq!((strings.len(), strings.str(9)), (1 << 20, Some("")));
    eprintln!(
        "file {:.1} MiB, peak heap while parsing {:.1} MiB",
        file.len() as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak <= 2 * file.len(),
        "parsing {} bytes took {peak}",
        file.len()
    );
}
