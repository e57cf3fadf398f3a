//! The [`App`] a pupil classifier answers a Flower federation with: FedAvg's client update
//! (McMahan et al. 2017: the received arrays, `local-epochs` passes of plain SGD at `lr` over
//! the node's own examples) for `train`, loss and accuracy on its held-out examples for
//! `evaluate`, and its current arrays for `query` (how a ServerApp can take the initial
//! model from a node instead of building it in Python). Arrays are matched to the model's
//! parameters by name and shape, so the model file decides the architecture.

use pupil::data::Split;
use pupil::models::classifier::Model;
use pupil::train::{logits, sgd_epochs, Examples};

use crate::objects::{metric_record, Metric, Record, RecordDict};
use crate::supernode::App;

/// A classifier, its local training and held-out examples, and FedAvg's local settings.
pub struct ClassifierApp {
    model: Model,
    train: Split,
    test: Split,
    /// Mini-batch size of the local SGD.
    pub batch: usize,
    /// Local epochs when the message's config has no `local-epochs`.
    pub epochs: usize,
    /// Learning rate when the message's config has no `lr`.
    pub lr: f32,
    seed: u64,
}

impl ClassifierApp {
    /// An app over `model` training on `train` and evaluating on `test` (batch 32, 1 local
    /// epoch, lr 0.05 unless the server's config says otherwise).
    pub fn new(model: Model, train: Split, test: Split, seed: u64) -> ClassifierApp {
        ClassifierApp {
            model,
            train,
            test,
            batch: 32,
            epochs: 1,
            lr: 0.05,
            seed,
        }
    }

    /// The model as it is now.
    pub fn model(&self) -> &Model {
        &self.model
    }

    fn load(&self, content: &RecordDict) -> Result<(), String> {
        crate::params::load(&self.model.params, content, "a parameter of this model")
    }

    fn arrays(&self) -> Result<Record, String> {
        crate::params::record(&self.model.params)
    }

    /// Mean cross-entropy and accuracy on the held-out examples.
    pub fn evaluate_local(&self) -> Result<(f64, f64), String> {
        let m = &self.model;
        let z = logits(&m.net, &m.params, &self.test, 256).map_err(|e| e.to_string())?;
        let classes = m.classes();
        let (mut loss, mut correct) = (0.0f64, 0usize);
        for (i, row) in z.chunks(classes).enumerate() {
            let label = self.test.label(i).map_err(|e| e.to_string())?;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
            loss += sum.ln() - f64::from(row[label] - max);
            let best = row
                .iter()
                .enumerate()
                .fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
            correct += usize::from(best == label);
        }
        let n = self.test.len().max(1) as f64;
        Ok((loss / n, correct as f64 / n))
    }
}

impl App for ClassifierApp {
    fn train(&mut self, content: &RecordDict) -> Result<RecordDict, String> {
        self.load(content)?;
        let lr = content.config_number("lr").map_or(self.lr, |v| v as f32);
        let epochs = content
            .config_number("local-epochs")
            .map_or(self.epochs, |v| v.max(1.0) as usize);
        let round = content.config_number("server-round").unwrap_or(0.0) as u64;
        let m = &self.model;
        let losses = sgd_epochs(
            &m.net,
            &m.params,
            &self.train,
            epochs,
            self.batch,
            lr,
            self.seed.wrapping_add(round * 1000),
        )
        .map_err(|e| e.to_string())?;
        let loss = losses.last().copied().unwrap_or(f32::NAN);
        Ok(RecordDict(vec![
            ("arrays".into(), self.arrays()?),
            (
                "metrics".into(),
                metric_record(&[
                    ("num-examples", Metric::Int(self.train.len() as i64)),
                    ("train_loss", Metric::Float(f64::from(loss))),
                ]),
            ),
        ]))
    }

    fn evaluate(&mut self, content: &RecordDict) -> Result<RecordDict, String> {
        self.load(content)?;
        let (loss, acc) = self.evaluate_local()?;
        Ok(RecordDict(vec![(
            "metrics".into(),
            metric_record(&[
                ("num-examples", Metric::Int(self.test.len() as i64)),
                ("eval_loss", Metric::Float(loss)),
                ("eval_acc", Metric::Float(acc)),
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
    use crate::objects::Array;
    use pupil::models::classifier::{Arch, ClassifierSpec};
    use pupil::Backend;

    fn toy(n: usize, seed: u8) -> Split {
        // Two classes: bright left half or bright right half of a 4 x 4 image.
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for i in 0..n {
            let class = (i + seed as usize) % 2;
            for p in 0..16 {
                let left = p % 4 < 2;
                images.push(if left == (class == 0) {
                    200
                } else {
                    10 + (i * 7 % 20) as u8
                });
            }
            labels.push(class as u8);
        }
        Split::new(&[1, 4, 4], images, labels).unwrap()
    }

    #[test]
    fn trains_evaluates_and_answers_queries_by_name() {
        let spec = ClassifierSpec::new(Arch::Mlp, &[1, 4, 4], 2);
        let model = Model::new("toy", &spec, &Backend::Cpu, 1).unwrap();
        let mut app = ClassifierApp::new(model, toy(64, 0), toy(32, 1), 3);
        let initial = app.query(&RecordDict::default()).unwrap();
        let (before, _) = app.evaluate_local().unwrap();
        let mut message = initial.clone();
        message.0.push((
            "config".into(),
            Record::Config(crate::proto::ConfigRecord {
                items: vec![crate::proto::config_record::Item {
                    key: "local-epochs".into(),
                    value: Some(crate::proto::ConfigRecordValue {
                        value: Some(crate::proto::config_record_value::Value::Sint64(5)),
                    }),
                }],
            }),
        ));
        let reply = app.train(&message).unwrap();
        assert_eq!(reply.0[0].0, "arrays");
        let evaluated = app.evaluate(&reply).unwrap();
        let Record::Metrics(m) = &evaluated.0[0].1 else {
            panic!()
        };
        assert_eq!(m.items[0].key, "num-examples");
        let (after, acc) = app.evaluate_local().unwrap();
        assert!(after < before, "loss {before} -> {after}");
        assert!(acc > 0.9, "accuracy {acc}");
        // Sending the initial arrays back restores the initial model.
        app.evaluate(&initial).unwrap();
        assert_eq!(app.evaluate_local().unwrap().0, before);
        // An array of the wrong name or shape is refused.
        let wrong = RecordDict(vec![(
            "arrays".into(),
            Record::Arrays(vec![("nope".into(), Array::from_f32(&[1], &[0.0]))]),
        )]);
        assert!(app.train(&wrong).unwrap_err().contains("nope"));
        let Some([(name, _), ..]) = initial.arrays() else {
            panic!()
        };
        let misshapen = RecordDict(vec![(
            "arrays".into(),
            Record::Arrays(vec![(name.clone(), Array::from_f32(&[3], &[0.0; 3]))]),
        )]);
        assert!(app.evaluate(&misshapen).unwrap_err().contains("shape"));
    }
}
