//! Choosing local training data from the model's own predictions: self-training with
//! class-adaptive confidence thresholds, active selection of the most uncertain inputs, and a
//! curriculum that orders accepted samples easy to hard and widens over rounds.

/// Class probabilities of `n` inputs, row-major `[n, classes]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    probs: Vec<f32>,
    classes: usize,
}

impl Predictions {
    /// Softmax of `logits` (`[n, classes]`, row-major).
    pub fn from_logits(logits: &[f32], classes: usize) -> Predictions {
        let classes = classes.max(1);
        let mut probs = logits.to_vec();
        for row in probs.chunks_mut(classes) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            row.iter_mut().for_each(|v| *v /= sum);
        }
        Predictions { probs, classes }
    }

    /// Number of inputs.
    pub fn len(&self) -> usize {
        self.probs.len() / self.classes
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.probs.is_empty()
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Probabilities of input `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.probs[i * self.classes..(i + 1) * self.classes]
    }

    /// Predicted class of input `i` and its probability.
    pub fn top(&self, i: usize) -> (usize, f32) {
        self.row(i)
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (c, &p)| {
                if p > best.1 {
                    (c, p)
                } else {
                    best
                }
            })
    }

    /// Shannon entropy of input `i`'s prediction, in nats.
    pub fn entropy(&self, i: usize) -> f32 {
        -self
            .row(i)
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| p * p.ln())
            .sum::<f32>()
    }

    /// Difference between the two largest probabilities of input `i`.
    pub fn margin(&self, i: usize) -> f32 {
        let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for &p in self.row(i) {
            if p > a {
                b = a;
                a = p;
            } else if p > b {
                b = p;
            }
        }
        if b.is_finite() {
            a - b
        } else {
            1.0
        }
    }
}

/// A label the model gave itself (or an oracle gave it), with the model's confidence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Labelled {
    /// Index of the input in the local pool.
    pub index: usize,
    /// Class.
    pub class: usize,
    /// Probability the model gave `class` (1 for oracle labels).
    pub confidence: f32,
}

/// Self-training settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelfTraining {
    /// Base confidence threshold τ.
    pub threshold: f32,
    /// No class threshold goes below this.
    pub floor: f32,
    /// Lower the threshold of classes the model is still unsure about (FlexMatch); when
    /// false every class uses τ.
    pub per_class: bool,
}

impl Default for SelfTraining {
    fn default() -> Self {
        SelfTraining {
            threshold: 0.95,
            floor: 0.7,
            per_class: true,
        }
    }
}

impl SelfTraining {
    /// Thresholds per class. With `per_class`, class c gets `τ · M(β_c)`, where β_c is the
    /// number of inputs predicted as c above τ relative to the best-served class and
    /// M(x) = x / (2 − x) (Zhang et al. 2021, FlexMatch), never below `floor`: a class the
    /// model is still learning is not starved by a threshold tuned for the easy ones.
    pub fn thresholds(&self, pred: &Predictions) -> Vec<f32> {
        let mut sigma = vec![0usize; pred.classes()];
        for i in 0..pred.len() {
            let (c, p) = pred.top(i);
            if p >= self.threshold {
                sigma[c] += 1;
            }
        }
        let max = sigma.iter().copied().max().unwrap_or(0);
        sigma
            .iter()
            .map(|&s| {
                if !self.per_class || max == 0 {
                    return self.threshold;
                }
                let beta = s as f32 / max as f32;
                (self.threshold * beta / (2.0 - beta)).max(self.floor)
            })
            .collect()
    }

    /// Pseudo-labels: every input whose predicted class's probability reaches that class's
    /// threshold, skipping inputs `skip` marks.
    pub fn select(&self, pred: &Predictions, skip: &[bool]) -> Vec<Labelled> {
        let thresholds = self.thresholds(pred);
        (0..pred.len())
            .filter(|&i| !skip.get(i).copied().unwrap_or(false))
            .filter_map(|i| {
                let (class, confidence) = pred.top(i);
                (confidence >= thresholds[class]).then_some(Labelled {
                    index: i,
                    class,
                    confidence,
                })
            })
            .collect()
    }
}

/// How active selection scores uncertainty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncertainty {
    /// Highest entropy first.
    Entropy,
    /// Smallest margin between the top two classes first.
    Margin,
}

/// The `k` most uncertain inputs not marked in `skip`, most uncertain first (ties by index).
pub fn most_uncertain(pred: &Predictions, k: usize, by: Uncertainty, skip: &[bool]) -> Vec<usize> {
    let score = |i: usize| match by {
        Uncertainty::Entropy => pred.entropy(i),
        Uncertainty::Margin => -pred.margin(i),
    };
    let mut candidates: Vec<(f32, usize)> = (0..pred.len())
        .filter(|&i| !skip.get(i).copied().unwrap_or(false))
        .map(|i| (score(i), i))
        .collect();
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    candidates.into_iter().take(k).map(|(_, i)| i).collect()
}

/// Curriculum: sort `samples` easy to hard (most confident first) and keep the easiest
/// fraction for round `round` of `rounds` (0-based), widening linearly from `start` to all.
pub fn curriculum(samples: &mut Vec<Labelled>, round: usize, rounds: usize, start: f32) {
    samples.sort_by(|a, b| {
        b.confidence
            .total_cmp(&a.confidence)
            .then(a.index.cmp(&b.index))
    });
    let widen = if rounds > 1 {
        round.min(rounds - 1) as f32 / (rounds - 1) as f32
    } else {
        1.0
    };
    let fraction = (start + (1.0 - start) * widen).clamp(0.0, 1.0);
    // A small allowance keeps float rounding (0.3 * 10 = 3.0000002) from taking one more.
    let keep = ((samples.len() as f32 * fraction - 1e-4).ceil() as usize).min(samples.len());
    samples.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(rows: &[&[f32]]) -> Predictions {
        Predictions {
            classes: rows[0].len(),
            probs: rows.concat(),
        }
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let p = Predictions::from_logits(&[1.0, 2.0, 3.0, 1000.0, 0.0, -1000.0], 3);
        assert_eq!(p.len(), 2);
        for i in 0..2 {
            assert!((p.row(i).iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert_eq!(p.top(0).0, 2);
        assert_eq!(p.top(1), (0, 1.0));
    }

    #[test]
    fn entropy_and_margin() {
        let p = pred(&[&[0.5, 0.5, 0.0], &[1.0, 0.0, 0.0], &[0.6, 0.3, 0.1]]);
        assert!((p.entropy(0) - 2f32.ln()).abs() < 1e-6);
        assert_eq!(p.entropy(1), 0.0);
        assert_eq!(p.margin(0), 0.0);
        assert_eq!(p.margin(1), 1.0);
        assert!((p.margin(2) - 0.3).abs() < 1e-6);
    }

    #[test]
    fn global_threshold_keeps_only_confident() {
        let p = pred(&[&[0.97, 0.03], &[0.9, 0.1], &[0.02, 0.98], &[0.4, 0.6]]);
        let st = SelfTraining {
            threshold: 0.95,
            floor: 0.5,
            per_class: false,
        };
        let got: Vec<(usize, usize)> = st
            .select(&p, &[])
            .iter()
            .map(|l| (l.index, l.class))
            .collect();
        assert_eq!(got, vec![(0, 0), (2, 1)]);
        // Skipped inputs (already labelled by the oracle) are never pseudo-labelled.
        let got: Vec<usize> = st.select(&p, &[true]).iter().map(|l| l.index).collect();
        assert_eq!(got, vec![2]);
    }

    /// Class 1 is rarely predicted confidently: its threshold drops (to the floor) so its
    /// fairly confident inputs are kept, while class 0 keeps the strict threshold.
    #[test]
    fn per_class_thresholds_do_not_starve_rare_classes() {
        let p = pred(&[
            &[0.99, 0.01],
            &[0.98, 0.02],
            &[0.97, 0.03],
            &[0.90, 0.10],
            &[0.20, 0.80],
            &[0.04, 0.96],
        ]);
        let st = SelfTraining {
            threshold: 0.95,
            floor: 0.75,
            per_class: true,
        };
        let t = st.thresholds(&p);
        assert_eq!(t[0], 0.95);
        // β_1 = 1/3, M = (1/3) / (5/3) = 0.2, 0.95 * 0.2 = 0.19 -> floor 0.75.
        assert_eq!(t[1], 0.75);
        let got: Vec<usize> = st.select(&p, &[]).iter().map(|l| l.index).collect();
        assert_eq!(got, vec![0, 1, 2, 4, 5]);
    }

    #[test]
    fn active_picks_most_uncertain() {
        let p = pred(&[&[0.9, 0.1], &[0.5, 0.5], &[0.7, 0.3], &[0.55, 0.45]]);
        assert_eq!(most_uncertain(&p, 2, Uncertainty::Entropy, &[]), vec![1, 3]);
        assert_eq!(
            most_uncertain(&p, 3, Uncertainty::Margin, &[]),
            vec![1, 3, 2]
        );
        assert_eq!(
            most_uncertain(&p, 2, Uncertainty::Margin, &[false, true]),
            vec![3, 2]
        );
        assert_eq!(most_uncertain(&p, 10, Uncertainty::Entropy, &[]).len(), 4);
    }

    /// Margin and entropy disagree on a three-class input: a close top two beats a flat
    /// tail for margin, not for entropy.
    #[test]
    fn entropy_and_margin_rank_differently() {
        let p = pred(&[&[0.5, 0.45, 0.05], &[0.4, 0.3, 0.3]]);
        assert_eq!(most_uncertain(&p, 1, Uncertainty::Margin, &[]), vec![0]);
        assert_eq!(most_uncertain(&p, 1, Uncertainty::Entropy, &[]), vec![1]);
    }

    #[test]
    fn curriculum_widens_easy_to_hard() {
        let all: Vec<Labelled> = (0..10)
            .map(|i| Labelled {
                index: i,
                class: 0,
                confidence: i as f32 / 10.0,
            })
            .collect();
        let mut first = all.clone();
        curriculum(&mut first, 0, 3, 0.3);
        assert_eq!(
            first.iter().map(|l| l.index).collect::<Vec<_>>(),
            vec![9, 8, 7]
        );
        let mut mid = all.clone();
        curriculum(&mut mid, 1, 3, 0.3);
        assert_eq!(mid.len(), 7);
        assert_eq!(mid[0].index, 9);
        let mut last = all;
        curriculum(&mut last, 2, 3, 0.3);
        assert_eq!(last.len(), 10);
        assert_eq!(last[9].index, 0);
    }
}
