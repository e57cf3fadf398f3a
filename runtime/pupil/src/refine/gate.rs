//! The quality gate: before a refinement is kept, the model is evaluated on held-out data
//! (anchors it never trained on and, when the app has some, labelled local examples); a
//! refinement that makes either worse by more than the tolerance is rolled back.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::data::Split;
use crate::error::Result;
use crate::format::ModelFile;
use crate::models::classifier::{Model, Train};
use crate::train;

/// Held-out accuracies (fractions), where there is data for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GateMetrics {
    /// Accuracy on the held-out anchors (what the model knew).
    pub anchors: Option<f32>,
    /// Accuracy on labelled held-out local data.
    pub local: Option<f32>,
}

/// Whether to keep a refinement, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Keep it.
    pub accept: bool,
    /// In words.
    pub reason: String,
}

/// Compare `after` with `before`: reject when any metric fell by more than `tolerance`.
pub fn judge(before: GateMetrics, after: GateMetrics, tolerance: f32) -> Decision {
    let mut worse = Vec::new();
    let mut checked = Vec::new();
    for (name, b, a) in [
        ("anchors", before.anchors, after.anchors),
        ("local", before.local, after.local),
    ] {
        let (Some(b), Some(a)) = (b, a) else { continue };
        checked.push(format!("{name} {:.1}% -> {:.1}%", b * 100.0, a * 100.0));
        // NaN compares as neither: a broken model never passes.
        if a.partial_cmp(&(b - tolerance)).is_none_or(|o| o.is_lt()) {
            worse.push(name);
        }
    }
    if checked.is_empty() {
        return Decision {
            accept: true,
            reason: "no held-out data to check".into(),
        };
    }
    Decision {
        accept: worse.is_empty(),
        reason: if worse.is_empty() {
            checked.join(", ")
        } else {
            format!(
                "{} got worse by more than {:.1} points ({}): rolled back",
                worse.join(" and "),
                tolerance * 100.0,
                checked.join(", ")
            )
        },
    }
}

/// The upstream gate for classifier versions: a candidate (the aggregate of a round) is
/// published only if its accuracy on a held-out set the devices never see falls by at most
/// `tolerance` from the current version's. What `pupil demo` runs on its server; an app's
/// server wraps [`HoldoutGate::judge`] in its own gate type.
#[derive(Clone, Debug)]
pub struct HoldoutGate {
    /// Labelled examples no device trains on.
    pub holdout: Split,
    /// Largest drop (fraction) let through.
    pub tolerance: f32,
}

/// A [`HoldoutGate`]'s verdict with both accuracies.
#[derive(Clone, Debug, PartialEq)]
pub struct HoldoutVerdict {
    /// Publish the candidate.
    pub accept: bool,
    /// The current version's holdout accuracy.
    pub before: f32,
    /// The candidate's.
    pub after: f32,
    /// In words.
    pub reason: String,
}

impl HoldoutGate {
    /// Scores `candidate` and `current` (classifier files) on the CPU backend. A file that
    /// is not a classifier of the holdout's shape is an error, which a server should treat as
    /// a rejection.
    pub fn judge(&self, candidate: &ModelFile, current: &ModelFile) -> Result<HoldoutVerdict> {
        let score = |f: &ModelFile| -> Result<f32> {
            let m = Model::open(f, &Backend::Cpu, Train::All)?;
            train::accuracy(&m.net, &m.params, &self.holdout, 1000)
        };
        let (after, before) = (score(candidate)?, score(current)?);
        // NaN compares as neither: a broken candidate never passes.
        let accept = after
            .partial_cmp(&(before - self.tolerance))
            .is_some_and(|o| o.is_ge());
        Ok(HoldoutVerdict {
            accept,
            before,
            after,
            reason: format!("holdout {:.2}% -> {:.2}%", before * 100.0, after * 100.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(anchors: f32, local: Option<f32>) -> GateMetrics {
        GateMetrics {
            anchors: Some(anchors),
            local,
        }
    }

    #[test]
    fn keeps_improvements_and_small_noise() {
        assert!(judge(m(0.95, Some(0.6)), m(0.95, Some(0.8)), 0.01).accept);
        assert!(judge(m(0.95, None), m(0.945, None), 0.01).accept);
    }

    #[test]
    fn rejects_forgetting_or_local_damage() {
        let d = judge(m(0.95, Some(0.6)), m(0.90, Some(0.9)), 0.01);
        assert!(!d.accept);
        assert!(d.reason.starts_with("anchors got worse"), "{}", d.reason);
        assert!(!judge(m(0.95, Some(0.6)), m(0.95, Some(0.5)), 0.01).accept);
        // NaN (a broken model) never passes.
        assert!(!judge(m(0.95, None), m(f32::NAN, None), 0.01).accept);
    }

    #[test]
    fn nothing_to_check_passes() {
        assert!(judge(GateMetrics::default(), GateMetrics::default(), 0.0).accept);
    }

    #[test]
    fn the_holdout_gate_publishes_only_what_keeps_the_holdout() {
        use crate::format::DType;
        use crate::models::classifier::{Arch, ClassifierSpec};
        let spec = ClassifierSpec::new(Arch::Mlp, &[8], 3);
        let model = Model::new("m", &spec, &Backend::Cpu, 1).unwrap();
        let file = |m: &Model| {
            ModelFile::from_bytes(
                m.to_builder(DType::F32, 1, None)
                    .unwrap()
                    .to_bytes()
                    .unwrap(),
            )
            .unwrap()
        };
        let current = file(&model);
        // The holdout: what the current model predicts, so it scores 100 %.
        let images: Vec<u8> = (0..40 * 8).map(|i| (i * 37 % 256) as u8).collect();
        let unlabelled = Split::new(&[8], images.clone(), vec![0; 40]).unwrap();
        let labels = train::predict(&model.net, &model.params, &unlabelled, 64).unwrap();
        let labels: Vec<u8> = labels.iter().map(|&c| c as u8).collect();
        let gate = HoldoutGate {
            holdout: Split::new(&[8], images, labels).unwrap(),
            tolerance: 0.01,
        };
        let same = gate.judge(&current, &current).unwrap();
        assert!(same.accept && same.before == 1.0, "{same:?}");
        let other = file(&Model::new("m", &spec, &Backend::Cpu, 99).unwrap());
        let worse = gate.judge(&other, &current).unwrap();
        assert!(!worse.accept && worse.after < 1.0, "{worse:?}");
        let not_a_classifier = ModelFile::from_bytes(
            crate::format::ModelBuilder::new("x", "bert")
                .unwrap()
                .to_bytes()
                .unwrap(),
        )
        .unwrap();
        assert!(gate.judge(&not_a_classifier, &current).is_err());
    }
}
