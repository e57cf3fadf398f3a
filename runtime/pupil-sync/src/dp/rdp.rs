//! A Rényi-DP accountant for the Poisson-sampled Gaussian mechanism (Mironov, Talwar and
//! Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism"), with the
//! conversion to (ε, δ) of Canonne, Kamath and Steinke 2020 (Proposition 12 of
//! arXiv:2004.00010). It follows `dp-accounting`'s `RdpAccountant` (PyPI, Google's
//! differential-privacy library) order for order, and a test checks the two agree.

use thiserror::Error;

/// Why privacy cannot be accounted.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum AccountError {
    /// The sampling rate is outside `[0, 1]`.
    #[error("sampling rate {0} is outside [0, 1]; pass the fraction of devices in a round")]
    BadRate(f64),
    /// The noise multiplier is negative or not finite.
    #[error("noise multiplier {0} must be finite and at least 0")]
    BadNoise(f64),
    /// δ is outside `(0, 1)`.
    #[error("delta {0} must be in (0, 1); a common choice is below 1 / the number of devices")]
    BadDelta(f64),
}

/// The RDP orders `dp-accounting` uses by default: 1.1 to 10.9 in steps of 0.1, 11 to 63,
/// then 128, 256, 512 and 1024.
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((11..64).map(f64::from))
        .chain([128.0, 256.0, 512.0, 1024.0])
        .collect()
}

/// The privacy spent so far: the RDP of every composed step at each order.
#[derive(Clone, Debug, PartialEq)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        RdpAccountant::new(default_orders())
    }
}

impl RdpAccountant {
    /// An accountant over `orders` (each above 1) with nothing spent.
    pub fn new(orders: Vec<f64>) -> Self {
        let rdp = vec![0.0; orders.len()];
        RdpAccountant { orders, rdp }
    }

    /// Composes `steps` runs of the Gaussian mechanism with noise multiplier `noise`
    /// (noise standard deviation over sensitivity) on a Poisson sample at rate `q`.
    pub fn compose_sampled_gaussian(
        &mut self,
        q: f64,
        noise: f64,
        steps: u64,
    ) -> Result<(), AccountError> {
        if !(0.0..=1.0).contains(&q) {
            return Err(AccountError::BadRate(q));
        }
        if !noise.is_finite() || noise < 0.0 {
            return Err(AccountError::BadNoise(noise));
        }
        for (rdp, &order) in self.rdp.iter_mut().zip(&self.orders) {
            *rdp += steps as f64 * sampled_gaussian_rdp(q, noise, order);
        }
        Ok(())
    }

    /// The orders and the RDP spent at each.
    pub fn spent(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.orders.iter().copied().zip(self.rdp.iter().copied())
    }

    /// The smallest ε over the orders such that the steps so far are (ε, δ)-DP, and the
    /// order that gives it.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), AccountError> {
        if !(delta > 0.0 && delta < 1.0) {
            return Err(AccountError::BadDelta(delta));
        }
        let mut best = (f64::INFINITY, 0.0);
        for (&r, &a) in self.rdp.iter().zip(&self.orders) {
            let eps = if r < 0.0 || delta * delta + (-r).exp_m1() > 0.0 {
                // Nothing spent, or a KL bound already gives δ.
                0.0
            } else if a > 1.01 {
                r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
            } else {
                f64::INFINITY
            };
            if eps < best.0 {
                best = (eps, a);
            }
        }
        Ok((best.0.max(0.0), best.1))
    }
}

/// The RDP at `order` of one step of the Poisson-sampled Gaussian mechanism.
fn sampled_gaussian_rdp(q: f64, noise: f64, order: f64) -> f64 {
    if q == 0.0 {
        0.0
    } else if noise == 0.0 || order.is_infinite() {
        f64::INFINITY
    } else if q == 1.0 {
        order / (2.0 * noise * noise)
    } else if order.fract() == 0.0 {
        log_a_int(q, noise, order as u64) / (order - 1.0)
    } else {
        log_a_frac(q, noise, order) / (order - 1.0)
    }
}

/// `log(exp(x) + exp(y))` without overflow.
fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    if a == f64::NEG_INFINITY {
        return b;
    }
    (a - b).exp().ln_1p() + b
}

/// `log |binomial(n, k)|` for real `n` and `k`.
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `log(erfc(x))`, accurate far into the tail: where `erfc` leaves the normal range (from
/// x ≈ 26.5 it is subnormal and loses digits, then underflows), the asymptotic series of
/// `erfc` at infinity.
fn log_erfc(x: f64) -> f64 {
    let r = libm::erfc(x);
    if r >= f64::MIN_POSITIVE {
        return r.ln();
    }
    let x2 = x * x;
    -std::f64::consts::PI.ln() / 2.0 - x.ln() - x2 - 0.5 / x2 + 0.625 / (x2 * x2)
        - 37.0 / 24.0 / (x2 * x2 * x2)
        + 353.0 / 64.0 / (x2 * x2 * x2 * x2)
}

/// `log(A_α)` for an integer order (Mironov et al. 2019, Section 3.3).
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    (0..=alpha).fold(f64::NEG_INFINITY, |acc, i| {
        let i_f = i as f64;
        let coef = log_comb(alpha as f64, i_f) + i_f * log_q + (alpha - i) as f64 * log_1mq;
        log_add(acc, coef + (i_f * i_f - i_f) / (2.0 * sigma * sigma))
    })
}

/// Most terms of the fractional-order series before it is declared divergent.
const MAX_TERMS_FRAC: usize = 1000;

/// `log(A_α)` for a fractional order: the two half-line integrals as series (Section 3.3
/// of arXiv:1908.10530). Infinite (the order is skipped) if the series does not converge.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let half = 0.5f64.ln();
    for i in 0..MAX_TERMS_FRAC {
        let i = i as f64;
        let coef = log_comb(alpha, i);
        let j = alpha - i;
        let log_t0 = coef + i * log_q + j * log_1mq;
        let log_t1 = coef + j * log_q + i * log_1mq;
        let log_e0 = half + log_erfc((i - z0) / (std::f64::consts::SQRT_2 * sigma));
        let log_e1 = half + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        (last_s0, last_s1) = (log_s0, log_s1);
    }
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without sampling the Gaussian mechanism's RDP is α / (2σ²) exactly.
    #[test]
    fn the_full_gaussian_mechanism_has_its_closed_form() {
        let mut acc = RdpAccountant::new(vec![2.0, 8.0]);
        acc.compose_sampled_gaussian(1.0, 2.0, 3).unwrap();
        assert_eq!(acc.rdp, [3.0 * 2.0 / 8.0, 3.0 * 8.0 / 8.0]);
    }

    /// Subsampling amplifies privacy: the sampled mechanism spends less than the full one,
    /// and more steps or less noise spend more.
    #[test]
    fn sampling_amplifies_and_composition_adds_up() {
        let eps = |q: f64, noise: f64, steps: u64| {
            let mut acc = RdpAccountant::default();
            acc.compose_sampled_gaussian(q, noise, steps).unwrap();
            acc.epsilon(1e-5).unwrap().0
        };
        assert!(eps(0.01, 1.0, 100) < eps(1.0, 1.0, 100));
        assert!(eps(0.01, 1.0, 100) < eps(0.01, 1.0, 200));
        assert!(eps(0.01, 1.0, 100) < eps(0.01, 0.8, 100));
        assert_eq!(eps(0.0, 1.0, 100), 0.0);
        assert_eq!(eps(0.1, 0.0, 1), f64::INFINITY);
    }

    /// The integer and fractional series agree where they meet (the fractional series at
    /// orders next to an integer approaches the exact sum).
    #[test]
    fn the_fractional_series_meets_the_integer_sum() {
        let int = log_a_int(0.05, 1.1, 3);
        let frac = log_a_frac(0.05, 1.1, 3.0 + 1e-9);
        assert!((int - frac).abs() < 1e-6, "{int} {frac}");
    }

    #[test]
    fn bad_parameters_are_errors() {
        let mut acc = RdpAccountant::default();
        assert_eq!(
            acc.compose_sampled_gaussian(1.5, 1.0, 1),
            Err(AccountError::BadRate(1.5))
        );
        assert!(acc.compose_sampled_gaussian(0.5, f64::NAN, 1).is_err());
        assert_eq!(acc.epsilon(0.0), Err(AccountError::BadDelta(0.0)));
    }
}
