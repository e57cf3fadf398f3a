//! The native side of the browser tests: the fixtures in `tests/fixtures` are what the
//! native CPU backend computes (see `common`), checked here; `PUPIL_BLESS=1` rewrites them
//! (the digits from the MNIST cache, `models/fetch mnist`).

#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::path::Path;

use common::{Native, CLASSES, DIGITS, LR, PIXELS, TRAIN};
use pupil::Backend;
use pupil_web::Classifier;

const STUDENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../models/mnist-student.pupil"
);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The fixtures equal what the native CPU backend computes now (rewritten with
/// `PUPIL_BLESS=1`), so the browser tests compare with native values, not stale ones.
#[test]
fn browser_fixtures_equal_native_results() {
    let bless = std::env::var("PUPIL_BLESS").is_ok_and(|v| v == "1");
    let dir = Path::new(FIXTURES);
    if bless {
        let test = pupil::data::mnist::Mnist::load().unwrap().test;
        let mut bytes = test.labels[..DIGITS].to_vec();
        bytes.extend_from_slice(&test.images[..DIGITS * PIXELS]);
        std::fs::write(dir.join("mnist-test-100.bin"), bytes).unwrap();
    }
    let (labels, pixels) = common::digits(&std::fs::read(dir.join("mnist-test-100.bin")).unwrap());
    let student = std::fs::read(STUDENT).unwrap();
    let mut model = Classifier::load(student, &Backend::Cpu).unwrap();
    assert_eq!((model.inputs(), model.classes()), (PIXELS, CLASSES));
    let logits = pollster::block_on(model.logits(&pixels)).unwrap();
    let loss = pollster::block_on(model.train_step(
        &pixels[..TRAIN * PIXELS],
        &common::train_labels(&labels),
        LR,
    ))
    .unwrap();
    let after = pollster::block_on(model.parameters()).unwrap();
    let now = Native {
        logits,
        loss,
        sampled: common::sample(&after),
    };
    let path = dir.join("student-native.bin");
    if bless {
        std::fs::write(&path, now.to_bytes()).unwrap();
    }
    let kept = Native::parse(&std::fs::read(&path).unwrap());
    let d = [
        common::max_diff(&now.logits, &kept.logits),
        (now.loss - kept.loss).abs(),
        common::max_diff(&now.sampled, &kept.sampled),
    ];
    assert!(
        d.iter().all(|&d| d <= 1e-5),
        "native results moved from the fixture by {d:?} (logits, loss, parameters); if that \
         is intended, rerun with PUPIL_BLESS=1"
    );
    let correct = (0..DIGITS)
        .filter(|&i| {
            let row = &now.logits[i * CLASSES..(i + 1) * CLASSES];
            let best = (0..CLASSES).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best as u32 == labels[i]
        })
        .count();
    assert!(
        correct >= 95,
        "the student gets only {correct} of 100 right"
    );
}
