//! Aggregation rules on flat f32 deltas, pure and independent of the server:
//! weighted FedAvg, norm clipping, coordinate-wise trimmed mean and median, and
//! server optimizers (momentum, FedAdam) that turn an aggregate into a step.

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::dp::{noised_mean, GaussianParams};

/// Why deltas cannot be aggregated.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum AggregateError {
    /// There is nothing to aggregate.
    #[error("no deltas to aggregate; wait for updates before running a round")]
    Empty,
    /// A delta's length differs from the first one's.
    #[error("delta #{index} has {len} values but delta #0 has {expected}; all deltas must cover the same parameters")]
    LengthMismatch {
        /// The delta's position.
        index: usize,
        /// Its length.
        len: usize,
        /// The first delta's length.
        expected: usize,
    },
    /// The weights do not fit the deltas or do not sum to a positive number.
    #[error("weights are invalid ({detail}); pass one finite, non-negative weight per delta with a positive sum")]
    BadWeights {
        /// What is wrong.
        detail: String,
    },
    /// The trim fraction is not in `[0, 0.5)`.
    #[error(
        "trim fraction {0} is outside [0, 0.5); trim less than half of the updates from each side"
    )]
    BadTrim(f32),
    /// LoRA adapter pairs could not be merged.
    #[error("LoRA adapters could not be merged: {0}")]
    Adapters(String),
    /// The differential-privacy parameters are unusable.
    #[error("differential-privacy parameters are invalid ({0}); the clip norm and the expected updates must be positive, the noise multiplier at least 0")]
    BadPrivacy(String),
}

/// How the server combines a round's deltas.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Rule {
    /// Weighted mean (weights = example counts × staleness discount).
    FedAvg,
    /// Clip each delta's L2 norm to `clip_norm`, then drop the `trim` fraction
    /// of largest and smallest values per coordinate and average the rest.
    TrimmedMean {
        /// Largest L2 norm of one delta.
        clip_norm: f32,
        /// Fraction trimmed from each side, in `[0, 0.5)`.
        trim: f32,
    },
    /// Clip each delta's L2 norm to `clip_norm`, then take the coordinate-wise median.
    Median {
        /// Largest L2 norm of one delta.
        clip_norm: f32,
    },
    /// DP-FedAvg: clip each delta, sum, add Gaussian noise and divide by the expected
    /// number of updates (see [`crate::dp`]). Example counts are ignored.
    DpFedAvg(GaussianParams),
}

impl Rule {
    /// The rule named `fedavg`, `trimmed` (clip to `clip_norm`, then a 20 % trimmed mean) or
    /// `median` (clip to `clip_norm`, then the coordinate-wise median).
    pub fn from_name(name: &str, clip_norm: f32) -> Option<Rule> {
        match name {
            "fedavg" => Some(Rule::FedAvg),
            "trimmed" => Some(Rule::TrimmedMean {
                clip_norm,
                trim: 0.2,
            }),
            "median" => Some(Rule::Median { clip_norm }),
            _ => None,
        }
    }
}

mod stream;

pub(crate) use stream::{clip_factors, common_len, per_coordinate};
pub use stream::{DeltaSource, BLOCK};

/// Checks FedAvg's weights: one finite, non-negative weight per delta with a positive
/// sum; returns the sum.
fn check_weights(weights: &[f64], deltas: usize) -> Result<f64, AggregateError> {
    if weights.len() != deltas {
        return Err(AggregateError::BadWeights {
            detail: format!("{} weights for {} deltas", weights.len(), deltas),
        });
    }
    let total: f64 = weights.iter().sum();
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || total <= 0.0 || !total.is_finite() {
        return Err(AggregateError::BadWeights {
            detail: format!("sum {total}"),
        });
    }
    Ok(total)
}

/// The weighted mean of `deltas`, accumulated in f64.
pub fn fedavg(deltas: &[&[f32]], weights: &[f64]) -> Result<Vec<f32>, AggregateError> {
    aggregate(Rule::FedAvg, deltas, weights)
}

/// The L2 norm of `x`, accumulated in f64.
pub fn l2_norm(x: &[f32]) -> f64 {
    x.squared_norm().sqrt()
}

/// Scales `delta` down so its L2 norm is at most `max_norm`; returns the factor.
pub fn clip_norm(delta: &mut [f32], max_norm: f32) -> f32 {
    let factor = stream::clip_factor((&*delta).squared_norm(), max_norm);
    if factor != 1.0 {
        delta.iter_mut().for_each(|v| *v *= factor);
    }
    factor
}

/// The coordinate-wise mean after dropping `floor(trim × n)` of the largest
/// and of the smallest values of each coordinate.
pub fn trimmed_mean(deltas: &[&[f32]], trim: f32) -> Result<Vec<f32>, AggregateError> {
    let rule = Rule::TrimmedMean {
        clip_norm: f32::INFINITY,
        trim,
    };
    aggregate(rule, deltas, &[])
}

/// The coordinate-wise median (the mean of the middle two for an even count).
pub fn median(deltas: &[&[f32]]) -> Result<Vec<f32>, AggregateError> {
    aggregate(
        Rule::Median {
            clip_norm: f32::INFINITY,
        },
        deltas,
        &[],
    )
}

/// The mean of the values of `sorted` left after dropping `cut` from each end.
fn trimmed(sorted: &[f32], cut: usize) -> f32 {
    let kept = &sorted[cut..sorted.len() - cut];
    (kept.iter().map(|&v| f64::from(v)).sum::<f64>() / kept.len() as f64) as f32
}

/// The median of `sorted` (the mean of the middle two for an even count).
fn middle(sorted: &[f32]) -> f32 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Combines `deltas` by `rule`; `weights` are used by FedAvg only. The DP rule draws its
/// noise from the operating system's generator.
pub fn aggregate(
    rule: Rule,
    deltas: &[&[f32]],
    weights: &[f64],
) -> Result<Vec<f32>, AggregateError> {
    aggregate_sources(rule, deltas, weights)
}

/// [`aggregate`] over deltas read a block at a time ([`DeltaSource`]): what a server
/// round uses, so that its memory does not grow with one model-sized copy per update.
pub fn aggregate_sources<S: DeltaSource>(
    rule: Rule,
    deltas: &[S],
    weights: &[f64],
) -> Result<Vec<f32>, AggregateError> {
    let len = common_len(deltas)?;
    let sort = |c: &mut [f32]| c.sort_unstable_by(f32::total_cmp);
    match rule {
        Rule::FedAvg => {
            let total = check_weights(weights, deltas.len())?;
            let ones = vec![1.0; deltas.len()];
            Ok(per_coordinate(deltas, &ones, len, |column| {
                let sum: f64 = column
                    .iter()
                    .zip(weights)
                    .map(|(&v, w)| w * f64::from(v))
                    .sum();
                (sum / total) as f32
            }))
        }
        Rule::TrimmedMean { clip_norm, trim } => {
            if !(0.0..0.5).contains(&trim) {
                return Err(AggregateError::BadTrim(trim));
            }
            let cut = (trim * deltas.len() as f32).floor() as usize;
            let scales = clip_factors(deltas, clip_norm);
            Ok(per_coordinate(deltas, &scales, len, |column| {
                sort(column);
                trimmed(column, cut)
            }))
        }
        Rule::Median { clip_norm } => {
            let scales = clip_factors(deltas, clip_norm);
            Ok(per_coordinate(deltas, &scales, len, |column| {
                sort(column);
                middle(column)
            }))
        }
        Rule::DpFedAvg(p) => noised_mean(deltas, &p, &mut StdRng::from_os_rng()),
    }
}

/// The aggregation weight of an update: its example count, discounted by
/// `1 / sqrt(1 + staleness)` for updates computed on an older version. The
/// count is what the device claims: the server caps it first
/// (`ServerConfig::max_examples`).
pub fn staleness_weight(examples: u64, staleness: u64) -> f64 {
    examples.max(1) as f64 / (1.0 + staleness as f64).sqrt()
}

/// A server optimizer: turns each round's aggregated delta (a pseudo-gradient
/// pointing downhill) into the step applied to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerOpt {
    /// Apply the aggregate as is.
    Plain,
    /// Heavy-ball momentum: `v = beta·v + d`, step `lr·v`.
    Momentum {
        /// Server learning rate.
        lr: f32,
        /// Momentum coefficient.
        beta: f32,
        /// Velocity, one per parameter (empty until the first step).
        velocity: Vec<f32>,
    },
    /// FedAdam (Reddi et al. 2021): Adam moments of the aggregate.
    Adam {
        /// Server learning rate.
        lr: f32,
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Adaptivity (added to the root of the second moment).
        eps: f32,
        /// First moment (empty until the first step).
        m: Vec<f32>,
        /// Second moment (empty until the first step).
        v: Vec<f32>,
    },
}

impl ServerOpt {
    /// FedAdam with the paper's defaults for a given learning rate.
    pub fn adam(lr: f32) -> Self {
        ServerOpt::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-3,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// The step for aggregate `delta`, updating the optimizer state. State of
    /// another length (the model changed) is reset.
    pub fn step(&mut self, delta: &[f32]) -> Vec<f32> {
        let n = delta.len();
        let reset = |s: &mut Vec<f32>| {
            if s.len() != n {
                *s = vec![0.0; n];
            }
        };
        match self {
            ServerOpt::Plain => delta.to_vec(),
            ServerOpt::Momentum { lr, beta, velocity } => {
                reset(velocity);
                velocity
                    .iter_mut()
                    .zip(delta)
                    .map(|(v, &d)| {
                        *v = *beta * *v + d;
                        *lr * *v
                    })
                    .collect()
            }
            ServerOpt::Adam {
                lr,
                beta1,
                beta2,
                eps,
                m,
                v,
            } => {
                reset(m);
                reset(v);
                m.iter_mut()
                    .zip(v.iter_mut())
                    .zip(delta)
                    .map(|((m, v), &d)| {
                        *m = *beta1 * *m + (1.0 - *beta1) * d;
                        *v = *beta2 * *v + (1.0 - *beta2) * d * d;
                        *lr * *m / (v.sqrt() + *eps)
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `honest` deltas near `center` (±0.1) plus `bad` deltas made by `attack`.
    fn population(honest: usize, bad: usize, attack: impl Fn(f32) -> f32) -> Vec<Vec<f32>> {
        let center = [1.0f32, -2.0, 0.5, 0.0];
        let mut out = Vec::new();
        for i in 0..honest + bad {
            let noise = ((i * 7919) % 21) as f32 / 100.0 - 0.1;
            let d: Vec<f32> = center.iter().map(|c| c + noise).collect();
            out.push(if i < honest {
                d
            } else {
                d.iter().map(|&v| attack(v)).collect()
            });
        }
        out
    }

    fn refs(x: &[Vec<f32>]) -> Vec<&[f32]> {
        x.iter().map(Vec::as_slice).collect()
    }

    fn within(agg: &[f32], bound: f32) -> bool {
        let center = [1.0f32, -2.0, 0.5, 0.0];
        agg.iter().zip(center).all(|(a, c)| (a - c).abs() <= bound)
    }

    #[test]
    fn fedavg_weights_by_examples() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        let m = fedavg(&[&a, &b], &[3.0, 1.0]).unwrap();
        assert_eq!(m, [0.75, 0.25]);
    }

    #[test]
    fn fedavg_rejects_bad_input() {
        assert_eq!(fedavg(&[], &[]), Err(AggregateError::Empty));
        assert!(matches!(
            fedavg(&[&[1.0], &[1.0, 2.0]], &[1.0, 1.0]),
            Err(AggregateError::LengthMismatch { index: 1, .. })
        ));
        assert!(matches!(
            fedavg(&[&[1.0]], &[0.0]),
            Err(AggregateError::BadWeights { .. })
        ));
        assert!(matches!(
            fedavg(&[&[1.0]], &[]),
            Err(AggregateError::BadWeights { .. })
        ));
        assert_eq!(
            trimmed_mean(&[&[1.0]], 0.5),
            Err(AggregateError::BadTrim(0.5))
        );
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut d = [3.0f32, 4.0];
        assert_eq!(clip_norm(&mut d, 1.0), 0.2);
        assert!((l2_norm(&d) - 1.0).abs() < 1e-6);
        let mut small = [0.3f32, 0.4];
        assert_eq!(clip_norm(&mut small, 1.0), 1.0);
        assert_eq!(small, [0.3, 0.4]);
    }

    #[test]
    fn robust_rules_resist_scaled_and_sign_flipped_updates() {
        type Attack = fn(f32) -> f32;
        let attacks: [(&str, Attack); 2] = [("x100", |v| v * 100.0), ("flip", |v| -100.0 * v)];
        for (name, attack) in attacks {
            for bad in [2usize, 4] {
                // 10% and 20% of 20 updates are poisoned.
                let pop = population(20 - bad, bad, attack);
                let deltas = refs(&pop);
                let weights = vec![1.0; deltas.len()];
                let avg = aggregate(Rule::FedAvg, &deltas, &weights).unwrap();
                assert!(
                    !within(&avg, 0.5),
                    "{name}/{bad}: FedAvg should be dragged away"
                );
                let trimmed = aggregate(
                    Rule::TrimmedMean {
                        clip_norm: 5.0,
                        trim: 0.2,
                    },
                    &deltas,
                    &weights,
                )
                .unwrap();
                assert!(
                    within(&trimmed, 0.15),
                    "{name}/{bad}: trimmed mean {trimmed:?}"
                );
                let med = aggregate(Rule::Median { clip_norm: 5.0 }, &deltas, &weights).unwrap();
                assert!(within(&med, 0.15), "{name}/{bad}: median {med:?}");
            }
        }
    }

    #[test]
    fn robust_rules_ignore_claimed_example_counts() {
        let pop = population(5, 0, |v| v);
        let deltas = refs(&pop);
        let even = vec![1.0; deltas.len()];
        let mut greedy = even.clone();
        greedy[4] = staleness_weight(u64::MAX, 0);
        for rule in [
            Rule::TrimmedMean {
                clip_norm: 5.0,
                trim: 0.2,
            },
            Rule::Median { clip_norm: 5.0 },
        ] {
            assert_eq!(
                aggregate(rule, &deltas, &greedy).unwrap(),
                aggregate(rule, &deltas, &even).unwrap(),
                "{rule:?}"
            );
        }
    }

    #[test]
    fn median_of_even_count_is_the_middle_mean() {
        assert_eq!(median(&[&[1.0], &[5.0], &[3.0], &[100.0]]).unwrap(), [4.0]);
    }

    #[test]
    fn staleness_discounts_old_updates() {
        assert_eq!(staleness_weight(100, 0), 100.0);
        assert_eq!(staleness_weight(100, 3), 50.0);
        assert_eq!(staleness_weight(0, 0), 1.0);
    }

    #[test]
    fn server_optimizers_step() {
        let mut plain = ServerOpt::Plain;
        assert_eq!(plain.step(&[1.0, -1.0]), [1.0, -1.0]);
        let mut mom = ServerOpt::Momentum {
            lr: 1.0,
            beta: 0.5,
            velocity: Vec::new(),
        };
        assert_eq!(mom.step(&[1.0]), [1.0]);
        assert_eq!(mom.step(&[1.0]), [1.5]);
        let mut adam = ServerOpt::adam(0.1);
        let s = adam.step(&[1.0, -1.0, 0.0]);
        // The first Adam step moves each coordinate by about lr·(1−β1)/sqrt(1−β2) in the delta's direction.
        assert!(s[0] > 0.0 && s[1] < 0.0 && s[2] == 0.0, "{s:?}");
        assert!((s[0] - 0.1 * 0.1 / (0.1 + 1e-3)).abs() < 1e-4, "{s:?}");
        assert_eq!(adam.step(&[1.0]).len(), 1);
    }
}
