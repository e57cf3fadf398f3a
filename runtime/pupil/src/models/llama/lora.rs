//! Low-rank adapters on a Llama decoder's projections: the base weights stay frozen (and
//! quantized where the file quantized them); only the adapters train (Hu et al. 2021:
//! `y = x W^T + (alpha / r) (x A^T) B^T`, A random, B zero so training starts at the base).

use super::LlamaConfig;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::{Graph, Var};
use crate::nn::Lora;
use crate::params::{Init, Params, ParamsBuilder};

/// A projection of a decoder layer that can carry an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// Feed-forward gate.
    Gate,
    /// Feed-forward up projection.
    Up,
    /// Feed-forward down projection.
    Down,
}

impl Target {
    /// Every target, in layer order.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The GGUF name of the projection (`attn_q`, `ffn_up`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// The short name in target lists: `q`, `k`, `v`, `o`, `gate`, `up`, `down`.
    pub fn key(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// Parses a comma-separated list of `q,k,v,o,gate,up,down` (or `all`).
    pub fn parse_list(list: &str) -> Result<Vec<Target>> {
        if list == "all" {
            return Ok(Target::ALL.to_vec());
        }
        list.split(',')
            .map(|s| {
                let s = s.trim();
                Target::ALL.into_iter().find(|t| t.key() == s).ok_or_else(|| {
                    Error::Invalid(format!(
                        "unknown LoRA target {s:?}: use a comma-separated list of q,k,v,o,gate,up,down or all"
                    ))
                })
            })
            .collect()
    }

    /// `[out, in]` of the projection in a `cfg` decoder.
    pub fn shape_of(self, cfg: &LlamaConfig) -> [usize; 2] {
        let (d, kv) = (cfg.hidden, cfg.kv_heads * cfg.head_dim);
        match self {
            Target::Q | Target::O => [d, d],
            Target::K | Target::V => [kv, d],
            Target::Gate | Target::Up => [cfg.ffn, d],
            Target::Down => [d, cfg.ffn],
        }
    }
}

/// Adapters for chosen projections of every layer, in one trainable parameter store.
pub struct LlamaLora {
    params: Params,
    /// Per layer, the adapted projections.
    layers: Vec<Vec<(Target, Lora)>>,
    rank: usize,
    alpha: f32,
    targets: Vec<Target>,
}

impl LlamaLora {
    /// Adapters of `rank` and `alpha` on `targets` of every layer of a `cfg` decoder,
    /// on `backend`; A drawn with `seed`, B zero.
    pub fn new(
        cfg: &LlamaConfig,
        targets: &[Target],
        rank: usize,
        alpha: f32,
        backend: &Backend,
        seed: u64,
    ) -> Result<LlamaLora> {
        Self::build(cfg, targets, (rank, alpha), backend, seed, true)
    }

    /// [`LlamaLora::new`] with every A frozen: only B trains. Devices that share A (drawn
    /// from one seed, or received from a server) then average their adapters exactly, as
    /// the mean of `B_i A` is `mean(B_i) A` (Sun et al. 2024, FFA-LoRA), so plain FedAvg of
    /// the factors is a sound rule for them.
    pub fn with_frozen_a(
        cfg: &LlamaConfig,
        targets: &[Target],
        rank: usize,
        alpha: f32,
        backend: &Backend,
        seed: u64,
    ) -> Result<LlamaLora> {
        Self::build(cfg, targets, (rank, alpha), backend, seed, false)
    }

    fn build(
        cfg: &LlamaConfig,
        targets: &[Target],
        (rank, alpha): (usize, f32),
        backend: &Backend,
        seed: u64,
        train_a: bool,
    ) -> Result<LlamaLora> {
        if rank == 0 || targets.is_empty() {
            return Err(Error::Invalid(
                "LoRA needs a rank above 0 and at least one target".into(),
            ));
        }
        let mut b = ParamsBuilder::new(seed);
        let layers = (0..cfg.layers)
            .map(|i| {
                targets
                    .iter()
                    .map(|&t| {
                        let [out, inp] = t.shape_of(cfg);
                        let name = format!("blk.{i}.{}", t.name());
                        let lora = Lora {
                            a: b.add(
                                format!("{name}.lora_a"),
                                &[rank, inp],
                                Init::Uniform(1.0 / (inp as f32).sqrt()),
                                train_a,
                            ),
                            b: b.add(format!("{name}.lora_b"), &[out, rank], Init::Zeros, true),
                            scale: alpha / rank as f32,
                        };
                        (t, lora)
                    })
                    .collect()
            })
            .collect();
        Ok(LlamaLora {
            params: b.build(backend)?,
            layers,
            rank,
            alpha,
            targets: targets.to_vec(),
        })
    }

    /// The adapters' rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The adapters' alpha (their output is scaled by alpha / rank).
    pub fn alpha(&self) -> f32 {
        self.alpha
    }

    /// The adapted projections.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The adapters' parameters (all trainable, or only the Bs with frozen As).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// `y + scale (x A^T) B^T` when `layer`'s `target` has an adapter, else `y`.
    pub(crate) fn apply(
        &self,
        g: &mut Graph,
        (layer, target): (usize, Target),
        x: Var,
        y: Var,
    ) -> Result<Var> {
        let Some((_, lora)) = self
            .layers
            .get(layer)
            .and_then(|l| l.iter().find(|(t, _)| *t == target))
        else {
            return Ok(y);
        };
        let a = g.param(&self.params, lora.a)?;
        let b = g.param(&self.params, lora.b)?;
        let h = g.matmul_t(x, a, false, true)?;
        let d = g.matmul_t(h, b, false, true)?;
        let d = g.scale(d, lora.scale)?;
        g.add(y, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ModelFile;
    use crate::models::llama::testing::tiny;
    use crate::models::llama::Llama;
    use crate::ops::testing::{assert_close, check_gradient, gpu, random};
    use crate::refine::text::{personalise, TextConfig};
    use crate::tensor::Tensor;

    fn logits(lm: &Llama, ids: &[f32], shape: [usize; 2]) -> Tensor {
        let backend = lm.backend();
        let mut g = Graph::new(&backend);
        let ids = g.input(Tensor::from_slice(&backend, &shape, ids).unwrap());
        let y = lm.forward_all(&mut g, ids).unwrap();
        g.value(y).to_backend(&Backend::Cpu).unwrap()
    }

    /// Adapters start at the base model (B = 0); with B set, the GPU (quantized kernels)
    /// and CPU logits agree to 1e-3.
    #[test]
    fn adapters_start_at_the_base_and_agree_across_backends() {
        let file = tiny(true);
        let ids: Vec<f32> = (0..14).map(|i| ((i * 37) % 97) as f32).collect();
        let mut models = Vec::new();
        for backend in [Backend::Cpu, gpu()] {
            let mut lm = Llama::load(&file, &backend).unwrap();
            let base = logits(&lm, &ids, [2, 7]);
            let cfg = lm.config().clone();
            let lora = LlamaLora::new(&cfg, &Target::ALL, 4, 8.0, &backend, 1).unwrap();
            lm.set_lora(Some(lora));
            assert_close("B = 0", &logits(&lm, &ids, [2, 7]), &base, 0.0, 1e-6);
            let p = lm.lora().unwrap().params();
            for (i, info) in p.infos().iter().enumerate() {
                let id = p.find(&info.name).unwrap();
                let n = p.value(id).unwrap().numel();
                p.set(id, &random(n, 100 + i as u64, 0.2)).unwrap();
            }
            models.push(lm);
        }
        let cpu = logits(&models[0], &ids, [2, 7]);
        let gpu = logits(&models[1], &ids, [2, 7]);
        assert_close("cpu vs gpu with adapters", &gpu, &cpu, 1e-3, 1e-3);
    }

    /// The loss gradient with respect to an adapter (through keys, values, attention, RoPE,
    /// RMSNorm and the frozen quantized projections) matches finite differences.
    #[test]
    fn adapter_gradient_matches_finite_differences() {
        let backend = Backend::Cpu;
        let mut lm = Llama::load(&tiny(false), &backend).unwrap();
        let cfg = lm.config().clone();
        let lora = LlamaLora::new(&cfg, &[Target::K, Target::V], 2, 2.0, &backend, 3).unwrap();
        lm.set_lora(Some(lora));
        let p = lm.lora().unwrap().params();
        let b0 = p.find("blk.0.attn_k.lora_b").unwrap();
        let b1 = p.find("blk.1.attn_v.lora_b").unwrap();
        let n0 = p.value(b0).unwrap().numel();
        p.set(b0, &random(n0, 5, 0.3)).unwrap();
        let start = random(p.value(b1).unwrap().numel(), 6, 0.3);
        p.set(b1, &start).unwrap();
        let ids: Vec<f32> = (0..6).map(|i| ((i * 11 + 3) % 97) as f32).collect();
        let loss_of = |lm: &Llama, backward: bool| -> f64 {
            let mut g = Graph::new(&backend);
            let x = g.input(Tensor::from_slice(&backend, &[1, 5], &ids[..5]).unwrap());
            let y = g.input(Tensor::from_slice(&backend, &[5], &ids[1..]).unwrap());
            let z = lm.forward_all(&mut g, x).unwrap();
            let loss = g.cross_entropy(z, y).unwrap();
            if backward {
                lm.lora().unwrap().params().zero_grad().unwrap();
                g.backward(loss).unwrap();
            }
            f64::from(g.value(loss).item().unwrap())
        };
        loss_of(&lm, true);
        let grad = p.grad(b1).unwrap().to_vec().unwrap();
        assert!(
            grad.iter().any(|g| g.abs() > 1e-4),
            "the adapter gets a gradient"
        );
        let f = |v: &[f32]| {
            lm.lora().unwrap().params().set(b1, v).unwrap();
            loss_of(&lm, false)
        };
        check_gradient("dB of layer 1 values", &start, &grad, f, 2e-2);
    }

    /// A few steps on a repeated sequence drive the next-token loss down.
    #[test]
    fn personalising_learns_a_repeated_text() {
        let mut lm = Llama::load(&tiny(true), &Backend::Cpu).unwrap();
        let text: Vec<u32> = (0..17).map(|i| (i * 7 % 13) as u32).collect();
        let train = vec![text; 4];
        let cfg = TextConfig {
            window: 16,
            batch: 2,
            epochs: 15,
            lr: 1e-2,
            rank: 4,
            targets: Target::ALL.to_vec(),
            ..TextConfig::default()
        };
        let mut losses = Vec::new();
        personalise(&mut lm, &train, &[], &cfg, |s| losses.push(s.loss)).unwrap();
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(last < 0.5 * first, "loss {first} -> {last}");
    }

    #[test]
    fn adapter_files_round_trip_over_their_own_base_only() {
        let (file, other) = (tiny(true), tiny(false));
        let ids: Vec<f32> = (0..10).map(|i| ((i * 13) % 97) as f32).collect();
        let backend = Backend::Cpu;
        let mut lm = Llama::load(&file, &backend).unwrap();
        let cfg = lm.config().clone();
        let lora = LlamaLora::new(&cfg, &[Target::Q, Target::Down], 3, 6.0, &backend, 2).unwrap();
        for (i, info) in lora.params().infos().iter().enumerate() {
            let id = lora.params().find(&info.name).unwrap();
            let n = lora.params().value(id).unwrap().numel();
            lora.params()
                .set(id, &random(n, 40 + i as u64, 0.2))
                .unwrap();
        }
        let bytes = lora.to_builder(&file).unwrap().to_bytes().unwrap();
        lm.set_lora(Some(lora));
        let want = logits(&lm, &ids, [2, 5]);

        let adapters = ModelFile::from_bytes(bytes).unwrap();
        let back = LlamaLora::from_file(&adapters, &file, &cfg, &backend).unwrap();
        assert_eq!(
            (back.rank(), back.alpha(), back.targets()),
            (3, 6.0, &[Target::Q, Target::Down][..])
        );
        lm.set_lora(Some(back));
        assert_close(
            "reloaded adapters",
            &logits(&lm, &ids, [2, 5]),
            &want,
            0.0,
            0.0,
        );
        let err = LlamaLora::from_file(&adapters, &other, &cfg, &backend)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("trained over the base model"),
            "{err}"
        );
        assert!(LlamaLora::from_file(&file, &file, &cfg, &backend).is_err());
    }
}
