//! Choosing the next token from last-position logits on the host: greedy, or temperature,
//! top-k and top-p (nucleus) sampling with a seeded RNG.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the lowest id on ties).
    Greedy,
    /// A draw from `softmax(logits / temperature)` restricted to the `top_k` most likely
    /// tokens (0: all), then to the smallest set whose probability reaches `top_p`.
    Random {
        /// Softmax temperature, above 0.
        temperature: f32,
        /// Keep this many of the most likely tokens; 0 keeps all.
        top_k: usize,
        /// Keep the most likely tokens until their probability reaches this, in (0, 1].
        top_p: f32,
    },
}

/// Draws tokens with one [`Sampling`] rule and a seeded RNG (same seed, same tokens).
#[derive(Clone, Debug)]
pub struct Sampler {
    rule: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `rule` seeded with `seed`; fails on a temperature or top-p out of range.
    pub fn new(rule: Sampling, seed: u64) -> Result<Sampler> {
        if let Sampling::Random {
            temperature, top_p, ..
        } = rule
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::Invalid(format!(
                    "temperature must be a positive number, got {temperature}; use greedy decoding for temperature 0"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::Invalid(format!(
                    "top-p must be in (0, 1], got {top_p}"
                )));
            }
        }
        Ok(Sampler {
            rule,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next token id for `logits` (one row of V values).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        let Sampling::Random {
            temperature,
            top_k,
            top_p,
        } = self.rule
        else {
            return argmax(logits);
        };
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| !logits[i].is_nan()).collect();
        if order.is_empty() {
            return Err(no_logits(logits.len()));
        }
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if top_k > 0 {
            order.truncate(top_k);
        }
        let top = f64::from(logits[order[0]]);
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(logits[i]) - top) / f64::from(temperature)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut kept = 0;
        let mut mass = 0.0;
        for w in &weights {
            kept += 1;
            mass += w / total;
            if mass >= f64::from(top_p) {
                break;
            }
        }
        let kept_total: f64 = weights[..kept].iter().sum();
        let mut u = self.rng.random::<f64>() * kept_total;
        for (&i, w) in order.iter().zip(&weights[..kept]) {
            if u < *w {
                return token(i);
            }
            u -= w;
        }
        token(order[kept - 1])
    }
}

/// The index of the largest logit (the first on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> Result<u32> {
    let best = logits.iter().enumerate().filter(|(_, v)| !v.is_nan()).fold(
        None,
        |best: Option<(usize, f32)>, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        },
    );
    best.map_or_else(|| Err(no_logits(logits.len())), |(i, _)| token(i))
}

fn token(i: usize) -> Result<u32> {
    u32::try_from(i).map_err(|_| Error::Invalid(format!("token id {i} does not fit in u32")))
}

fn no_logits(n: usize) -> Error {
    Error::Invalid(format!(
        "cannot sample from {n} logits that are all NaN or absent; the model's output is broken"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.5, 2.0, f32::NAN, 2.0]).unwrap(), 1);
        assert!(argmax(&[f32::NAN]).is_err());
        assert!(argmax(&[]).is_err());
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let logits = [0.1, 3.0, 2.9, -1.0, 2.5];
        let rule = |top_k, top_p| Sampling::Random {
            temperature: 1.0,
            top_k,
            top_p,
        };
        let mut s = Sampler::new(rule(1, 1.0), 7).unwrap();
        assert!((0..20).all(|_| s.sample(&logits).unwrap() == 1));
        let draw = |seed| {
            let mut s = Sampler::new(rule(0, 1.0), seed).unwrap();
            (0..50)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert!(draw(3).iter().any(|&t| t != 1), "temperature 1 explores");
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Softmax of these is about [0.665, 0.245, 0.090]: top-p 0.7 keeps ids 0 and 1.
        let logits = [2.0, 1.0, 0.0];
        let mut s = Sampler::new(
            Sampling::Random {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.7,
            },
            1,
        )
        .unwrap();
        let draws: Vec<u32> = (0..400).map(|_| s.sample(&logits).unwrap()).collect();
        assert!(draws.iter().all(|&t| t < 2));
        assert!(draws.contains(&1));
    }

    #[test]
    fn bad_settings_are_errors() {
        let rule = |temperature, top_p| Sampling::Random {
            temperature,
            top_k: 0,
            top_p,
        };
        assert!(Sampler::new(rule(0.0, 1.0), 0).is_err());
        assert!(Sampler::new(rule(1.0, 0.0), 0).is_err());
        assert!(Sampler::new(rule(1.0, 1.5), 0).is_err());
    }
}
