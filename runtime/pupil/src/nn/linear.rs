//! `y = x W^T + b`, with an optional LoRA adapter `+ (alpha / r) (x A^T) B^T` whose base
//! weights are frozen (Hu et al. 2021: A random, B zero, so training starts at the base model).

use crate::error::Result;
use crate::graph::{Graph, Var};
use crate::params::{Init, ParamId, Params, ParamsBuilder};

/// A low-rank adapter on a linear layer.
#[derive(Clone, Debug)]
pub struct Lora {
    /// Down projection `[rank, in]`.
    pub a: ParamId,
    /// Up projection `[out, rank]`, zero at the start.
    pub b: ParamId,
    /// `alpha / rank`.
    pub scale: f32,
}

/// A fully connected layer; weight `[out, in]` as in PyTorch and safetensors files.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight `[out, in]`.
    pub weight: ParamId,
    /// Bias `[out]`.
    pub bias: Option<ParamId>,
    /// Low-rank adapter, when the base is frozen.
    pub lora: Option<Lora>,
}

impl Linear {
    /// A trainable layer with bias, initialised like PyTorch (uniform, bound 1/sqrt(in)).
    pub fn new(b: &mut ParamsBuilder, name: &str, inputs: usize, outputs: usize) -> Linear {
        Self::build(b, name, inputs, outputs, true, true)
    }

    /// A layer with or without bias, trainable or frozen.
    pub fn build(
        b: &mut ParamsBuilder,
        name: &str,
        inputs: usize,
        outputs: usize,
        bias: bool,
        trainable: bool,
    ) -> Linear {
        let bound = 1.0 / (inputs as f32).sqrt();
        Linear {
            weight: b.add(
                format!("{name}.weight"),
                &[outputs, inputs],
                Init::Uniform(bound),
                trainable,
            ),
            bias: bias.then(|| {
                b.add(
                    format!("{name}.bias"),
                    &[outputs],
                    Init::Uniform(bound),
                    trainable,
                )
            }),
            lora: None,
        }
    }

    /// A frozen layer with a trainable LoRA adapter of `rank` and `alpha`.
    pub fn with_lora(
        b: &mut ParamsBuilder,
        name: &str,
        inputs: usize,
        outputs: usize,
        bias: bool,
        rank: usize,
        alpha: f32,
    ) -> Linear {
        let mut layer = Self::build(b, name, inputs, outputs, bias, false);
        layer.lora = Some(Lora {
            a: b.add(
                format!("{name}.lora_a"),
                &[rank, inputs],
                Init::Uniform(1.0 / (inputs as f32).sqrt()),
                true,
            ),
            b: b.add(
                format!("{name}.lora_b"),
                &[outputs, rank],
                Init::Zeros,
                true,
            ),
            scale: alpha / rank as f32,
        });
        layer
    }

    /// Apply to `x` of shape `[.., in]`.
    pub fn forward(&self, g: &mut Graph, p: &Params, x: Var) -> Result<Var> {
        let w = g.param(p, self.weight)?;
        let mut y = g.matmul_t(x, w, false, true)?;
        if let Some(lora) = &self.lora {
            let a = g.param(p, lora.a)?;
            let b = g.param(p, lora.b)?;
            let h = g.matmul_t(x, a, false, true)?;
            let d = g.matmul_t(h, b, false, true)?;
            let d = g.scale(d, lora.scale)?;
            y = g.add(y, d)?;
        }
        if let Some(bias) = self.bias {
            let b = g.param(p, bias)?;
            y = g.add(y, b)?;
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::ops::testing::{assert_close, gpu, random};
    use crate::tensor::Tensor;

    /// A LoRA layer starts equal to its base (B = 0), only A and B receive gradients, and
    /// after a manual change of B the output moves by exactly scale * x A^T B^T.
    #[test]
    fn lora_starts_at_base_and_trains_only_the_adapter() {
        for backend in [Backend::Cpu, gpu()] {
            let mut b = ParamsBuilder::new(3);
            let plain = Linear::build(&mut b, "base", 5, 4, true, false);
            let mut adapted = Linear::with_lora(&mut b, "base2", 5, 4, true, 2, 4.0);
            let p = b.build(&backend).unwrap();
            // Share the base weights so the two layers are comparable.
            p.set(
                adapted.weight,
                &p.value(plain.weight).unwrap().to_vec().unwrap(),
            )
            .unwrap();
            p.set(
                adapted.bias.unwrap(),
                &p.value(plain.bias.unwrap()).unwrap().to_vec().unwrap(),
            )
            .unwrap();
            let x = Tensor::from_slice(&backend, &[3, 5], &random(15, 9, 1.0)).unwrap();
            let mut g = Graph::new(&backend);
            let xv = g.input(x);
            let y0 = plain.forward(&mut g, &p, xv).unwrap();
            let y1 = adapted.forward(&mut g, &p, xv).unwrap();
            assert_close("lora at init", g.value(y1), g.value(y0), 0.0, 1e-6);
            let loss = g.sum_all(y1).unwrap();
            g.backward(loss).unwrap();
            let lora = adapted.lora.take().unwrap();
            assert!(
                p.grad(lora.b)
                    .unwrap()
                    .to_vec()
                    .unwrap()
                    .iter()
                    .any(|v| *v != 0.0),
                "B gets a gradient"
            );
            assert!(
                p.grad(adapted.weight)
                    .unwrap()
                    .to_vec()
                    .unwrap()
                    .iter()
                    .all(|v| *v == 0.0),
                "frozen base gets none"
            );
            assert_eq!(p.count(true), 2 * 5 + 4 * 2);
        }
    }
}
