//! Test helpers: the shared GPU, random tensors, tolerance checks and finite differences.

use std::sync::{Arc, OnceLock};

use rand::{Rng, SeedableRng};

use crate::backend::Backend;
use crate::device::Gpu;
use crate::tensor::Tensor;

/// The GPU every test in this process shares. A test that needs a GPU fails (never falls
/// back to the CPU) when no adapter exists; CI provides lavapipe.
pub(crate) fn gpu() -> Backend {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    let g = GPU.get_or_init(|| {
        let wanted = std::env::var("PUPIL_ADAPTER").ok();
        let g = Gpu::new(wanted.as_deref())
            .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
        eprintln!(
            "GPU tests run on: {} | {}",
            g.adapter().name,
            g.adapter().backend
        );
        g
    });
    Backend::Gpu(g.clone())
}

/// Deterministic random values in [-scale, scale).
pub(crate) fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// The same random tensor on the CPU and the GPU.
pub(crate) fn pair(shape: &[usize], seed: u64) -> (Tensor, Tensor) {
    let data = random(shape.iter().product(), seed, 1.0);
    (
        Tensor::from_slice(&Backend::Cpu, shape, &data).unwrap(),
        Tensor::from_slice(&gpu(), shape, &data).unwrap(),
    )
}

/// Assert |g - c| <= abs + rel * |c| elementwise, naming the worst element.
#[track_caller]
pub(crate) fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel: f32, abs: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    let g = got.to_vec().unwrap();
    let w = want.to_vec().unwrap();
    let mut worst = (0usize, 0.0f32);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let excess = (a - b).abs() - (abs + rel * b.abs());
        assert!(!a.is_nan() || b.is_nan(), "{what}: NaN at {i}");
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}: element {i} got {} want {} (rel {rel}, abs {abs})",
        g[i],
        w[i]
    );
}

/// Central finite difference of a scalar function of `x`'s elements, compared with `grad`.
/// Runs in f64 on the CPU reference to keep the check about the rule, not about rounding.
#[track_caller]
pub(crate) fn check_gradient(
    what: &str,
    x: &[f32],
    grad: &[f32],
    f: impl Fn(&[f32]) -> f64,
    tol: f64,
) {
    let eps = 1e-3f32;
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        xp[i] = x[i] + eps;
        let up = f(&xp);
        xp[i] = x[i] - eps;
        let down = f(&xp);
        xp[i] = x[i];
        let numeric = (up - down) / (2.0 * eps as f64);
        let err = (numeric - grad[i] as f64).abs();
        assert!(
            err <= tol * (1.0 + numeric.abs()),
            "{what}: d/dx[{i}] numeric {numeric} analytic {}",
            grad[i]
        );
    }
}

/// Sum of `w[i] * y[i]`: a scalar probe that turns a tensor output into a loss for
/// finite differences (its gradient with respect to y is w).
pub(crate) fn probe(y: &[f32], w: &[f32]) -> f64 {
    y.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
}
