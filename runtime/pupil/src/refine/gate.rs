//! The quality gate: before a refinement is kept, the model is evaluated on held-out data
//! (anchors it never trained on and, when the app has some, labelled local examples); a
//! refinement that makes either worse by more than the tolerance is rolled back.

use serde::{Deserialize, Serialize};

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
}
