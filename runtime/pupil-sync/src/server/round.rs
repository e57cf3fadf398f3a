//! The round policy and a round: aggregate the pending updates, apply the
//! step to the current model, gate the candidate, publish or keep the old one.
//!
//! A round never fails because of an update: one that does not decode or no
//! longer fits the model (after a rollback, or stored by an older server that
//! let it through) is set aside with why, and the round goes on with the rest.
//! Every round consumes or sets aside all the updates it saw, so none can
//! block the next one.

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::Instant;

use pupil_format::{ModelBuilder, ModelFile};
use pupil_wire::{Envelope, Update};

use super::submit::not_trainable;
use super::update_source::UpdateSource;
use super::{unix_now, Server};
use crate::aggregate::{aggregate_sources, staleness_weight, AggregateError, Rule};
use crate::lora_merge::{merge_adapter_deltas, Merge};
use crate::protocol::takes_deltas;
use crate::store::{RoundRecord, UpdateKey};
use crate::SyncError;

/// The deltas of one round laid out flat over the tensors they touch, read from the
/// stored updates' bytes.
struct Batch<'a> {
    /// Tensor name → (offset, length) in the flat layout.
    layout: BTreeMap<String, (usize, usize)>,
    /// One source per update, over the flat layout.
    sources: Vec<UpdateSource<'a>>,
    /// One weight per update.
    weights: Vec<f64>,
    /// Sums of device metrics and how many reported each.
    metrics: BTreeMap<String, (f64, u64)>,
    /// The updates aggregated, in the order of `deltas`.
    used: Vec<UpdateKey>,
    /// The updates that cannot be aggregated, with why.
    set_aside: Vec<(UpdateKey, String)>,
}

/// Why `update` cannot be added to `model`, if it cannot: a delta that does
/// not decode, or names a tensor the model lacks, of another shape, or one
/// that takes no deltas.
fn unfit(model: &ModelFile, update: &Update<'_>) -> Option<String> {
    for delta in update.deltas.iter() {
        let delta = match delta {
            Ok(d) => d,
            Err(e) => return Some(format!("a delta does not decode: {e}")),
        };
        let Ok(tensor) = model.tensor(delta.name) else {
            return Some(format!("the model has no tensor {:?}", delta.name));
        };
        if tensor.shape != delta.shape.as_slice() {
            return Some(format!(
                "delta {:?} has shape {:?} but the model's tensor is {:?}",
                delta.name,
                delta.shape.as_slice(),
                tensor.shape
            ));
        }
        if !takes_deltas(delta.name, tensor.dtype) {
            return Some(not_trainable(delta.name, tensor.dtype));
        }
    }
    None
}

impl Server {
    /// Whether a round should run now: enough pending updates, or some and
    /// the deadline passed.
    pub fn round_due(&self) -> Result<bool, SyncError> {
        let pending = self.store.counts()?[1];
        let waited = self
            .last_round
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        Ok(pending >= self.config.min_updates || (pending > 0 && waited >= self.config.deadline))
    }

    /// Runs a round over every pending update; returns its record, or `None`
    /// when nothing is pending or there is no model.
    pub fn run_round(&self) -> Result<Option<RoundRecord>, SyncError> {
        let _round = self
            .round_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *self
            .last_round
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let pending = self.store.pending()?;
        let Some(current) = self.current() else {
            return Ok(None);
        };
        if pending.is_empty() {
            return Ok(None);
        }
        let mut batch = self.batch(&current.model, current.meta.version, &pending);
        let n = self.store.last_round()? + 1;
        let mut record = RoundRecord {
            round: n,
            updates: batch.used.len() as u64,
            set_aside: batch.set_aside.len() as u64,
            published: None,
            gate: String::new(),
            finished_unix: 0,
        };
        // The optimizer steps on a copy: its state changes only if the gate publishes.
        let mut opt = self
            .opt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let aggregated = aggregate_sources(self.config.rule, &batch.sources, &batch.weights)
            .and_then(|mut mean| {
                if self.config.rule == Rule::FedAvg && self.config.lora_merge == Merge::Product {
                    let layout: Vec<(&str, usize, usize)> = batch
                        .layout
                        .iter()
                        .map(|(name, &(at, len))| (name.as_str(), at, len))
                        .collect();
                    merge_adapter_deltas(
                        &current.model,
                        &layout,
                        &batch.sources,
                        &batch.weights,
                        &mut mean,
                    )
                    .map_err(AggregateError::Adapters)?;
                }
                Ok(mean)
            });
        let candidate = match aggregated {
            Ok(mean) => {
                let step = opt.step(&mean);
                match self.candidate(
                    &current.model,
                    &batch.layout,
                    &step,
                    current.meta.version + 1,
                ) {
                    Ok(candidate) => Some(candidate),
                    Err(e) => {
                        // Not one update's fault, but none of them can be used this way.
                        record.gate = format!("not built: {e}");
                        let why = format!("round {n} could not build its candidate: {e}");
                        let used = std::mem::take(&mut batch.used);
                        batch
                            .set_aside
                            .extend(used.into_iter().map(|k| (k, why.clone())));
                        record.updates = 0;
                        record.set_aside = batch.set_aside.len() as u64;
                        None
                    }
                }
            }
            Err(e) => {
                record.gate = format!("not aggregated: {e}");
                None
            }
        };
        let mut published = None;
        if let Some(candidate) = candidate {
            let verdict = (self.gate)(&candidate, &current.model);
            record.gate = format!(
                "{}: {}",
                if verdict.accept { "passed" } else { "rejected" },
                verdict.reason
            );
            if verdict.accept {
                let mut metrics = verdict.metrics;
                for (name, (sum, count)) in &batch.metrics {
                    metrics.insert(format!("device.{name}"), sum / *count as f64);
                }
                let version = self.store.last_version()? + 1;
                let parent = Some(current.model.content_hash());
                let meta = self.version_meta(&candidate, version, parent, Some(n), metrics);
                record.published = Some(version);
                published = Some((meta, candidate));
            }
        }
        record.finished_unix = unix_now();
        let opt_state = serde_json::to_vec(&opt).map_err(|e| SyncError::Corrupt {
            what: "server optimizer".into(),
            detail: e.to_string(),
        })?;
        let version = published
            .as_ref()
            .map(|(m, c)| (m, c.as_bytes(), opt_state.as_slice()));
        self.store
            .finish_round(version, &record, &batch.used, &batch.set_aside)?;
        if published.is_some() {
            *self.opt.lock().unwrap_or_else(PoisonError::into_inner) = opt;
        }
        let pruned = self.store.prune(&self.config.retention, unix_now())?;
        if published.is_some() || pruned.versions > 0 {
            self.reload()?;
        }
        Ok(Some(record))
    }

    /// Lays the pending updates' deltas out flat over the tensors they touch, weighted
    /// by their example counts (each capped at the configured maximum) and staleness.
    /// Updates that do not fit the model are set aside.
    fn batch<'a>(
        &self,
        model: &ModelFile,
        current: u64,
        pending: &'a [(UpdateKey, Vec<u8>)],
    ) -> Batch<'a> {
        let mut batch = Batch {
            layout: BTreeMap::new(),
            sources: Vec::new(),
            weights: Vec::new(),
            metrics: BTreeMap::new(),
            used: Vec::new(),
            set_aside: Vec::new(),
        };
        let mut updates: Vec<Update<'a>> = Vec::new();
        for (key, bytes) in pending {
            let fitting = Envelope::parse(bytes)
                .and_then(|env| Update::parse(env.body))
                .map_err(|e| format!("the update does not decode: {e}"))
                .and_then(|u| unfit(model, &u).map_or(Ok(u), Err));
            match fitting {
                Ok(u) => {
                    batch.used.push(key.clone());
                    updates.push(u);
                }
                Err(why) => batch.set_aside.push((key.clone(), why)),
            }
        }
        let mut total = 0usize;
        for d in updates.iter().flat_map(|u| u.deltas.iter().flatten()) {
            if !batch.layout.contains_key(d.name) {
                let len = d.elements() as usize;
                batch.layout.insert(d.name.to_owned(), (total, len));
                total += len;
            }
        }
        for u in &updates {
            // The layout was made from these deltas, so every name is in it.
            let placed = u
                .deltas
                .iter()
                .flatten()
                .filter_map(|d| batch.layout.get(d.name).map(|&(at, _)| (at, d)))
                .collect();
            batch.sources.push(UpdateSource::new(placed, total));
            let base = self.version_of(&u.base_version).unwrap_or(0);
            batch.weights.push(staleness_weight(
                u.num_examples.min(self.config.max_examples),
                current.saturating_sub(base),
            ));
            for m in &u.metrics {
                let e = batch.metrics.entry(m.name.to_owned()).or_default();
                e.0 += f64::from(m.value);
                e.1 += 1;
            }
        }
        batch
    }

    /// The current model with `step` added to the tensors in `layout`,
    /// as version `version` whose parent is the current model.
    fn candidate(
        &self,
        model: &ModelFile,
        layout: &BTreeMap<String, (usize, usize)>,
        step: &[f32],
        version: u64,
    ) -> Result<ModelFile, SyncError> {
        let info = model.info();
        let mut b = ModelBuilder::new(&info.model_id, &info.arch)?;
        b.version(u32::try_from(version).unwrap_or(u32::MAX))
            .parent(Some(model.content_hash()));
        for entry in &info.config {
            b.config(&entry.key, entry.value.clone())?;
        }
        for t in model.tensors() {
            match layout.get(t.name) {
                Some(&(at, len)) => {
                    let mut values = t.to_f32();
                    values
                        .iter_mut()
                        .zip(&step[at..at + len])
                        .for_each(|(v, s)| *v += s);
                    b.add_f32_as(t.name, t.dtype, t.shape, &values)?;
                }
                None => {
                    b.add_tensor(t.name, t.dtype, t.shape, t.bytes.to_vec())?;
                }
            }
        }
        Ok(ModelFile::from_bytes(b.to_bytes()?)?)
    }
}
