//! Supervised training and evaluation loops for classifiers over in-memory examples.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::classifier::Classifier;
use crate::optim::{Optimizer, Rule, SgdConfig};
use crate::params::Params;
use crate::tensor::Tensor;

/// Labelled examples: `features` holds `n * dim` floats, `labels` `n` class indices.
pub trait Examples {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `features` (`indices.len() * dim`) and `labels` for `indices`, reusing the
    /// buffers.
    fn batch(
        &self,
        indices: &[usize],
        features: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) -> Result<()>;
    /// Features per example.
    fn dim(&self) -> usize;
    /// The class of example `i`.
    fn label(&self, i: usize) -> Result<usize>;
}

impl Examples for crate::data::Split {
    fn len(&self) -> usize {
        self.n
    }
    fn dim(&self) -> usize {
        crate::data::Split::dim(self)
    }
    fn label(&self, i: usize) -> Result<usize> {
        self.labels
            .get(i)
            .map(|&y| y as usize)
            .ok_or_else(|| Error::Invalid(format!("example {i} out of {}", self.n)))
    }
    fn batch(
        &self,
        indices: &[usize],
        features: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) -> Result<()> {
        Ok(self.batch_f32(indices, features, labels)?)
    }
}

/// One pass over `data` in shuffled mini-batches; calls `progress(examples_done, loss)`
/// every `report_every` steps with the mean loss since the last report (each report is a
/// synchronisation). Returns the epoch's mean loss.
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    net: &Classifier,
    params: &Params,
    opt: &mut Optimizer,
    data: &dyn Examples,
    batch: usize,
    seed: u64,
    report_every: usize,
    mut progress: impl FnMut(usize, f32),
) -> Result<f32> {
    let backend = params.backend().clone();
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let (mut xs, mut ys, mut yf) = (Vec::new(), Vec::new(), Vec::new());
    let loss_sum = Tensor::zeros(&backend, &[1])?;
    let (mut since, mut total, mut steps) = (0usize, 0.0f64, 0usize);
    let report_every = report_every.max(1);
    for (i, idx) in order.chunks(batch).enumerate() {
        data.batch(idx, &mut xs, &mut ys)?;
        yf.clear();
        yf.extend(ys.iter().map(|&c| c as f32));
        let mut g = Graph::new(&backend);
        let x = g.input(Tensor::from_slice(&backend, &[idx.len(), data.dim()], &xs)?);
        let y = g.input(Tensor::from_slice(&backend, &[idx.len()], &yf)?);
        let logits = net.logits(&mut g, params, x)?;
        let loss = g.cross_entropy(logits, y)?;
        crate::ops::elementwise::axpy(&loss_sum, 1.0, g.value(loss))?;
        params.zero_grad()?;
        g.backward(loss)?;
        opt.step(params)?;
        since += 1;
        if since == report_every || (i + 1) * batch >= data.len() {
            let v = loss_sum.item()? as f64;
            loss_sum.write(&[0.0])?;
            progress(((i + 1) * batch).min(data.len()), (v / since as f64) as f32);
            total += v;
            steps += since;
            since = 0;
        }
    }
    Ok((total / steps.max(1) as f64) as f32)
}

/// A FedAvg client's local update (McMahan et al. 2017): `epochs` passes of plain SGD (no
/// momentum, weight decay or clipping) at `lr` over `data` in batches of `batch`, epoch `e`
/// shuffled with seed `seed + e`. Returns each epoch's mean loss.
pub fn sgd_epochs(
    net: &Classifier,
    params: &Params,
    data: &dyn Examples,
    epochs: usize,
    batch: usize,
    lr: f32,
    seed: u64,
) -> Result<Vec<f32>> {
    let sgd = SgdConfig {
        lr,
        momentum: 0.0,
        weight_decay: 0.0,
        max_grad_norm: None,
    };
    let mut opt = Optimizer::new(params, Rule::Sgd(sgd))?;
    (0..epochs)
        .map(|e| {
            train_epoch(
                net,
                params,
                &mut opt,
                data,
                batch,
                seed + e as u64,
                usize::MAX,
                |_, _| {},
            )
        })
        .collect()
}

/// The logits of every example (`[n, classes]`, row-major), computed in batches of `batch`.
pub fn logits(
    net: &Classifier,
    params: &Params,
    data: &dyn Examples,
    batch: usize,
) -> Result<Vec<f32>> {
    let backend: Backend = params.backend().clone();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    let mut out = Vec::new();
    let all: Vec<usize> = (0..data.len()).collect();
    for idx in all.chunks(batch.max(1)) {
        data.batch(idx, &mut xs, &mut ys)?;
        let mut g = Graph::new(&backend);
        let x = g.input(Tensor::from_slice(&backend, &[idx.len(), data.dim()], &xs)?);
        let z = net.logits(&mut g, params, x)?;
        out.extend(g.value(z).to_vec()?);
    }
    Ok(out)
}

/// Predicted class of every example (argmax of the logits), in batches.
pub fn predict(
    net: &Classifier,
    params: &Params,
    data: &dyn Examples,
    batch: usize,
) -> Result<Vec<usize>> {
    let z = logits(net, params, data, batch)?;
    let classes = z.len() / data.len().max(1);
    Ok(z.chunks(classes.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(0, |best, (j, v)| if *v > row[best] { j } else { best })
        })
        .collect())
}

/// Fraction of examples classified correctly.
pub fn accuracy(
    net: &Classifier,
    params: &Params,
    data: &dyn Examples,
    batch: usize,
) -> Result<f32> {
    let pred = predict(net, params, data, batch)?;
    let mut correct = 0usize;
    for (i, p) in pred.iter().enumerate() {
        correct += usize::from(data.label(i)? == *p);
    }
    Ok(correct as f32 / data.len().max(1) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::models::classifier::{Arch, ClassifierSpec, Model};

    /// Four-pixel images whose class is which half is bright.
    fn halves(n: usize) -> Split {
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let images = labels
            .iter()
            .flat_map(|&y| match y {
                0 => [250, 250, 5, 5],
                _ => [5, 5, 250, 250],
            })
            .collect();
        Split::new(&[1, 2, 2], images, labels).unwrap()
    }

    #[test]
    fn sgd_epochs_learn_and_repeat_exactly() {
        let data = halves(64);
        let spec = ClassifierSpec::new(Arch::Mlp, &[1, 2, 2], 2);
        let run = || {
            let model = Model::new("halves", &spec, &Backend::Cpu, 3).unwrap();
            let losses = sgd_epochs(&model.net, &model.params, &data, 4, 8, 0.1, 7).unwrap();
            let values = model.params.trainable_values().unwrap().to_vec().unwrap();
            (model, losses, values)
        };
        let (model, losses, values) = run();
        assert_eq!(losses.len(), 4);
        assert!(losses[3] < losses[0], "loss did not fall: {losses:?}");
        assert_eq!(accuracy(&model.net, &model.params, &data, 16).unwrap(), 1.0);
        // The same seed draws the same batches: the update is bit for bit the same.
        let (_, again, same) = run();
        assert_eq!((again, same), (losses, values));
    }
}
