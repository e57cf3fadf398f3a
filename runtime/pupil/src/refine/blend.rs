//! Blending a personal adapter into the shared model under a drift bound.
//!
//! A personal adapter trained on a device's own text fits that text and drifts from
//! everything else. Scaling its low-rank update by `s` in `[0, 1]` moves the model on a line
//! from the shared one (`s = 0`) to the fully personal one (`s = 1`), the weight-space
//! interpolation of WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot
//! models"): most of the local gain comes back at a fraction of the drift. The device keeps
//! the largest `s` whose perplexity on a *probe*, windows the base model sampled itself
//! ([`super::text::self_anchors`], held apart from the replay anchors), rises at most
//! `max_rise` over the shared model's (`s = 0`): the personal adapter may add that much
//! drift to the version the server published (and gated). It needs no text but its own
//! and the base's samples, and the trained adapter is not changed on disk: the blend is
//! how the device runs it.

use crate::error::{Error, Result};
use crate::models::llama::Llama;

use super::text::perplexity;

/// The blend a device settled on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Blend {
    /// The personal adapter's scale.
    pub scale: f32,
    /// Perplexity on the probe at that scale.
    pub probe: f64,
    /// The shared model's probe perplexity (scale 0), which the rise is measured against.
    pub reference: f64,
}

impl Blend {
    /// The relative rise of the probe perplexity over the reference.
    pub fn rise(&self) -> f64 {
        self.probe / self.reference - 1.0
    }
}

/// Scales the LoRA `B` factors of `lm`'s adapters named by `personal` to the largest of
/// `scales` (tried from the largest down) whose perplexity on `probe` (windows of
/// `window + 1` tokens) is at most `(1 + max_rise)` times the perplexity with the personal
/// adapters off, or to 0 when none is. The adapters must come fresh from training or
/// loading (scale 1).
pub fn blend_personal(
    lm: &Llama,
    personal: impl Fn(&str) -> bool,
    probe: &[Vec<u32>],
    window: usize,
    max_rise: f64,
    scales: &[f32],
) -> Result<Blend> {
    let lora = lm
        .lora()
        .ok_or_else(|| Error::Invalid("blending needs a model with adapters".into()))?;
    if !(max_rise.is_finite() && max_rise >= 0.0) {
        return Err(Error::Invalid(format!(
            "the allowed rise {max_rise} must be finite and at least 0"
        )));
    }
    let params = lora.params();
    let factors: Vec<_> = params
        .infos()
        .iter()
        .filter(|p| p.name.ends_with(".lora_b") && personal(&p.name))
        .filter_map(|p| params.find(&p.name))
        .collect();
    let trained = factors
        .iter()
        .map(|&id| params.value(id)?.to_vec())
        .collect::<Result<Vec<_>>>()?;
    let set_scale = |s: f32| -> Result<()> {
        for (&id, values) in factors.iter().zip(&trained) {
            let scaled: Vec<f32> = values.iter().map(|v| v * s).collect();
            params.set(id, &scaled)?;
        }
        Ok(())
    };
    let tokens: Vec<u32> = probe.concat();
    set_scale(0.0)?;
    let reference = perplexity(lm, &tokens, window)?;
    let mut order: Vec<f32> = scales.iter().copied().filter(|s| *s > 0.0).collect();
    order.sort_by(|a, b| b.total_cmp(a));
    for s in order {
        set_scale(s)?;
        let ppl = perplexity(lm, &tokens, window)?;
        if ppl <= (1.0 + max_rise) * reference {
            return Ok(Blend {
                scale: s,
                probe: ppl,
                reference,
            });
        }
    }
    set_scale(0.0)?;
    Ok(Blend {
        scale: 0.0,
        probe: reference,
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::models::llama::testing::tiny;
    use crate::models::llama::{LlamaLora, Target};
    use crate::ops::testing::random;

    /// A tiny Llama with Q and O adapters, B large and random (the model drifts far); the O
    /// adapters are the personal ones.
    fn adapted() -> Llama {
        let mut lm = Llama::load(&tiny(false), &Backend::Cpu).unwrap();
        let cfg = lm.config().clone();
        let lora = LlamaLora::new(&cfg, &[Target::Q, Target::O], 4, 8.0, &Backend::Cpu, 1).unwrap();
        let p = lora.params();
        for (i, info) in p.infos().iter().enumerate() {
            if info.name.ends_with(".lora_b") {
                let id = p.find(&info.name).unwrap();
                let n = p.value(id).unwrap().numel();
                p.set(id, &random(n, 50 + i as u64, 5.0)).unwrap();
            }
        }
        lm.set_lora(Some(lora));
        lm
    }

    fn b_values(lm: &Llama, name: &str) -> Vec<f32> {
        let p = lm.lora().unwrap().params();
        p.value(p.find(name).unwrap()).unwrap().to_vec().unwrap()
    }

    /// The scale is the largest one within the bound over the model without personal
    /// adapters; only the personal B factors move, by exactly that factor; the reported
    /// probe perplexity is the model's at that scale.
    #[test]
    fn the_largest_scale_within_the_bound_is_kept() {
        let probe: Vec<Vec<u32>> = (0..2)
            .map(|w| (0..9).map(|i| (w * 31 + i * 7) % 97).collect())
            .collect();
        let personal = |n: &str| n.contains(Target::O.name());
        let o = format!("blk.0.{}.lora_b", Target::O.name());
        let q = format!("blk.0.{}.lora_b", Target::Q.name());

        let lm = adapted();
        let (o_before, q_before) = (b_values(&lm, &o), b_values(&lm, &q));
        let loose = blend_personal(&lm, personal, &probe, 8, 1e9, &[0.5, 1.0]).unwrap();
        assert_eq!(loose.scale, 1.0);
        assert_eq!(b_values(&lm, &o), o_before);
        let at_half = blend_personal(&adapted(), personal, &probe, 8, 1e9, &[0.5]).unwrap();
        assert!(
            loose.probe > at_half.probe,
            "large random adapters raise perplexity"
        );

        // Allow exactly the rise of scale 0.5: 1.0 exceeds it.
        let lm = adapted();
        let rise = at_half.rise();
        let half = blend_personal(&lm, personal, &probe, 8, rise, &[0.5, 1.0]).unwrap();
        assert_eq!(half.scale, 0.5);
        assert_eq!(b_values(&lm, &q), q_before, "shared factors stay");
        let want: Vec<f32> = o_before.iter().map(|v| v * 0.5).collect();
        assert_eq!(b_values(&lm, &o), want);
        let tokens: Vec<u32> = probe.concat();
        assert_eq!(half.probe, perplexity(&lm, &tokens, 8).unwrap());

        // No rise allowed: the personal adapter is switched off.
        let lm = adapted();
        let none = blend_personal(&lm, personal, &probe, 8, 0.0, &[0.25, 0.5, 1.0]).unwrap();
        assert_eq!((none.scale, none.probe), (0.0, none.reference));
        assert!(b_values(&lm, &o).iter().all(|&v| v == 0.0));
        assert!(blend_personal(&lm, personal, &probe, 8, f64::NAN, &[1.0]).is_err());
    }
}
