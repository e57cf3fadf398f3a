//! The ops in a real browser: each kernel on the browser's WebGPU adapter against the CPU
//! backend compiled to wasm32, on awkward shapes, every GPU value read back asynchronously.
//! Runs headless in Chromium (`tests/run` does this; webdriver.json passes the flags):
//!
//! ```sh
//! CHROMEDRIVER=/usr/bin/chromedriver cargo test -p pupil --target wasm32-unknown-unknown --test web
//! ```
#![cfg(target_arch = "wasm32")]

use pupil::ops::{loss, matmul, norm, softmax};
use pupil::{Backend, DType, Tensor};
use rand::{Rng, SeedableRng};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// The browser's WebGPU adapter; a test that needs it fails without it (never falls back).
async fn webgpu() -> Backend {
    let backend = Backend::open_async(Some("webgpu"))
        .await
        .expect("WebGPU adapter (Chromium needs --enable-unsafe-webgpu)");
    console_log!("GPU tests run on: {}", backend.describe());
    backend
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// The same random tensor on the GPU and the CPU backend.
fn pair(gpu: &Backend, shape: &[usize], seed: u64) -> (Tensor, Tensor) {
    let data = random(shape.iter().product(), seed);
    (
        Tensor::from_slice(gpu, shape, &data).unwrap(),
        Tensor::from_slice(&Backend::Cpu, shape, &data).unwrap(),
    )
}

/// Assert |gpu - cpu| <= tol * (1 + |cpu|) elementwise; logs the largest difference.
async fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, tol: f32) {
    assert!(
        gpu.is_gpu() && !cpu.is_gpu(),
        "{what}: compare GPU with CPU"
    );
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shapes");
    let g = gpu.to_vec_async().await.unwrap();
    let c = cpu.to_vec_async().await.unwrap();
    let mut worst = 0.0f32;
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        let d = (a - b).abs();
        assert!(
            d <= tol * (1.0 + b.abs()),
            "{what}: element {i}: gpu {a} vs cpu {b}"
        );
        worst = worst.max(d);
    }
    console_log!("{what} {:?}: max |gpu - cpu| = {worst:.3e}", gpu.shape());
}

#[wasm_bindgen_test]
async fn matmul_matches_cpu_on_awkward_shapes() {
    let gpu = webgpu().await;
    for (i, &(m, k, n)) in [(1, 1, 1), (7, 33, 5), (33, 257, 65), (65, 7, 129)]
        .iter()
        .enumerate()
    {
        let (ag, ac) = pair(&gpu, &[m, k], 10 + i as u64);
        let (bg, bc) = pair(&gpu, &[k, n], 20 + i as u64);
        let got = matmul::matmul(&ag, &bg).unwrap();
        let want = matmul::matmul(&ac, &bc).unwrap();
        assert_close("matmul", &got, &want, 1e-5).await;
    }
    // Transposed operands and a batch.
    let (ag, ac) = pair(&gpu, &[3, 17, 31], 1);
    let (bg, bc) = pair(&gpu, &[3, 9, 17], 2);
    let got = matmul::matmul_t(&ag, &bg, true, true).unwrap();
    let want = matmul::matmul_t(&ac, &bc, true, true).unwrap();
    assert_close("matmul aT bT batched", &got, &want, 1e-5).await;
}

#[wasm_bindgen_test]
async fn softmax_and_log_softmax_match_cpu() {
    let gpu = webgpu().await;
    for (i, shape) in [[1, 1], [7, 257], [3, 1000]].iter().enumerate() {
        let (xg, xc) = pair(&gpu, shape, 30 + i as u64);
        let xg = pupil::ops::elementwise::scale(&xg, 8.0).unwrap();
        let xc = pupil::ops::elementwise::scale(&xc, 8.0).unwrap();
        let (yg, yc) = (
            softmax::softmax(&xg).unwrap(),
            softmax::softmax(&xc).unwrap(),
        );
        assert_close("softmax", &yg, &yc, 1e-6).await;
        let (lg, lc) = (
            softmax::log_softmax(&xg).unwrap(),
            softmax::log_softmax(&xc).unwrap(),
        );
        assert_close("log_softmax", &lg, &lc, 1e-5).await;
    }
}

#[wasm_bindgen_test]
async fn layer_norm_forward_and_backward_match_cpu() {
    let gpu = webgpu().await;
    for (i, &(rows, cols)) in [(1, 1), (5, 257), (33, 7)].iter().enumerate() {
        let seed = 40 + 4 * i as u64;
        let (xg, xc) = pair(&gpu, &[rows, cols], seed);
        let (gg, gc) = pair(&gpu, &[cols], seed + 1);
        let (bg, bc) = pair(&gpu, &[cols], seed + 2);
        let (dyg, dyc) = pair(&gpu, &[rows, cols], seed + 3);
        let (yg, mg, rg) = norm::layer_norm(&xg, &gg, &bg, 1e-5).unwrap();
        let (yc, mc, rc) = norm::layer_norm(&xc, &gc, &bc, 1e-5).unwrap();
        assert_close("layer_norm", &yg, &yc, 1e-4).await;
        let dg = norm::layer_norm_backward(&xg, &gg, &mg, &rg, &dyg).unwrap();
        let dc = norm::layer_norm_backward(&xc, &gc, &mc, &rc, &dyc).unwrap();
        assert_close("layer_norm dx", &dg.0, &dc.0, 1e-4).await;
        assert_close("layer_norm dgamma", &dg.1, &dc.1, 1e-4).await;
        assert_close("layer_norm dbeta", &dg.2, &dc.2, 1e-4).await;
    }
}

#[wasm_bindgen_test]
async fn cross_entropy_matches_cpu() {
    let gpu = webgpu().await;
    let (zg, zc) = pair(&gpu, &[13, 10], 50);
    let labels: Vec<f32> = (0..13).map(|i| (i * 7 % 10) as f32).collect();
    let yg = Tensor::from_slice(&gpu, &[13], &labels).unwrap();
    let yc = Tensor::from_slice(&Backend::Cpu, &[13], &labels).unwrap();
    let (lg, lc) = (
        loss::cross_entropy(&zg, &yg).unwrap(),
        loss::cross_entropy(&zc, &yc).unwrap(),
    );
    assert_close("cross_entropy", &lg, &lc, 1e-5).await;
    let lg = lg.item_async().await.unwrap();
    assert!(lg.is_finite() && lg > 0.0, "loss {lg}");
}

/// Without `shader-f16` (SwiftShader has none) f16 storage falls back to f32, and the
/// matmul runs on it; with it, the f16 tensor is stored as f16 and still matches.
#[wasm_bindgen_test]
async fn f16_storage_falls_back_to_f32_without_shader_f16() {
    let gpu = webgpu().await;
    let f16 = gpu.gpu().unwrap().capabilities().shader_f16;
    console_log!("shader-f16: {f16}");
    let a = random(9 * 40, 60);
    let b = random(40 * 11, 61);
    let ag = Tensor::from_slice_f16(&gpu, &[9, 40], &a).unwrap();
    let bg = Tensor::from_slice_f16(&gpu, &[40, 11], &b).unwrap();
    assert_eq!(ag.dtype(), if f16 { DType::F16 } else { DType::F32 });
    let ac = Tensor::from_slice(&Backend::Cpu, &[9, 40], &a).unwrap();
    let bc = Tensor::from_slice(&Backend::Cpu, &[40, 11], &b).unwrap();
    let tol = if f16 { 1e-2 } else { 1e-5 };
    let got = matmul::matmul(&ag, &bg).unwrap();
    assert_close(
        "matmul (f16 storage)",
        &got,
        &matmul::matmul(&ac, &bc).unwrap(),
        tol,
    )
    .await;
}

/// A synchronous read of a GPU tensor is refused with a typed error naming the async one.
#[wasm_bindgen_test]
async fn synchronous_readback_is_refused_with_the_way_out() {
    let gpu = webgpu().await;
    let t = Tensor::from_slice(&gpu, &[2], &[1.0, 2.0]).unwrap();
    let e = t.to_vec().unwrap_err();
    assert!(e.to_string().contains("to_vec_async"), "{e}");
    assert_eq!(t.to_vec_async().await.unwrap(), vec![1.0, 2.0]);
    gpu.gpu().unwrap().synchronize_async().await.unwrap();
}
