//! Round trips and every kind of damaged delta.

use pupil_format::ModelBuilder;

use super::*;

/// A model with a big body, a small head and a tensor only this version has.
fn model(head: &[f32], extra: Option<&str>, version: u32) -> Vec<u8> {
    let mut b = ModelBuilder::new("m", "mlp").unwrap();
    b.version(version);
    let body: Vec<f32> = (0..4096).map(|i| i as f32 * 0.25).collect();
    b.add_f32("body", &[64, 64], &body).unwrap();
    b.add_f32("head", &[head.len() as u64], head).unwrap();
    if let Some(name) = extra {
        b.add_f32(name, &[3], &[1.0, 2.0, 3.0]).unwrap();
    }
    b.to_bytes().unwrap()
}

#[test]
fn varints_round_trip_and_refuse_overflow() {
    for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        let mut at = 0;
        assert_eq!(take_varint(&out, &mut at), Some(v));
        assert_eq!(at, out.len());
    }
    let mut at = 0;
    assert_eq!(take_varint(&[0xff; 10], &mut at), None);
    let mut at = 0;
    assert_eq!(take_varint(&[0x80], &mut at), None);
}

#[test]
fn a_head_change_rebuilds_the_exact_file_from_a_small_delta() {
    let base = model(&[0.5; 32], None, 1);
    let mut head = [0.5f32; 32];
    head[3] = -1.0;
    head[30] = 2.0;
    let target = model(&head, Some("new"), 2);
    let delta = encode(&base, &target).unwrap();
    assert!(
        delta.len() * 20 < target.len(),
        "{} vs {}",
        delta.len(),
        target.len()
    );
    assert_eq!(apply(&base, &delta, target.len() as u64).unwrap(), target);
    // Identical files: only the header and manifest travel.
    let same = encode(&base, &base).unwrap();
    assert_eq!(apply(&base, &same, base.len() as u64).unwrap(), base);
    // Unrelated files still round-trip (literal), never much larger than the file.
    let mut other = ModelBuilder::new("x", "y").unwrap();
    other.add_f32("z", &[5], &[9.0; 5]).unwrap();
    let other = other.to_bytes().unwrap();
    let d = encode(&base, &other).unwrap();
    assert!(d.len() < other.len() + DELTA_HEADER_LEN + 32);
    assert_eq!(apply(&base, &d, other.len() as u64).unwrap(), other);
}

#[test]
fn scattered_changes_with_short_zero_runs_round_trip() {
    let base = model(&[0.5; 32], None, 1);
    let mut target = base.clone();
    // Flip bytes inside the body's data (not the manifest), then reseal the hash.
    let body_at = target.len() - 32 * 4 - 4096 * 4;
    for i in [0, 1, 5, 6, 7, 9, 500, 4095 * 4 + 3] {
        target[body_at + i] ^= 0x5a;
    }
    pupil_wire::seal(&mut target).unwrap();
    let delta = encode(&base, &target).unwrap();
    assert!(delta.len() < DELTA_HEADER_LEN + 400, "{}", delta.len());
    assert_eq!(apply(&base, &delta, target.len() as u64).unwrap(), target);
}

#[test]
fn damaged_deltas_are_refused_with_their_own_error() {
    let base = model(&[0.5; 32], None, 1);
    let target = model(&[0.25; 32], None, 2);
    let delta = encode(&base, &target).unwrap();
    let max = target.len() as u64;
    let err = |d: &[u8], b: &[u8], m: u64| apply(b, d, m).unwrap_err();

    assert!(matches!(
        err(b"PUPILDL", &base, max),
        DeltaError::Truncated { .. }
    ));
    let mut magic = delta.clone();
    magic[0] = b'X';
    assert!(matches!(err(&magic, &base, max), DeltaError::BadMagic));
    let mut version = delta.clone();
    version[8] = 9;
    assert!(matches!(
        err(&version, &base, max),
        DeltaError::UnsupportedVersion { found: 9 }
    ));
    assert!(matches!(
        err(&delta, &target, max),
        DeltaError::WrongBase { .. }
    ));
    assert!(matches!(
        err(&delta, &base, max - 1),
        DeltaError::TooLarge { .. }
    ));
    assert!(matches!(
        err(&delta[..delta.len() - 1], &base, max),
        DeltaError::Truncated { .. } | DeltaError::LengthMismatch { .. }
    ));
    let mut unknown = delta.clone();
    unknown.push(7);
    assert!(matches!(
        err(&unknown, &base, max),
        DeltaError::BadOp { .. }
    ));
    let mut extra = delta.clone();
    extra.extend_from_slice(&[OP_LITERAL, 1, 0]);
    assert!(matches!(err(&extra, &base, max), DeltaError::BadOp { .. }));
    let mut outside = delta[..DELTA_HEADER_LEN].to_vec();
    outside.push(OP_COPY);
    put_varint(&mut outside, base.len() as u64);
    put_varint(&mut outside, 1);
    assert!(matches!(
        err(&outside, &base, max),
        DeltaError::BadOp { .. }
    ));
    let mut empty_pair = delta[..DELTA_HEADER_LEN].to_vec();
    empty_pair.extend_from_slice(&[OP_XOR, 0, 4, 0, 0]);
    assert!(matches!(
        err(&empty_pair, &base, max),
        DeltaError::BadOp { .. }
    ));
    // Any flipped byte in the operations changes the output or its framing.
    for at in (DELTA_HEADER_LEN..delta.len()).step_by(97) {
        let mut forged = delta.clone();
        forged[at] ^= 0x10;
        assert!(apply(&base, &forged, max).is_err(), "flip at {at}");
    }
    // A forged target hash (and so a forged file) fails on the hash.
    let mut hash = delta.clone();
    hash[50] ^= 1;
    assert!(matches!(
        err(&hash, &base, max),
        DeltaError::HashMismatch { .. }
    ));
    assert!(matches!(
        encode(b"nope", &target),
        Err(DeltaError::NotAModel(_))
    ));
}
