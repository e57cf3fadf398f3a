//! Which teacher layers a shallower student starts from: picked evenly, or by probing, that
//! is greedily dropping the layer whose removal leaves the copied encoder closest to the
//! teacher on sample sentences (no training involved: a few forward passes per candidate).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::ModelFile;
use crate::models::bert::SentenceEncoder;

/// The word embedding table's parameter name (frozen unless asked otherwise: it is most of
/// a small encoder's parameters and the student shares the teacher's vocabulary).
pub const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// `student` of `teacher` layers chosen evenly: layer `i` of `student` is the teacher's
/// layer `i · teacher / student` (`last` false: 0, 2, 4 of 6) or `(i + 1) · teacher /
/// student − 1` (`last` true: 1, 3, 5 of 6, ending on the teacher's last layer).
pub fn evenly(teacher: usize, student: usize, last: bool) -> Result<Vec<usize>> {
    check(teacher, student)?;
    Ok((0..student)
        .map(|i| {
            if last {
                (i + 1) * teacher / student - 1
            } else {
                i * teacher / student
            }
        })
        .collect())
}

/// Refuses students with no layers or more layers than the teacher.
fn check(teacher: usize, student: usize) -> Result<()> {
    if student == 0 || student > teacher {
        return Err(Error::Invalid(format!(
            "a student of {student} layers cannot be picked from a teacher of {teacher}: use 1 to {teacher}"
        )));
    }
    Ok(())
}

/// `student` layers of the encoder in `teacher_file` picked by probing: starting from all of
/// them, drop one at a time the layer whose removal leaves the copy (embeddings and the
/// remaining layers, untrained) with the highest mean cosine between its embeddings of
/// `ids` and the teacher's `targets` (unit length). `tried` sees every candidate and its
/// cosine. Returns the layers and their cosine. Costs about `n²/2` forward passes over
/// `ids` for a teacher of `n` layers, so a few hundred sentences are plenty.
pub fn probe(
    teacher_file: &ModelFile,
    backend: &Backend,
    student: usize,
    ids: &[Vec<u32>],
    targets: &[Vec<f32>],
    mut tried: impl FnMut(&[usize], f64),
) -> Result<(Vec<usize>, f64)> {
    let teacher = crate::models::bert::BertConfig::from_model(teacher_file)?.layers;
    check(teacher, student)?;
    let mut kept: Vec<usize> = (0..teacher).collect();
    let mut best = (kept.clone(), 1.0);
    while kept.len() > student {
        best = (Vec::new(), f64::NEG_INFINITY);
        for drop in 0..kept.len() {
            let mut candidate = kept.clone();
            candidate.remove(drop);
            let copy = SentenceEncoder::load_layers(teacher_file, backend, &candidate, |_| false)?;
            let c = mean(&cosines(&copy, ids, targets, 32)?);
            tried(&candidate, c);
            if c > best.1 {
                best = (candidate, c);
            }
        }
        kept = best.0.clone();
    }
    Ok(best)
}

/// The student: `teacher_file`'s encoder with only its `layers` (in that order), every
/// parameter trainable except the word embeddings unless `train_words`.
pub fn student(
    teacher_file: &ModelFile,
    backend: &Backend,
    layers: &[usize],
    train_words: bool,
) -> Result<SentenceEncoder> {
    SentenceEncoder::load_layers(teacher_file, backend, layers, |name| {
        train_words || name != WORD_EMBEDDINGS
    })
}

/// The cosine between `encoder`'s embedding of each sequence in `ids` and the matching
/// unit-length `targets` (a teacher's), embedded in length-sorted batches of `batch`.
pub fn cosines(
    encoder: &SentenceEncoder,
    ids: &[Vec<u32>],
    targets: &[Vec<f32>],
    batch: usize,
) -> Result<Vec<f32>> {
    if ids.len() != targets.len() {
        return Err(Error::Invalid(format!(
            "{} sentences but {} target embeddings",
            ids.len(),
            targets.len()
        )));
    }
    let got = encoder.embed_all(ids, batch, |_| {})?;
    Ok(got
        .iter()
        .zip(targets)
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum::<f64>() as f32
        })
        .collect())
}

/// The mean of `values` (0 for none).
pub fn mean(values: &[f32]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::{DType, ModelBuilder};
    use crate::import::TOKENIZER_TENSOR;
    use crate::models::bert::{Bert, BertConfig};
    use crate::params::ParamsBuilder;

    const VOCAB: usize = 40;

    /// A 4-layer BERT with random weights and a word-level tokenizer (`w0` .. `w39`).
    pub(crate) fn teacher() -> ModelFile {
        let cfg = BertConfig {
            hidden: 16,
            layers: 4,
            heads: 2,
            ffn: 32,
            vocab: VOCAB,
            max_positions: 16,
            type_vocab: 2,
            eps: 1e-5,
            max_seq_len: 16,
        };
        let mut pb = ParamsBuilder::new(7);
        Bert::new(&mut pb, &cfg).unwrap();
        let params = pb.build(&Backend::Cpu).unwrap();
        let mut b = ModelBuilder::new("tiny", "bert").unwrap();
        for (k, v) in [
            ("hidden_size", cfg.hidden),
            ("layers", cfg.layers),
            ("heads", cfg.heads),
            ("ffn_size", cfg.ffn),
            ("vocab_size", cfg.vocab),
            ("max_positions", cfg.max_positions),
            ("max_seq_len", cfg.max_seq_len),
        ] {
            b.config_int(k, v as i64).unwrap();
        }
        b.config_float("norm_eps", 1e-5).unwrap();
        b.config_str("pooling", "mean").unwrap();
        params.export(&mut b).unwrap();
        let vocab: Vec<String> = (0..VOCAB).map(|i| format!("\"w{i}\": {i}")).collect();
        let json = format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
              "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}},
              "post_processor": null, "decoder": null,
              "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "w0"}}}}"#,
            vocab.join(", ")
        );
        b.add_tensor(
            TOKENIZER_TENSOR,
            DType::U8,
            &[json.len() as u64],
            json.into_bytes(),
        )
        .unwrap();
        ModelFile::from_bytes(b.to_bytes().unwrap()).unwrap()
    }

    /// `n` random sequences of 2 to 12 ids.
    pub(crate) fn sequences(n: usize, seed: u64) -> Vec<Vec<u32>> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |m: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % m
        };
        (0..n)
            .map(|_| {
                let len = 2 + next(11) as usize;
                (0..len).map(|_| next(VOCAB as u64) as u32).collect()
            })
            .collect()
    }

    #[test]
    fn picks_layers_evenly() {
        assert_eq!(evenly(6, 3, false).unwrap(), vec![0, 2, 4]);
        assert_eq!(evenly(6, 3, true).unwrap(), vec![1, 3, 5]);
        assert_eq!(evenly(6, 6, true).unwrap(), (0..6).collect::<Vec<_>>());
        assert_eq!(evenly(12, 4, true).unwrap(), vec![2, 5, 8, 11]);
        assert!(evenly(6, 0, true).is_err());
        assert!(evenly(3, 4, false).is_err());
    }

    /// Probing drops one layer per round (4 then 3 candidates for 4 -> 2 layers), keeps the
    /// best candidate of the last round, and reports its true cosine.
    #[test]
    fn probing_keeps_the_closest_copy() {
        let file = teacher();
        let teacher_enc = SentenceEncoder::load(&file, &Backend::Cpu).unwrap();
        let ids = sequences(24, 9);
        let want = teacher_enc.embed_all(&ids, 8, |_| {}).unwrap();
        let mut tried = Vec::new();
        let (layers, c) = probe(&file, &Backend::Cpu, 2, &ids, &want, |l, c| {
            tried.push((l.to_vec(), c))
        })
        .unwrap();
        assert_eq!(tried.len(), 4 + 3);
        assert!(tried[..4].iter().all(|(l, _)| l.len() == 3));
        let last_round = &tried[4..];
        assert!(last_round.iter().all(|(_, x)| *x <= c));
        assert!(last_round.iter().any(|(l, _)| *l == layers));
        let copy = student(&file, &Backend::Cpu, &layers, false).unwrap();
        let again = mean(&cosines(&copy, &ids, &want, 8).unwrap());
        assert!((again - c).abs() < 1e-9);
        assert!(probe(&file, &Backend::Cpu, 5, &ids, &want, |_, _| {}).is_err());
    }
}
