//! The Gaussian mechanism on a round's updates (DP-FedAvg, McMahan et al. 2018, "Learning
//! Differentially Private Recurrent Language Models"): clip each device's delta to L2 norm
//! C, sum, add N(0, (z·C)²) to every coordinate and divide by the expected number of
//! updates, a fixed denominator, so one device changes the result by at most C / expected.

use rand::Rng;
use rand_distr::StandardNormal;

use crate::aggregate::{clip_factors, common_len, per_coordinate, AggregateError, DeltaSource};

/// The mechanism's parameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GaussianParams {
    /// Largest L2 norm of one device's delta (C).
    pub clip_norm: f32,
    /// Noise standard deviation over the clip norm (z).
    pub noise_multiplier: f32,
    /// Updates expected per round (the sampling rate times the devices): the fixed
    /// denominator of the mean.
    pub expected_updates: f64,
}

impl GaussianParams {
    /// Checks the parameters are usable.
    pub fn check(&self) -> Result<(), AggregateError> {
        let ok = self.clip_norm.is_finite()
            && self.clip_norm > 0.0
            && self.noise_multiplier.is_finite()
            && self.noise_multiplier >= 0.0
            && self.expected_updates.is_finite()
            && self.expected_updates > 0.0;
        if ok {
            Ok(())
        } else {
            Err(AggregateError::BadPrivacy(format!("{self:?}")))
        }
    }
}

/// The noised mean of `deltas` under `p`, with noise drawn from `rng` (the server uses the
/// operating system's generator).
pub fn noised_mean<S: DeltaSource>(
    deltas: &[S],
    p: &GaussianParams,
    rng: &mut impl Rng,
) -> Result<Vec<f32>, AggregateError> {
    p.check()?;
    let n = common_len(deltas)?;
    let scales = clip_factors(deltas, p.clip_norm);
    let sigma = f64::from(p.noise_multiplier) * f64::from(p.clip_norm);
    Ok(per_coordinate(deltas, &scales, n, |column| {
        let sum: f64 = column.iter().map(|&v| f64::from(v)).sum();
        let noise: f64 = rng.sample(StandardNormal);
        ((sum + sigma * noise) / p.expected_updates) as f32
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn params(noise: f32) -> GaussianParams {
        GaussianParams {
            clip_norm: 1.0,
            noise_multiplier: noise,
            expected_updates: 4.0,
        }
    }

    /// Without noise it is the sum of clipped deltas over the fixed denominator: a delta
    /// of norm 10 counts as norm 1, and the mean divides by 4 whatever came.
    #[test]
    fn deltas_are_clipped_and_divided_by_the_expected_count() {
        let big = [6.0f32, 8.0];
        let small = [0.3f32, 0.4];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mean = noised_mean(&[&big[..], &small[..]], &params(0.0), &mut rng).unwrap();
        let want = [(0.6 + 0.3) / 4.0, (0.8 + 0.4) / 4.0];
        for (m, w) in mean.iter().zip(want) {
            assert!((m - w).abs() < 1e-6, "{mean:?}");
        }
    }

    /// The noise has the stated standard deviation z·C / expected per coordinate.
    #[test]
    fn the_noise_has_the_stated_spread() {
        let zeros = vec![0.0f32; 20_000];
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mean = noised_mean(&[zeros.as_slice()], &params(2.0), &mut rng).unwrap();
        let var = mean.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / mean.len() as f64;
        let want = 2.0 / 4.0;
        assert!((var.sqrt() - want).abs() < 0.02 * want, "{}", var.sqrt());
    }

    #[test]
    fn bad_parameters_and_no_deltas_are_errors() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut p = params(1.0);
        p.expected_updates = 0.0;
        assert!(noised_mean(&[&[1.0f32][..]], &p, &mut rng).is_err());
        assert_eq!(
            noised_mean::<&[f32]>(&[], &params(1.0), &mut rng),
            Err(AggregateError::Empty)
        );
    }
}
