//! The shipped student and one training step in a real browser: on the browser's WebGPU
//! adapter and on the CPU backend compiled to wasm32, each against the other and against the
//! native CPU backend's results (`fixtures/student-native.bin`, checked by `native.rs`).
//! Runs headless in Chromium (`tests/run` does this; webdriver.json passes the flags):
//!
//! ```sh
//! CHROMEDRIVER=/usr/bin/chromedriver cargo test -p pupil-web --target wasm32-unknown-unknown --test browser
//! ```
#![cfg(target_arch = "wasm32")]

mod common;

use common::{max_diff, Native, CLASSES, DIGITS, LR, PIXELS, TRAIN};
use pupil::Backend;
use pupil_web::{backend_kind, open_backend, Classifier};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const STUDENT: &[u8] = include_bytes!("../../../models/mnist-student.pupil");
const DIGIT_BYTES: &[u8] = include_bytes!("fixtures/mnist-test-100.bin");
const NATIVE: &[u8] = include_bytes!("fixtures/student-native.bin");

/// The student on the browser's WebGPU adapter (the test fails without one) and on the
/// CPU backend.
async fn both() -> (Classifier, Classifier) {
    let gpu = open_backend(Some("webgpu"))
        .await
        .expect("WebGPU adapter (Chromium needs --enable-unsafe-webgpu)");
    console_log!("GPU: {}", gpu.describe());
    (
        Classifier::load(STUDENT.to_vec(), &gpu).unwrap(),
        Classifier::load(STUDENT.to_vec(), &Backend::Cpu).unwrap(),
    )
}

#[wasm_bindgen_test]
async fn default_backend_is_webgpu_when_the_browser_has_it() {
    let backend = open_backend(None).await.unwrap();
    assert_eq!(backend_kind(&backend), "webgpu", "{}", backend.describe());
    let cpu = open_backend(Some("cpu")).await.unwrap();
    assert_eq!(backend_kind(&cpu), "cpu");
}

#[wasm_bindgen_test]
async fn student_logits_on_webgpu_equal_cpu_and_native() {
    let (gpu, cpu) = both().await;
    let (labels, pixels) = common::digits(DIGIT_BYTES);
    let native = Native::parse(NATIVE);
    let g = gpu.logits(&pixels).await.unwrap();
    let c = cpu.logits(&pixels).await.unwrap();
    let (gc, gn, cn) = (
        max_diff(&g, &c),
        max_diff(&g, &native.logits),
        max_diff(&c, &native.logits),
    );
    console_log!(
        "student logits, {DIGITS} digits: max |webgpu - wasm cpu| = {gc:.3e}, \
         |webgpu - native| = {gn:.3e}, |wasm cpu - native| = {cn:.3e}"
    );
    assert!(gc <= 1e-4 && gn <= 1e-4 && cn <= 1e-4, "{gc} {gn} {cn}");
    let probs = gpu.classify(&pixels).await.unwrap();
    let mut correct = 0;
    for (i, row) in probs.chunks(CLASSES).enumerate() {
        let sum: f32 = row.iter().sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "digit {i}: probabilities sum to {sum}"
        );
        let best = (0..CLASSES).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        correct += usize::from(best as u32 == labels[i]);
    }
    console_log!("webgpu: {correct} of {DIGITS} digits right");
    assert!(correct >= 95, "{correct}");
}

#[wasm_bindgen_test]
async fn one_training_step_on_webgpu_equals_cpu_and_native() {
    let (mut gpu, mut cpu) = both().await;
    let (labels, pixels) = common::digits(DIGIT_BYTES);
    let native = Native::parse(NATIVE);
    let (x, y) = (&pixels[..TRAIN * PIXELS], &common::train_labels(&labels));
    let lg = gpu.train_step(x, y, LR).await.unwrap();
    let lc = cpu.train_step(x, y, LR).await.unwrap();
    let pg = gpu.parameters().await.unwrap();
    let pc = cpu.parameters().await.unwrap();
    let (dw, dn) = (
        max_diff(&pg, &pc),
        max_diff(&common::sample(&pg), &native.sampled),
    );
    console_log!(
        "training step: loss webgpu {lg} wasm cpu {lc} native {}; max |webgpu - wasm cpu| \
         over all {} parameters = {dw:.3e}, |webgpu - native| over every {}th = {dn:.3e}",
        native.loss,
        pg.len(),
        common::STRIDE
    );
    assert!(
        (lg - lc).abs() <= 1e-4 && (lg - native.loss).abs() <= 1e-4,
        "{lg} {lc}"
    );
    assert!(dw <= 1e-4 && dn <= 1e-4, "{dw} {dn}");
    assert!(max_diff(&common::sample(&pc), &native.sampled) <= 1e-4);
}
