//! The [`App`] of a decoder fleet on Flower: a frozen (quantized) base with LoRA adapters
//! whose A factors are frozen, so Flower's FedAvg of the factors is exact (the mean of
//! `B_i A` is `mean(B_i) A`; see `LlamaLora::with_frozen_a`). `train` loads the received
//! adapters, trains B on the node's own text windows and sends the adapters back;
//! `evaluate` reports the held-out perplexity of the node's text; `query` sends the
//! adapters as they are (the initial A, drawn from the node's seed, and B zero).

use pupil::models::llama::{Llama, LlamaLora};
use pupil::refine::text::{perplexity, personalise, TextConfig};

use crate::objects::{metric_record, Metric, Record, RecordDict};
use crate::supernode::App;

/// A decoder with frozen-A adapters, the node's training windows and held-out tokens.
pub struct LoraApp {
    lm: Llama,
    train: Vec<Vec<u32>>,
    held_out: Vec<u32>,
    cfg: TextConfig,
}

impl LoraApp {
    /// An app over `lm` (its adapters replaced by fresh frozen-A ones of `cfg`'s rank,
    /// alpha and targets, A drawn from `cfg.seed`: nodes given one seed share A) training
    /// on `train` (windows of `cfg.window + 1` tokens) and measured on `held_out`.
    pub fn new(
        mut lm: Llama,
        train: Vec<Vec<u32>>,
        held_out: Vec<u32>,
        cfg: TextConfig,
    ) -> Result<LoraApp, String> {
        let lora = LlamaLora::with_frozen_a(
            lm.config(),
            &cfg.targets,
            cfg.rank,
            cfg.alpha,
            &lm.backend(),
            cfg.seed,
        )
        .map_err(|e| e.to_string())?;
        lm.set_lora(Some(lora));
        if train.is_empty() || held_out.len() <= cfg.window {
            return Err(format!(
                "the node needs training windows and more than {} held-out tokens",
                cfg.window
            ));
        }
        Ok(LoraApp {
            lm,
            train,
            held_out,
            cfg,
        })
    }

    fn adapters(&self) -> Result<&LlamaLora, String> {
        self.lm
            .lora()
            .ok_or_else(|| "the adapters are missing".to_owned())
    }

    fn load(&self, content: &RecordDict) -> Result<(), String> {
        crate::params::load(self.adapters()?.params(), content, "one of the adapters")
    }

    fn arrays(&self) -> Result<Record, String> {
        crate::params::record(self.adapters()?.params())
    }

    /// Perplexity of the held-out tokens under the decoder with its adapters.
    pub fn held_out_perplexity(&self) -> Result<f64, String> {
        perplexity(&self.lm, &self.held_out, self.cfg.window).map_err(|e| e.to_string())
    }
}

impl App for LoraApp {
    fn train(&mut self, content: &RecordDict) -> Result<RecordDict, String> {
        self.load(content)?;
        let mut cfg = self.cfg.clone();
        if let Some(lr) = content.config_number("lr") {
            cfg.lr = lr as f32;
        }
        if let Some(e) = content.config_number("local-epochs") {
            cfg.epochs = e.max(1.0) as usize;
        }
        cfg.seed = cfg
            .seed
            .wrapping_add(content.config_number("server-round").unwrap_or(0.0) as u64);
        let mut last = f32::NAN;
        personalise(&mut self.lm, &self.train, &[], &cfg, |s| last = s.loss)
            .map_err(|e| e.to_string())?;
        Ok(RecordDict(vec![
            ("arrays".into(), self.arrays()?),
            (
                "metrics".into(),
                metric_record(&[
                    ("num-examples", Metric::Int(self.train.len() as i64)),
                    ("train_loss", Metric::Float(f64::from(last))),
                ]),
            ),
        ]))
    }

    fn evaluate(&mut self, content: &RecordDict) -> Result<RecordDict, String> {
        self.load(content)?;
        let ppl = self.held_out_perplexity()?;
        let windows = self.held_out.len() / (self.cfg.window + 1);
        Ok(RecordDict(vec![(
            "metrics".into(),
            metric_record(&[
                ("num-examples", Metric::Int(windows.max(1) as i64)),
                ("eval_loss", Metric::Float(ppl.ln())),
                ("perplexity", Metric::Float(ppl)),
            ]),
        )]))
    }

    fn query(&mut self, _content: &RecordDict) -> Result<RecordDict, String> {
        Ok(RecordDict(vec![("arrays".into(), self.arrays()?)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pupil::format::{DType, ModelBuilder, ModelFile};
    use pupil::Backend;

    /// A one-layer Llama (hidden 32, GQA 4/2, vocab 97) with f32 weights from a fixed
    /// pseudo-random sequence.
    fn tiny() -> ModelFile {
        let (d, kvd, ffn, vocab) = (32usize, 16usize, 48usize, 97usize);
        let mut b = ModelBuilder::new("tiny", "llama").unwrap();
        for (k, v) in [
            ("hidden_size", d),
            ("layers", 1),
            ("heads", 4),
            ("kv_heads", 2),
            ("ffn_size", ffn),
            ("vocab_size", vocab),
            ("max_positions", 64),
            ("tied_embeddings", 1),
        ] {
            b.config_int(k, v as i64).unwrap();
        }
        b.config_float("rope_base", 1e4).unwrap();
        b.config_float("norm_eps", 1e-5).unwrap();
        let mut seed = 1u32;
        let mut add = |b: &mut ModelBuilder, name: &str, shape: &[usize]| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    if shape.len() == 1 {
                        1.0
                    } else {
                        (seed >> 8) as f32 / (1u32 << 24) as f32 * 0.6 - 0.3
                    }
                })
                .collect();
            let dims: Vec<u64> = shape.iter().map(|&x| x as u64).collect();
            b.add_f32_as(name, DType::F32, &dims, &values).unwrap();
        };
        add(&mut b, "token_embd.weight", &[vocab, d]);
        add(&mut b, "output_norm.weight", &[d]);
        let p = |n: &str| format!("blk.0.{n}.weight");
        add(&mut b, &p("attn_norm"), &[d]);
        add(&mut b, &p("attn_q"), &[d, d]);
        add(&mut b, &p("attn_k"), &[kvd, d]);
        add(&mut b, &p("attn_v"), &[kvd, d]);
        add(&mut b, &p("attn_output"), &[d, d]);
        add(&mut b, &p("ffn_norm"), &[d]);
        add(&mut b, &p("ffn_gate"), &[ffn, d]);
        add(&mut b, &p("ffn_up"), &[ffn, d]);
        add(&mut b, &p("ffn_down"), &[d, ffn]);
        ModelFile::from_bytes(b.to_bytes().unwrap()).unwrap()
    }

    /// Training moves B and leaves A as received; the reply's adapters load back into
    /// another node; evaluation reports the held-out perplexity.
    #[test]
    fn trains_b_only_and_round_trips_adapters() {
        let lm = Llama::load(&tiny(), &Backend::Cpu).unwrap();
        let cfg = TextConfig {
            window: 8,
            batch: 2,
            lr: 1e-2,
            rank: 2,
            alpha: 4.0,
            seed: 3,
            ..TextConfig::default()
        };
        let text: Vec<u32> = (0..200).map(|i| (i * 7 % 97) as u32).collect();
        let windows: Vec<Vec<u32>> = text.chunks_exact(9).take(12).map(<[u32]>::to_vec).collect();
        let mut app = LoraApp::new(lm, windows, text[100..].to_vec(), cfg.clone()).unwrap();
        let initial = app.query(&RecordDict::default()).unwrap();
        let before = app.held_out_perplexity().unwrap();
        let reply = app.train(&initial).unwrap();
        let (Some(sent), Some(back)) = (initial.arrays(), reply.arrays()) else {
            panic!()
        };
        for ((name, a), (_, b)) in sent.iter().zip(back) {
            let (x, y) = (a.to_f32().unwrap().1, b.to_f32().unwrap().1);
            if name.ends_with("lora_a") {
                assert_eq!(x, y, "{name} is frozen");
            } else {
                assert_ne!(x, y, "{name} trains");
            }
        }
        let metrics = app.evaluate(&reply).unwrap();
        let Record::Metrics(m) = &metrics.0[0].1 else {
            panic!()
        };
        assert!(m.items.iter().any(|i| i.key == "perplexity"));
        assert!(app.held_out_perplexity().unwrap() < before);
        let other = Llama::load(&tiny(), &Backend::Cpu).unwrap();
        let mut other =
            LoraApp::new(other, vec![text[..9].to_vec()], text[100..].to_vec(), cfg).unwrap();
        other.evaluate(&reply).unwrap();
        assert_eq!(
            other.held_out_perplexity().unwrap(),
            app.held_out_perplexity().unwrap()
        );
    }
}
