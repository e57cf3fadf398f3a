//! Update tests: round trips, quantization error bounds, error feedback, and
//! one test per rejection.

use alloc::vec;
use alloc::vec::Vec;

use half::f16;
use serde::Serialize;

use super::*;

/// Appends `v` in postcard.
fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    let bytes = postcard::to_extend(v, Vec::new()).unwrap();
    out.extend_from_slice(&bytes);
}

/// A deterministic pseudo-random sequence in `[-scale, scale)`.
fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A draft with the given deltas and two metrics.
fn encode(deltas: &[Delta<'_>]) -> Result<Vec<u8>, UpdateError> {
    let metrics = [
        Metric {
            name: "loss",
            value: 0.25,
        },
        Metric {
            name: "accuracy",
            value: 0.9,
        },
    ];
    UpdateDraft {
        model_id: "mnist-mlp",
        base_version: [7; 32],
        device_id: "device-1",
        seq: 42,
        num_examples: 1000,
        metrics: &metrics,
        deltas,
    }
    .encode()
}

/// The dense values of `d`.
fn dense(d: &Delta<'_>) -> Vec<f32> {
    let mut out = vec![0.0; d.elements() as usize];
    d.add_to(&mut out, 1.0).unwrap();
    out
}

/// The raw body prefix: version, ids, base, seq, examples.
fn head(version: u32, model_id: &[u8], device_id: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, &version);
    put(&mut out, model_id);
    put(&mut out, &[1u8; 32]);
    put(&mut out, device_id);
    put(&mut out, &5u64);
    put(&mut out, &10u64);
    out
}

/// A raw delta: name, shape, code and byte arrays.
fn raw_delta(name: &[u8], shape: &[u64], code: u32, arrays: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, name);
    put(&mut out, shape);
    put(&mut out, &code);
    for a in arrays {
        put(&mut out, *a);
    }
    out
}

/// A raw body: a valid head, `metrics`, then `count` and the raw `deltas`.
fn raw_body(metrics: &[(&[u8], f32)], count: u64, deltas: &[Vec<u8>]) -> Vec<u8> {
    let mut out = head(1, b"m", b"d");
    put(&mut out, &(metrics.len() as u64));
    for (name, v) in metrics {
        put(&mut out, *name);
        put(&mut out, v);
    }
    put(&mut out, &count);
    deltas.iter().for_each(|d| out.extend_from_slice(d));
    out
}

/// A raw body with one delta.
fn one(delta: Vec<u8>) -> Vec<u8> {
    raw_body(&[], 1, &[delta])
}

/// f16 bytes of `x`.
fn halfs(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

#[test]
fn round_trip_every_encoding_through_the_envelope() {
    let w = values(6, 1, 0.5);
    let b = values(3, 2, 0.5);
    let s = values(10, 3, 0.5);
    let e1 = EncodedDelta::int8("fc.weight", &[2, 3], &w).unwrap();
    let e2 = EncodedDelta::f16("fc.bias", &[3], &b).unwrap();
    let e3 = EncodedDelta::top_k("lora.a", &[10], &s, None, 4).unwrap();
    let deltas = [e1.as_delta(), e2.as_delta(), e3.delta.as_delta()];
    let body = encode(&deltas).unwrap();
    let env = Envelope {
        body: &body,
        signature: [9; SIGNATURE_LEN],
        key_id: key_id(&[3; 32]),
    };
    let bytes = env.to_bytes().unwrap();
    let parsed = Envelope::parse(&bytes).unwrap();
    assert_eq!(parsed, env);
    let u = Update::parse(parsed.body).unwrap();
    assert_eq!(u.model_id, "mnist-mlp");
    assert_eq!(u.base_version, [7; 32]);
    assert_eq!(u.device_id, "device-1");
    assert_eq!((u.seq, u.num_examples), (42, 1000));
    assert_eq!(u.metrics.len(), 2);
    assert_eq!(u.metrics[0].name, "loss");
    assert_eq!(u.metrics[1].value, 0.9);
    let got: Vec<Delta<'_>> = u.deltas.iter().map(Result::unwrap).collect();
    let names: Vec<&str> = got.iter().map(|d| d.name).collect();
    assert_eq!(names, ["fc.bias", "fc.weight", "lora.a"]);
    assert_eq!(got[0], deltas[1]);
    assert_eq!(got[1], deltas[0]);
    assert_eq!(got[2], deltas[2]);
    assert_eq!(got[1].shape.as_slice(), [2, 3]);
    let norm: f64 = got.iter().map(Delta::squared_norm).sum();
    assert!((u.squared_norm() - norm).abs() < 1e-12);
}

#[test]
fn empty_update_round_trips() {
    let body = encode(&[]).unwrap();
    let u = Update::parse(&body).unwrap();
    assert!(u.deltas.is_empty());
    assert_eq!(u.squared_norm(), 0.0);
}

#[test]
fn f16_error_is_within_half_an_ulp() {
    let x = values(4096, 4, 100.0);
    let e = EncodedDelta::f16("t", &[64, 64], &x).unwrap();
    for (a, b) in x.iter().zip(dense(&e.as_delta())) {
        // f16 has 11 significant bits; subnormals are spaced 2^-24.
        assert!(
            (a - b).abs() <= a.abs() * 2f32.powi(-11) + 2f32.powi(-25),
            "{a} vs {b}"
        );
    }
}

#[test]
fn int8_error_is_within_half_a_row_scale() {
    let mut x = values(8 * 50, 5, 1.0);
    x[..50].iter_mut().for_each(|v| *v *= 1000.0);
    x[50..100].iter_mut().for_each(|v| *v = 0.0);
    let e = EncodedDelta::int8("t", &[8, 50], &x).unwrap();
    let y = dense(&e.as_delta());
    for (row, (xs, ys)) in x.chunks(50).zip(y.chunks(50)).enumerate() {
        let scale = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        for (a, b) in xs.iter().zip(ys) {
            assert!(
                (a - b).abs() <= scale * 0.5 + scale * 1e-5,
                "row {row}: {a} vs {b}"
            );
        }
    }
    assert!(y[50..100].iter().all(|&v| v == 0.0));
}

#[test]
fn int8_of_a_scalar_is_one_row() {
    let e = EncodedDelta::int8("s", &[], &[-3.0]).unwrap();
    assert!((dense(&e.as_delta())[0] + 3.0).abs() < 1e-6);
    assert_eq!(rows_cols(&[]), Some((1, 1)));
    assert_eq!(rows_cols(&[4, 5, 6]), Some((20, 6)));
    assert_eq!(rows_cols(&[1 << 40, 1 << 40, 0]), None);
}

#[test]
fn top_k_keeps_the_largest_and_returns_the_rest_as_residual() {
    let x = [0.1, -5.0, 0.2, 3.0, -0.3, 0.0];
    let t = EncodedDelta::top_k("t", &[6], &x, None, 2).unwrap();
    let y = dense(&t.delta.as_delta());
    assert_eq!(y, [0.0, -5.0, 0.0, 3.0, 0.0, 0.0]);
    assert_eq!(t.residual, [0.1, 0.0, 0.2, 0.0, -0.3, 0.0]);
    let all = EncodedDelta::top_k("t", &[6], &x, None, 100).unwrap();
    assert_eq!(dense(&all.delta.as_delta()).len(), 6);
    let none = EncodedDelta::top_k("t", &[6], &x, None, 0).unwrap();
    assert_eq!(none.residual, x);
}

#[test]
fn top_k_error_feedback_sends_everything_eventually() {
    let x = values(100, 6, 1.0);
    let mut residual: Option<Vec<f32>> = None;
    let mut sent = vec![0.0f32; 100];
    let rounds = 50;
    for _ in 0..rounds {
        let t = EncodedDelta::top_k("t", &[100], &x, residual.as_deref(), 10).unwrap();
        t.delta.as_delta().add_to(&mut sent, 1.0).unwrap();
        residual = Some(t.residual);
    }
    // Sent + residual equals everything fed in, up to float rounding.
    let residual = residual.unwrap();
    for i in 0..100 {
        let total = x[i] * rounds as f32;
        assert!((sent[i] + residual[i] - total).abs() < 1e-2 * total.abs().max(1.0));
        // The residual stays bounded instead of growing with the rounds.
        assert!(residual[i].abs() < 12.0, "residual {i} = {}", residual[i]);
    }
}

#[test]
fn top_k_residual_must_match() {
    let err = EncodedDelta::top_k("t", &[3], &[1.0; 3], Some(&[0.0; 2]), 1).unwrap_err();
    assert_eq!(
        err,
        UpdateError::ValueCount {
            expected: 3,
            got: 2
        }
    );
}

#[test]
fn encoders_reject_bad_input() {
    assert_eq!(
        EncodedDelta::f16("t", &[2, 2], &[1.0; 3]).unwrap_err(),
        UpdateError::ValueCount {
            expected: 4,
            got: 3
        }
    );
    assert!(matches!(
        EncodedDelta::int8("", &[1], &[1.0]).unwrap_err(),
        UpdateError::BadLength {
            field: "delta name",
            ..
        }
    ));
    assert!(matches!(
        EncodedDelta::f16("t", &[1; 9], &[1.0]).unwrap_err(),
        UpdateError::RankTooLarge { rank: 9, .. }
    ));
    let big = EncodedDelta::f16("t", &[1], &[1e6]).unwrap();
    assert_eq!(
        encode(&[big.as_delta()]).unwrap_err(),
        UpdateError::NonFinite { index: 0 }
    );
    let a = EncodedDelta::f16("t", &[1], &[1.0]).unwrap();
    assert_eq!(
        encode(&[a.as_delta(), a.as_delta()]).unwrap_err(),
        UpdateError::NamesNotSorted { index: 1 }
    );
}

#[test]
fn add_to_rejects_a_buffer_of_the_wrong_size() {
    let e = EncodedDelta::f16("t", &[4], &[1.0; 4]).unwrap();
    let err = e.as_delta().add_to(&mut [0.0; 3], 1.0).unwrap_err();
    assert_eq!(
        err,
        UpdateError::ValueCount {
            expected: 4,
            got: 3
        }
    );
}

#[test]
fn every_truncation_is_rejected() {
    let e = EncodedDelta::int8("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let body = encode(&[e.as_delta()]).unwrap();
    for len in 0..body.len() {
        assert!(Update::parse(&body[..len]).is_err(), "body cut at {len}");
    }
    let env = Envelope {
        body: &body,
        signature: [1; 64],
        key_id: [2; 8],
    }
    .to_bytes()
    .unwrap();
    for len in 0..env.len() {
        assert!(
            Envelope::parse(&env[..len]).is_err(),
            "envelope cut at {len}"
        );
    }
}

#[test]
fn envelope_rejections() {
    assert_eq!(
        Envelope::parse(b"garbage!garbage").unwrap_err(),
        UpdateError::BadMagic
    );
    let big = vec![0u8; MAX_ENVELOPE_LEN + 1];
    assert!(matches!(
        Envelope::parse(&big).unwrap_err(),
        UpdateError::TooLarge {
            what: "envelope",
            ..
        }
    ));
    let mut ok = Envelope {
        body: b"x",
        signature: [0; 64],
        key_id: [0; 8],
    }
    .to_bytes()
    .unwrap();
    let mut cut = ok.clone();
    cut.pop();
    assert!(matches!(
        Envelope::parse(&cut).unwrap_err(),
        UpdateError::Malformed {
            field: "envelope key id",
            ..
        }
    ));
    cut.truncate(8 + 2 + 10);
    assert!(matches!(
        Envelope::parse(&cut).unwrap_err(),
        UpdateError::Malformed {
            field: "envelope signature",
            ..
        }
    ));
    ok.push(0);
    assert_eq!(
        Envelope::parse(&ok).unwrap_err(),
        UpdateError::TrailingBytes {
            what: "envelope",
            extra: 1
        }
    );
    let mut huge_len = UPDATE_MAGIC.to_vec();
    put(&mut huge_len, &u64::MAX);
    assert!(matches!(
        Envelope::parse(&huge_len).unwrap_err(),
        UpdateError::Malformed {
            field: "envelope body",
            ..
        }
    ));
}

#[test]
fn body_too_large() {
    let big = vec![0u8; MAX_UPDATE_LEN + 1];
    assert!(matches!(
        Update::parse(&big).unwrap_err(),
        UpdateError::TooLarge { what: "body", .. }
    ));
}

#[test]
fn header_rejections() {
    let mut v2 = head(2, b"m", b"d");
    v2.extend([0, 0]);
    assert_eq!(
        Update::parse(&v2).unwrap_err(),
        UpdateError::UnsupportedVersion { found: 2 }
    );
    let empty_model = head(1, b"", b"d");
    assert_eq!(
        Update::parse(&empty_model).unwrap_err(),
        UpdateError::BadLength {
            field: "model id",
            len: 0,
            max: crate::MAX_ID_LEN
        }
    );
    let long_device = head(1, b"m", &[b'd'; MAX_DEVICE_ID_LEN + 1]);
    assert!(matches!(
        Update::parse(&long_device).unwrap_err(),
        UpdateError::BadLength {
            field: "device id",
            ..
        }
    ));
    let bad_utf8 = head(1, b"m", &[0xff, 0xfe]);
    assert_eq!(
        Update::parse(&bad_utf8).unwrap_err(),
        UpdateError::NotUtf8 { field: "device id" }
    );
    let cut = head(1, b"m", b"d");
    assert!(matches!(
        Update::parse(&cut).unwrap_err(),
        UpdateError::Malformed {
            field: "metric count",
            ..
        }
    ));
}

#[test]
fn metric_rejections() {
    let many: Vec<(&[u8], f32)> = vec![(b"m", 1.0); MAX_METRICS + 1];
    assert_eq!(
        Update::parse(&raw_body(&many, 0, &[])).unwrap_err(),
        UpdateError::TooManyMetrics {
            count: MAX_METRICS as u64 + 1
        }
    );
    let nan = raw_body(&[(b"a", 1.0), (b"b", f32::NAN)], 0, &[]);
    assert_eq!(
        Update::parse(&nan).unwrap_err(),
        UpdateError::NonFiniteMetric { index: 1 }
    );
    let unnamed = raw_body(&[(b"", 1.0)], 0, &[]);
    assert!(matches!(
        Update::parse(&unnamed).unwrap_err(),
        UpdateError::BadLength {
            field: "metric name",
            ..
        }
    ));
}

#[test]
fn delta_list_rejections() {
    let too_many = raw_body(&[], u64::from(MAX_DELTA_TENSORS) + 1, &[]);
    assert_eq!(
        Update::parse(&too_many).unwrap_err(),
        UpdateError::TooManyDeltas {
            count: u64::from(MAX_DELTA_TENSORS) + 1
        }
    );
    let a = raw_delta(b"a", &[1], 0, &[&halfs(&[1.0])]);
    let b = raw_delta(b"b", &[1], 0, &[&halfs(&[1.0])]);
    let unsorted = raw_body(&[], 2, &[b.clone(), a.clone()]);
    assert_eq!(
        Update::parse(&unsorted).unwrap_err(),
        UpdateError::NamesNotSorted { index: 1 }
    );
    let mut trailing = raw_body(&[], 2, &[a, b]);
    trailing.push(0);
    assert_eq!(
        Update::parse(&trailing).unwrap_err(),
        UpdateError::TrailingBytes {
            what: "body",
            extra: 1
        }
    );
    let missing = raw_body(&[], 3, &[]);
    assert!(matches!(
        Update::parse(&missing).unwrap_err(),
        UpdateError::Malformed {
            field: "delta name",
            ..
        }
    ));
}

#[test]
fn shape_and_encoding_rejections() {
    let long_name = raw_delta(&[b'n'; crate::MAX_NAME_LEN + 1], &[1], 0, &[&halfs(&[1.0])]);
    assert!(matches!(
        Update::parse(&one(long_name)).unwrap_err(),
        UpdateError::BadLength {
            field: "delta name",
            ..
        }
    ));
    let deep = raw_delta(b"t", &[1; 9], 0, &[&halfs(&[1.0])]);
    assert_eq!(
        Update::parse(&one(deep)).unwrap_err(),
        UpdateError::RankTooLarge { index: 0, rank: 9 }
    );
    let huge = raw_delta(b"t", &[1 << 20, 1 << 20], 2, &[&[], &[]]);
    assert_eq!(
        Update::parse(&one(huge)).unwrap_err(),
        UpdateError::TooManyElements { index: 0 }
    );
    let overflow = raw_delta(b"t", &[u64::MAX, 2], 2, &[&[], &[]]);
    assert_eq!(
        Update::parse(&one(overflow)).unwrap_err(),
        UpdateError::TooManyElements { index: 0 }
    );
    // No elements but 2^62 rows: 4 bytes of scale per row overflow u64.
    for shape in [
        &[1u64 << 62, 0][..],
        &[1 << 62, 2, 0],
        &[1 << 32, 1 << 32, 0],
    ] {
        let empty_rows = raw_delta(b"t", shape, 1, &[&[], &[]]);
        assert_eq!(
            Update::parse(&one(empty_rows)).unwrap_err(),
            UpdateError::TooManyElements { index: 0 },
            "{shape:?}"
        );
    }
    let unknown = raw_delta(b"t", &[1], 7, &[]);
    assert_eq!(
        Update::parse(&one(unknown)).unwrap_err(),
        UpdateError::UnknownEncoding { index: 0, code: 7 }
    );
}

#[test]
fn array_length_rejections() {
    let short = raw_delta(b"t", &[3], 0, &[&halfs(&[1.0, 2.0])]);
    assert_eq!(
        Update::parse(&one(short)).unwrap_err(),
        UpdateError::DataLength {
            index: 0,
            part: "values",
            len: 4,
            expected: 6
        }
    );
    let scales = raw_delta(b"t", &[2, 3], 1, &[&[0; 4], &[0; 6]]);
    assert_eq!(
        Update::parse(&one(scales)).unwrap_err(),
        UpdateError::DataLength {
            index: 0,
            part: "scales",
            len: 4,
            expected: 8
        }
    );
    let int8_values = raw_delta(b"t", &[2, 3], 1, &[&[0; 8], &[0; 5]]);
    assert_eq!(
        Update::parse(&one(int8_values)).unwrap_err(),
        UpdateError::DataLength {
            index: 0,
            part: "values",
            len: 5,
            expected: 6
        }
    );
    let odd = raw_delta(b"t", &[4], 2, &[&[0; 4], &[0; 3]]);
    assert_eq!(
        Update::parse(&one(odd)).unwrap_err(),
        UpdateError::DataLength {
            index: 0,
            part: "values",
            len: 3,
            expected: 2
        }
    );
    let indices = raw_delta(b"t", &[4], 2, &[&[0; 4], &halfs(&[1.0, 2.0])]);
    assert_eq!(
        Update::parse(&one(indices)).unwrap_err(),
        UpdateError::DataLength {
            index: 0,
            part: "indices",
            len: 4,
            expected: 8
        }
    );
}

#[test]
fn top_k_index_rejections() {
    let idx = |i: &[u32]| -> Vec<u8> { i.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let too_many = raw_delta(b"t", &[2], 2, &[&idx(&[0, 1, 1]), &halfs(&[1.0; 3])]);
    assert_eq!(
        Update::parse(&one(too_many)).unwrap_err(),
        UpdateError::TopKTooLarge {
            index: 0,
            k: 3,
            elements: 2
        }
    );
    let out_of_range = raw_delta(b"t", &[4], 2, &[&idx(&[1, 4]), &halfs(&[1.0; 2])]);
    assert_eq!(
        Update::parse(&one(out_of_range)).unwrap_err(),
        UpdateError::BadIndex {
            index: 0,
            position: 1
        }
    );
    let repeated = raw_delta(b"t", &[4], 2, &[&idx(&[2, 2]), &halfs(&[1.0; 2])]);
    assert_eq!(
        Update::parse(&one(repeated)).unwrap_err(),
        UpdateError::BadIndex {
            index: 0,
            position: 1
        }
    );
    let descending = raw_delta(b"t", &[4], 2, &[&idx(&[3, 1]), &halfs(&[1.0; 2])]);
    assert_eq!(
        Update::parse(&one(descending)).unwrap_err(),
        UpdateError::BadIndex {
            index: 0,
            position: 1
        }
    );
}

#[test]
fn non_finite_rejections() {
    let inf = raw_delta(b"t", &[2], 0, &[&halfs(&[1.0, f32::INFINITY])]);
    assert_eq!(
        Update::parse(&one(inf)).unwrap_err(),
        UpdateError::NonFinite { index: 0 }
    );
    let nan_scale = raw_delta(b"t", &[1, 2], 1, &[&f32::NAN.to_le_bytes(), &[1, 2]]);
    assert_eq!(
        Update::parse(&one(nan_scale)).unwrap_err(),
        UpdateError::NonFinite { index: 0 }
    );
    let nan_top = raw_delta(b"t", &[4], 2, &[&0u32.to_le_bytes(), &halfs(&[f32::NAN])]);
    assert_eq!(
        Update::parse(&one(nan_top)).unwrap_err(),
        UpdateError::NonFinite { index: 0 }
    );
}

#[test]
fn errors_say_what_to_do() {
    let e = UpdateError::NonFinite { index: 3 };
    let msg = alloc::format!("{e}");
    assert!(msg.contains("delta #3") && msg.contains("int8"), "{msg}");
    let e = UpdateError::TooLarge {
        what: "body",
        len: 10,
        max: 5,
    };
    assert!(alloc::format!("{e}").contains("send a smaller delta"));
}

#[test]
fn key_ids_differ_per_key() {
    assert_ne!(key_id(&[1; 32]), key_id(&[2; 32]));
    assert_eq!(key_id(&[1; 32]), key_id(&[1; 32]));
}

#[test]
fn read_range_equals_the_dense_values_for_every_encoding_and_block() {
    let w = values(35, 4, 0.5);
    let int8 = EncodedDelta::int8("w", &[5, 7], &w).unwrap();
    let f16 = EncodedDelta::f16("w", &[5, 7], &w).unwrap();
    let top = EncodedDelta::top_k("w", &[5, 7], &w, None, 9).unwrap();
    for delta in [int8.as_delta(), f16.as_delta(), top.delta.as_delta()] {
        let full = dense(&delta);
        for block in [1usize, 3, 8, 35, 50] {
            for start in (0..40).step_by(block) {
                let mut out = vec![f32::NAN; block];
                delta.read_range(start, &mut out);
                for (i, &v) in out.iter().enumerate() {
                    let want = full.get(start + i).copied().unwrap_or(0.0);
                    assert_eq!(v, want, "{} at {}", delta.encoding.name(), start + i);
                }
            }
        }
    }
}
