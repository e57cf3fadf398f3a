//! The CPU fallback in a real browser: where the browser offers no WebGPU adapter (Chromium
//! without `--enable-unsafe-webgpu`, as `tests/webdriver-no-webgpu.json` starts it) the
//! default backend is the CPU one and the shipped student classifies on it; where there is
//! an adapter, the default is WebGPU. `tests/run` runs it without WebGPU:
//!
//! ```sh
//! WASM_BINDGEN_TEST_WEBDRIVER_JSON=$PWD/tests/webdriver-no-webgpu.json \
//!     cargo test -p pupil-web --target wasm32-unknown-unknown --test fallback
//! ```
#![cfg(target_arch = "wasm32")]

mod common;

use common::{CLASSES, DIGITS, PIXELS};
use pupil_web::{backend_kind, open_backend, Classifier};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const STUDENT: &[u8] = include_bytes!("../../../models/mnist-student.pupil");
const DIGIT_BYTES: &[u8] = include_bytes!("fixtures/mnist-test-100.bin");

#[wasm_bindgen_test]
async fn default_backend_is_webgpu_else_cpu_and_the_student_runs_on_it() {
    let webgpu = pupil::Backend::open_async(Some("webgpu")).await.is_ok();
    let backend = open_backend(None).await.unwrap();
    let kind = backend_kind(&backend);
    console_log!("WebGPU adapter present: {webgpu}; default backend: {kind}");
    assert_eq!(kind, if webgpu { "webgpu" } else { "cpu" });
    let (labels, pixels) = common::digits(DIGIT_BYTES);
    let model = Classifier::load(STUDENT.to_vec(), &backend).unwrap();
    let probs = model.classify(&pixels[..10 * PIXELS]).await.unwrap();
    assert_eq!(probs.len(), 10 * CLASSES);
    let correct = probs
        .chunks(CLASSES)
        .zip(&labels)
        .filter(|(row, &y)| {
            (0..CLASSES).fold(0, |b, j| if row[j] > row[b] { j } else { b }) as u32 == y
        })
        .count();
    console_log!("{kind}: {correct} of 10 digits right (of the {DIGITS} in the fixture)");
    assert!(correct >= 9, "{correct}");
}
