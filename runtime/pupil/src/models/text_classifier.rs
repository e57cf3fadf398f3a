//! A text classifier for the device: a frozen sentence encoder (MiniLM, or a distilled
//! student of it) turns each text into a unit-length embedding once; a small
//! [`classifier`](super::classifier) over the embedding is what trains, what the refinement
//! session selects and pseudo-labels for, and what syncs. The head's file names its encoder
//! by content hash (config `text.encoder`) and carries its class names (the U8 tensor
//! `text.classes`, one name per line), so a head is never run on another encoder's space.
//!
//! Embeddings become examples of shape `[dim]` as bytes: component `v` is stored as
//! `round(clamp(0.5 + 2 v, 0, 1) * 255)`. Components of a unit-length embedding of a few
//! hundred dimensions lie well inside ±0.25, and one step (1/510) is far below their spread,
//! so the head sees the embedding, shifted and scaled, with a little rounding noise.

use crate::backend::Backend;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::format::{DType, Hex, ModelBuilder, ModelFile};
use crate::models::bert::SentenceEncoder;
use crate::models::classifier::{Arch, ClassifierSpec, Model, Train};
use crate::optim::{AdamWConfig, Optimizer, Rule};
use crate::refine::replay::Anchors;
use crate::train;

/// Config key naming the encoder (hex of its file's content hash).
pub const ENCODER: &str = "text.encoder";
/// U8 tensor holding the class names, one per line.
pub const CLASSES: &str = "text.classes";

/// The example byte of each embedding component.
pub fn embedding_bytes(embedding: &[f32], out: &mut Vec<u8>) {
    out.extend(
        embedding
            .iter()
            .map(|&v| ((0.5 + 2.0 * v).clamp(0.0, 1.0) * 255.0).round() as u8),
    );
}

/// The examples a head trains and runs on: `texts` embedded by `encoder` in batches of
/// `batch`, with `labels` (one per text, each below 256; empty for an unlabelled pool).
/// `done` sees how many texts are embedded so far.
pub fn features(
    encoder: &SentenceEncoder,
    texts: &[String],
    labels: &[u32],
    batch: usize,
    done: impl FnMut(usize),
) -> Result<Split> {
    if !labels.is_empty() && labels.len() != texts.len() {
        return Err(Error::Invalid(format!(
            "{} labels for {} texts",
            labels.len(),
            texts.len()
        )));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = encoder.tokenize(&refs)?;
    let embeddings = encoder.embed_all(&ids, batch, done)?;
    let mut bytes = Vec::with_capacity(texts.len() * encoder.dim());
    for e in &embeddings {
        embedding_bytes(e, &mut bytes);
    }
    let labels = if labels.is_empty() {
        vec![0; texts.len()]
    } else {
        labels
            .iter()
            .map(|&y| u8::try_from(y).map_err(|_| Error::Invalid(format!("label {y} is over 255"))))
            .collect::<Result<Vec<u8>>>()?
    };
    Split::new(&[encoder.dim()], bytes, labels).map_err(|e| Error::Invalid(e.to_string()))
}

/// A head over a named encoder's embeddings, with its class names.
pub struct TextClassifier {
    /// The trainable head (input `[dim]`, one output per class).
    pub head: Model,
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// Content hash of the encoder file it runs on.
    pub encoder: [u8; 32],
}

impl TextClassifier {
    /// A new head `model_id` of `hidden` widths for the embeddings of `encoder` (its file and
    /// its loaded form), one output per class, initialised from `seed`.
    pub fn new(
        model_id: &str,
        encoder_file: &ModelFile,
        encoder: &SentenceEncoder,
        classes: Vec<String>,
        hidden: &[usize],
        backend: &Backend,
        seed: u64,
    ) -> Result<TextClassifier> {
        if classes.len() > 256 || classes.iter().any(|c| c.is_empty() || c.contains('\n')) {
            return Err(Error::Invalid(
                "a text classifier needs at most 256 class names, none empty or with a line break"
                    .into(),
            ));
        }
        let mut spec = ClassifierSpec::new(Arch::Mlp, &[encoder.dim()], classes.len());
        spec.hidden = hidden.to_vec();
        Ok(TextClassifier {
            head: Model::new(model_id, &spec, backend, seed)?,
            classes,
            encoder: encoder_file.content_hash(),
        })
    }

    /// Opens a head from `file` for the encoder in `encoder_file`; refuses a head made for
    /// another encoder. `train` says which of its parameters train.
    pub fn open(
        file: &ModelFile,
        encoder_file: &ModelFile,
        backend: &Backend,
        train: Train,
    ) -> Result<TextClassifier> {
        let named = file
            .info()
            .get(ENCODER)
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the model is not a text classifier (no config {ENCODER:?})"
                ))
            })?;
        let this = Hex(&encoder_file.content_hash()).to_string();
        if named != this {
            return Err(Error::Invalid(format!(
                "the text classifier was made for the encoder with content hash {named}, not \
                 this one ({this}); use the encoder it names"
            )));
        }
        let names = file
            .tensor(CLASSES)
            .map_err(|_| Error::Invalid(format!("the text classifier has no {CLASSES:?}")))?;
        let classes: Vec<String> = String::from_utf8_lossy(names.bytes)
            .lines()
            .map(str::to_string)
            .collect();
        let head = Model::open(file, backend, train)?;
        if classes.len() != head.classes() {
            return Err(Error::Invalid(format!(
                "the text classifier names {} classes but has {} outputs",
                classes.len(),
                head.classes()
            )));
        }
        Ok(TextClassifier {
            head,
            classes,
            encoder: encoder_file.content_hash(),
        })
    }

    /// The head as a model file of `version` (child of `parent`), with its encoder, class
    /// names and, if given, replay anchors (embeddings of the original task's texts).
    pub fn to_builder(
        &self,
        anchors: Option<&Anchors>,
        version: u32,
        parent: Option<[u8; 32]>,
    ) -> Result<ModelBuilder> {
        let mut b = self.head.to_builder(DType::F32, version, parent)?;
        b.config_str(ENCODER, &Hex(&self.encoder).to_string())?;
        let names = self.classes.join("\n").into_bytes();
        b.add_tensor(CLASSES, DType::U8, &[names.len() as u64], names)?;
        if let Some(a) = anchors {
            a.add_to(&mut b, DType::Q8_0)?;
        }
        Ok(b)
    }

    /// Trains the head's trainable parameters on labelled `data` for `epochs` epochs of
    /// AdamW at `lr` in batches of 64; returns the last epoch's mean loss.
    pub fn fit(&self, data: &Split, epochs: usize, lr: f32, seed: u64) -> Result<f32> {
        let mut opt = Optimizer::new(
            &self.head.params,
            Rule::AdamW(AdamWConfig {
                lr,
                ..Default::default()
            }),
        )?;
        let mut loss = f32::NAN;
        for epoch in 0..epochs {
            let s = seed.wrapping_add(epoch as u64);
            loss = train::train_epoch(
                &self.head.net,
                &self.head.params,
                &mut opt,
                data,
                64,
                s,
                usize::MAX,
                |_, _| {},
            )?;
        }
        Ok(loss)
    }

    /// Fraction of `data` (embedded, labelled) classified correctly.
    pub fn accuracy(&self, data: &Split) -> Result<f32> {
        train::accuracy(&self.head.net, &self.head.params, data, 256)
    }

    /// The class name of each of `texts`.
    pub fn classify(&self, encoder: &SentenceEncoder, texts: &[String]) -> Result<Vec<&str>> {
        let data = features(encoder, texts, &[], 32, |_| {})?;
        let pred = train::predict(&self.head.net, &self.head.params, &data, 256)?;
        Ok(pred.iter().map(|&c| self.classes[c].as_str()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_bytes_centre_and_clip() {
        let mut out = Vec::new();
        embedding_bytes(&[0.0, 0.25, -0.25, 0.9, -0.9, 0.1], &mut out);
        assert_eq!(out, [128, 255, 0, 255, 0, 179]);
    }
}
