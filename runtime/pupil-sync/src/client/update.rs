//! From a refined model to a queued, signed update: the delta of only what trained
//! (tensors whose values moved), encoded as f16, int8 per row or top-k with error
//! feedback, signed with the device key and queued durably in the outbox.
//!
//! Only floating-point tensors of the base version take deltas; a refined model that
//! changes an integer or block-quantized tensor (a tokenizer, labels, frozen Q4 weights)
//! is refused, since no server can aggregate it. Tensors named by a personal prefix, and
//! the data tensors (`replay.*`, the anchor examples), stay on the device. Top-k keeps what it did not send in a residual file beside the outbox
//! and adds it to the next update.

use std::fs;
use std::path::{Path, PathBuf};

use pupil_format::{ModelBuilder, ModelFile};
use pupil_wire::update::{EncodedDelta, UpdateDraft};
use pupil_wire::Metric;

use super::Outbox;
use crate::error::io_err;
use crate::keys::KeyPair;
use crate::protocol::{takes_deltas, DATA_TENSOR_PREFIX};
use crate::SyncError;

/// A refined tensor: its name, shape and values.
pub type NamedValues = (String, Vec<u64>, Vec<f32>);

/// How an update's deltas are encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DeltaEncoding {
    /// Half precision: 2 bytes a value, relative error 2^-11.
    F16,
    /// One i8 per value with an f32 scale per row: about 1 byte a value.
    Int8,
    /// The largest-magnitude `fraction` of each tensor's values (at least one), as f16
    /// with u32 indices; what is left out is kept on the device and sent later.
    TopK {
        /// Share of each tensor's values sent, in (0, 1].
        fraction: f32,
    },
}

impl DeltaEncoding {
    /// Parses `f16`, `int8` or `topk:FRACTION` (e.g. `topk:0.1`).
    pub fn parse(text: &str) -> Result<Self, SyncError> {
        let bad = || {
            SyncError::InvalidArgument(format!(
                "unknown encoding {text:?}; use f16, int8 or topk:FRACTION (e.g. topk:0.1)"
            ))
        };
        match text {
            "f16" => Ok(Self::F16),
            "int8" => Ok(Self::Int8),
            _ => {
                let fraction: f32 = text
                    .strip_prefix("topk:")
                    .ok_or_else(bad)?
                    .parse()
                    .map_err(|_| bad())?;
                if fraction > 0.0 && fraction <= 1.0 {
                    Ok(Self::TopK { fraction })
                } else {
                    Err(SyncError::InvalidArgument(format!(
                        "top-k fraction {fraction} must be in (0, 1]"
                    )))
                }
            }
        }
    }
}

/// What to put into an update besides the deltas.
#[derive(Clone, Debug)]
pub struct UpdateOptions<'a> {
    /// The id the device registered with.
    pub device_id: &'a str,
    /// How the deltas are encoded.
    pub encoding: DeltaEncoding,
    /// How many local examples the refinement saw (the server's FedAvg weight).
    pub num_examples: u64,
    /// Metrics to report (local accuracy, loss...).
    pub metrics: &'a [Metric<'a>],
    /// Tensor name prefixes that are personal: never sent, whatever changed.
    pub personal: &'a [&'a str],
}

/// An update placed in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// Its sequence number.
    pub seq: u64,
    /// Size of the signed envelope in bytes.
    pub bytes: usize,
    /// Names of the tensors it carries deltas for, ascending.
    pub tensors: Vec<String>,
}

/// The residual file of top-k error feedback, beside the outbox.
const RESIDUALS: &str = "residuals.pupil";

/// The changed float tensors of `refined` against `base`, as (name, shape, delta).
fn deltas(
    base: &ModelFile,
    refined: &[NamedValues],
    personal: &[&str],
) -> Result<Vec<NamedValues>, SyncError> {
    let mut out = Vec::new();
    for (name, shape, values) in refined {
        if name.starts_with(DATA_TENSOR_PREFIX) || personal.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let t = base.tensor(name).map_err(|_| {
            SyncError::InvalidArgument(format!(
                "the refined model has a tensor {name:?} that the base version lacks; \
                 mark it personal or refine the version the device pulled"
            ))
        })?;
        if t.shape != shape.as_slice() {
            return Err(SyncError::InvalidArgument(format!(
                "tensor {name:?} is {shape:?} in the refined model but {:?} in the base version",
                t.shape
            )));
        }
        let old = t.to_f32();
        let delta: Vec<f32> = values.iter().zip(&old).map(|(a, b)| a - b).collect();
        if delta.iter().all(|&d| d == 0.0) {
            continue;
        }
        if let Some(bad) = delta.iter().position(|d| !d.is_finite()) {
            return Err(SyncError::InvalidArgument(format!(
                "tensor {name:?} has a non-finite value at element {bad}; the refinement \
                 diverged: lower the learning rate or roll back"
            )));
        }
        if !takes_deltas(name, t.dtype) {
            return Err(SyncError::InvalidArgument(format!(
                "tensor {name:?} is {} in the base version: only floating-point tensors \
                 take deltas (freeze it or mark it personal)",
                t.dtype.name()
            )));
        }
        out.push((name.clone(), shape.clone(), delta));
    }
    Ok(out)
}

/// The residuals kept from earlier top-k updates, by tensor name.
fn load_residuals(path: &Path) -> Result<Option<ModelFile>, SyncError> {
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(ModelFile::open(path)?))
}

/// Encodes `deltas`; for top-k also returns the residuals to keep.
fn encode(
    deltas: &[NamedValues],
    encoding: DeltaEncoding,
    residuals: Option<&ModelFile>,
) -> Result<(Vec<EncodedDelta>, Vec<NamedValues>), SyncError> {
    let mut encoded = Vec::with_capacity(deltas.len());
    let mut kept = Vec::new();
    for (name, shape, delta) in deltas {
        encoded.push(match encoding {
            DeltaEncoding::F16 => EncodedDelta::f16(name, shape, delta)?,
            DeltaEncoding::Int8 => EncodedDelta::int8(name, shape, delta)?,
            DeltaEncoding::TopK { fraction } => {
                let previous = residuals
                    .and_then(|r| r.tensor(name).ok())
                    .filter(|t| t.shape == shape.as_slice())
                    .map(|t| t.to_f32());
                let k = ((delta.len() as f64 * f64::from(fraction)).ceil() as usize).max(1);
                let top = EncodedDelta::top_k(name, shape, delta, previous.as_deref(), k)?;
                kept.push((name.clone(), shape.clone(), top.residual));
                top.delta
            }
        });
    }
    Ok((encoded, kept))
}

impl Outbox {
    /// Builds the update from `base` (the version the device pulled) to `refined` (every
    /// tensor of the refined model, or only those that may have trained), signs it with
    /// `key` and queues it durably. Only tensors whose values changed are sent; see the
    /// module doc for what is refused. Fails with [`SyncError::InvalidArgument`] when
    /// nothing changed.
    pub fn queue_update(
        &self,
        key: &KeyPair,
        base: &ModelFile,
        refined: &[NamedValues],
        options: &UpdateOptions<'_>,
    ) -> Result<Queued, SyncError> {
        let deltas = deltas(base, refined, options.personal)?;
        if deltas.is_empty() {
            return Err(SyncError::InvalidArgument(
                "the refined model equals the base version: nothing to send".into(),
            ));
        }
        let residual_path = self.residual_path();
        let residuals = match options.encoding {
            DeltaEncoding::TopK { .. } => load_residuals(&residual_path)?,
            _ => None,
        };
        let (encoded, kept) = encode(&deltas, options.encoding, residuals.as_ref())?;
        // A residual is used once: drop it before the update that carries it is queued, so
        // a crash in between loses some error feedback instead of sending values twice.
        if residuals.is_some() {
            fs::remove_file(&residual_path).map_err(io_err("remove", &residual_path))?;
        }
        let views: Vec<_> = encoded.iter().map(EncodedDelta::as_delta).collect();
        let info = base.info();
        let seq = self.enqueue(key, |seq| {
            UpdateDraft {
                model_id: &info.model_id,
                base_version: base.content_hash(),
                device_id: options.device_id,
                seq,
                num_examples: options.num_examples.max(1),
                metrics: options.metrics,
                deltas: &views,
            }
            .encode()
        })?;
        if !kept.is_empty() {
            let mut b = ModelBuilder::new(&info.model_id, "residuals")?;
            for (name, shape, values) in &kept {
                b.add_f32(name, shape, values)?;
            }
            b.write_atomic(&residual_path)?;
        }
        let mut tensors: Vec<String> = deltas.into_iter().map(|(n, _, _)| n).collect();
        tensors.sort_unstable();
        Ok(Queued {
            seq,
            bytes: self.read(seq)?.len(),
            tensors,
        })
    }

    /// Builds and queues the update from `base` to the refined model file `refined` (see
    /// [`Outbox::queue_update`]); every float tensor of `refined` is compared.
    pub fn queue_model_update(
        &self,
        key: &KeyPair,
        base: &ModelFile,
        refined: &ModelFile,
        options: &UpdateOptions<'_>,
    ) -> Result<Queued, SyncError> {
        let values: Vec<NamedValues> = refined
            .tensors()
            .filter(|t| takes_deltas(t.name, t.dtype))
            .map(|t| (t.name.to_owned(), t.shape.to_vec(), t.to_f32()))
            .collect();
        self.queue_update(key, base, &values, options)
    }

    /// Where top-k residuals are kept.
    fn residual_path(&self) -> PathBuf {
        self.dir().join(RESIDUALS)
    }
}

#[cfg(test)]
mod tests {
    use pupil_format::DType;
    use pupil_wire::{Envelope, Update};

    use super::*;

    fn base() -> ModelFile {
        let mut b = ModelBuilder::new("m", "mlp").unwrap();
        b.add_f32("a.weight", &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
            .unwrap();
        b.add_f32("b.bias", &[4], &[1.0; 4]).unwrap();
        b.add_tensor("labels", DType::U8, &[2], vec![1, 2]).unwrap();
        b.add_f32("replay.images", &[2], &[0.0, 1.0]).unwrap();
        ModelFile::from_bytes(b.to_bytes().unwrap()).unwrap()
    }

    fn options(encoding: DeltaEncoding) -> UpdateOptions<'static> {
        UpdateOptions {
            device_id: "d1",
            encoding,
            num_examples: 7,
            metrics: &[],
            personal: &[],
        }
    }

    /// The decoded deltas of queued update `seq`, by name.
    fn decoded(outbox: &Outbox, seq: u64) -> Vec<(String, Vec<f32>)> {
        let bytes = outbox.read(seq).unwrap();
        let env = Envelope::parse(&bytes).unwrap();
        let u = Update::parse(env.body).unwrap();
        u.deltas
            .iter()
            .flatten()
            .map(|d| {
                let mut v = vec![0.0; d.elements() as usize];
                d.add_to(&mut v, 1.0).unwrap();
                (d.name.to_owned(), v)
            })
            .collect()
    }

    #[test]
    fn only_changed_tensors_are_sent_and_the_update_is_signed() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let key = KeyPair::from_seed([1; 32]);
        let base = base();
        let refined = vec![
            (
                "a.weight".into(),
                vec![2, 3],
                vec![0.0, 1.5, 2.0, 3.0, 4.0, 4.0],
            ),
            ("b.bias".into(), vec![4], vec![1.0; 4]),
        ];
        let q = outbox
            .queue_update(&key, &base, &refined, &options(DeltaEncoding::F16))
            .unwrap();
        assert_eq!(q.seq, 1);
        assert_eq!(q.tensors, ["a.weight"]);
        let bytes = outbox.read(1).unwrap();
        let env = Envelope::parse(&bytes).unwrap();
        assert!(crate::keys::verify(&key.public(), env.body, &env.signature));
        let u = Update::parse(env.body).unwrap();
        assert_eq!(u.base_version, base.content_hash());
        assert_eq!((u.device_id, u.num_examples), ("d1", 7));
        assert_eq!(
            decoded(&outbox, 1),
            [("a.weight".into(), vec![0.0, 0.5, 0.0, 0.0, 0.0, -1.0])]
        );
    }

    #[test]
    fn personal_integer_unknown_and_unchanged_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let key = KeyPair::from_seed([1; 32]);
        let base = base();
        let moved = |name: &str, n: usize| vec![(name.to_owned(), vec![n as u64], vec![9.0; n])];
        let personal = UpdateOptions {
            personal: &["b."],
            ..options(DeltaEncoding::Int8)
        };
        let err = outbox
            .queue_update(&key, &base, &moved("b.bias", 4), &personal)
            .unwrap_err();
        assert!(err.to_string().contains("nothing to send"), "{err}");
        // Data tensors stay on the device, even in floating point.
        let err = outbox
            .queue_update(
                &key,
                &base,
                &moved("replay.images", 2),
                &options(DeltaEncoding::F16),
            )
            .unwrap_err();
        assert!(err.to_string().contains("nothing to send"), "{err}");
        let err = outbox
            .queue_update(
                &key,
                &base,
                &moved("labels", 2),
                &options(DeltaEncoding::F16),
            )
            .unwrap_err();
        assert!(err.to_string().contains("only floating-point"), "{err}");
        let err = outbox
            .queue_update(&key, &base, &moved("c", 2), &options(DeltaEncoding::F16))
            .unwrap_err();
        assert!(err.to_string().contains("lacks"), "{err}");
        let mut nan = moved("b.bias", 4);
        nan[0].2[1] = f32::NAN;
        let err = outbox
            .queue_update(&key, &base, &nan, &options(DeltaEncoding::F16))
            .unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
        assert!(outbox.queued().unwrap().is_empty());
    }

    #[test]
    fn top_k_sends_the_rest_later() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path()).unwrap();
        let key = KeyPair::from_seed([1; 32]);
        let base = base();
        let refined = vec![("b.bias".into(), vec![4], vec![1.1, 1.2, 1.4, 1.8])];
        let half = options(DeltaEncoding::TopK { fraction: 0.5 });
        outbox.queue_update(&key, &base, &refined, &half).unwrap();
        let first = &decoded(&outbox, 1)[0].1;
        assert_eq!(first.iter().filter(|&&v| v != 0.0).count(), 2);
        assert!((first[3] - 0.8).abs() < 1e-3 && (first[2] - 0.4).abs() < 1e-3);
        // A tiny new change: the residual (0.1, 0.2) is what is sent now.
        let next = vec![("b.bias".into(), vec![4], vec![1.0, 1.0, 1.0, 1.001])];
        outbox.queue_update(&key, &base, &next, &half).unwrap();
        let second = &decoded(&outbox, 2)[0].1;
        assert!((second[0] - 0.1).abs() < 1e-3, "{second:?}");
        assert!((second[1] - 0.2).abs() < 1e-3, "{second:?}");
        assert_eq!(second[2..], [0.0, 0.0]);
    }

    #[test]
    fn encodings_parse() {
        assert_eq!(DeltaEncoding::parse("int8").unwrap(), DeltaEncoding::Int8);
        assert_eq!(
            DeltaEncoding::parse("topk:0.25").unwrap(),
            DeltaEncoding::TopK { fraction: 0.25 }
        );
        assert!(DeltaEncoding::parse("topk:0").is_err());
        assert!(DeltaEncoding::parse("bf16").is_err());
    }
}
