//! Anchor examples shipped inside the model file: a replay buffer mixed into every refinement
//! batch so the model does not forget what it knew, and a held-out part the quality gate
//! checks. Stored as tensors `replay.images` (`[n, ...example shape]`, values / 255, Q8_0 by
//! default) and `replay.labels` (`[n]`); the last quarter is the holdout.

use rand::Rng;

use crate::data::Split;
use crate::error::{Error, Result};
use crate::format::{DType, ModelBuilder, ModelFile};

/// Tensor holding anchor images.
pub const IMAGES: &str = "replay.images";
/// Tensor holding anchor labels.
pub const LABELS: &str = "replay.labels";

/// Anchor examples, split into a replay part and a holdout part.
#[derive(Clone, Debug, PartialEq)]
pub struct Anchors {
    /// Mixed into training batches.
    pub replay: Split,
    /// Evaluated by the quality gate, never trained on.
    pub holdout: Split,
}

impl Anchors {
    /// Split `all` into replay (first three quarters) and holdout (the rest).
    pub fn new(all: &Split) -> Anchors {
        let cut = all.n - all.n / 4;
        Anchors {
            replay: all.range(0, cut),
            holdout: all.range(cut, all.n),
        }
    }

    /// Every anchor, replay part first.
    pub fn all(&self) -> Split {
        let mut images = self.replay.images.clone();
        images.extend_from_slice(&self.holdout.images);
        let mut labels = self.replay.labels.clone();
        labels.extend_from_slice(&self.holdout.labels);
        Split {
            shape: self.replay.shape.clone(),
            images,
            labels,
            n: self.replay.n + self.holdout.n,
        }
    }

    /// The largest anchor label plus one.
    pub fn classes(&self) -> usize {
        self.replay.classes().max(self.holdout.classes())
    }

    /// `n` examples of `from` drawn evenly over the classes (as far as they go), in a
    /// seeded random order.
    pub fn pick(from: &Split, n: usize, seed: u64) -> Anchors {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); from.classes()];
        for (i, &y) in from.labels.iter().enumerate() {
            by_class[usize::from(y)].push(i);
        }
        for c in &mut by_class {
            rand::seq::SliceRandom::shuffle(c.as_mut_slice(), &mut rng);
        }
        let mut chosen = Vec::with_capacity(n);
        'fill: for k in 0.. {
            let mut any = false;
            for c in &by_class {
                if let Some(&i) = c.get(k) {
                    chosen.push(i);
                    any = true;
                    if chosen.len() == n {
                        break 'fill;
                    }
                }
            }
            if !any {
                break;
            }
        }
        // Interleave classes in both parts: shuffle, so the holdout is not all one class.
        let mut order: Vec<usize> = (0..chosen.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let picked: Vec<usize> = order.iter().map(|&o| chosen[o]).collect();
        Anchors::new(&from.subset(&picked))
    }

    /// Read the anchors a model file carries, if it carries any.
    pub fn from_file(file: &ModelFile) -> Result<Option<Anchors>> {
        let (Ok(tensor), Ok(labels)) = (file.tensor(IMAGES), file.to_f32(LABELS)) else {
            return Ok(None);
        };
        let shape: Vec<usize> = tensor.shape.iter().skip(1).map(|&d| d as usize).collect();
        let malformed = || {
            Error::Invalid(format!(
                "the model file's anchors are malformed: {:?} values and {} labels (labels must \
                 be whole numbers in 0..256)",
                tensor.shape,
                labels.len()
            ))
        };
        if labels
            .iter()
            .any(|&y| !(0.0..256.0).contains(&y) || y.fract() != 0.0)
        {
            return Err(malformed());
        }
        let images = tensor
            .to_f32()
            .iter()
            .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        let labels = labels.iter().map(|&y| y as u8).collect();
        let all = Split::new(&shape, images, labels).map_err(|_| malformed())?;
        Ok(Some(Anchors::new(&all)))
    }

    /// Add the anchors to a model file being built (values as `dtype`; f16 where a block
    /// dtype's 32-element blocks do not divide them).
    pub fn add_to(&self, b: &mut ModelBuilder, dtype: DType) -> Result<()> {
        let all = self.all();
        let pixels: Vec<f32> = all.images.iter().map(|&v| f32::from(v) / 255.0).collect();
        let labels: Vec<f32> = all.labels.iter().map(|&y| f32::from(y)).collect();
        let mut shape = vec![all.n as u64];
        shape.extend(all.shape.iter().map(|&d| d as u64));
        let blocks = dtype.block_elems();
        let dtype = if (pixels.len() as u64).is_multiple_of(blocks) {
            dtype
        } else {
            DType::F16
        };
        b.add_f32_as(IMAGES, dtype, &shape, &pixels)?;
        b.add_f32(LABELS, &[all.n as u64], &labels)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(n: usize) -> Split {
        Split::new(
            &[1, 28, 28],
            (0..n * 784).map(|i| (i % 251) as u8).collect(),
            (0..n).map(|i| (i % 10) as u8).collect(),
        )
        .unwrap()
    }

    #[test]
    fn pick_balances_classes_and_splits() {
        let a = Anchors::pick(&digits(500), 40, 3);
        assert_eq!((a.replay.n, a.holdout.n), (30, 10));
        let all = a.all();
        for c in 0..10u8 {
            assert_eq!(all.labels.iter().filter(|&&y| y == c).count(), 4);
        }
    }

    #[test]
    fn survive_a_model_file_in_q8() {
        let a = Anchors::pick(&digits(100), 20, 1);
        let mut b = ModelBuilder::new("mnist", "mlp").unwrap();
        a.add_to(&mut b, DType::Q8_0).unwrap();
        let file = ModelFile::from_bytes(b.to_bytes().unwrap()).unwrap();
        let back = Anchors::from_file(&file).unwrap().unwrap();
        assert_eq!(back.all().labels, a.all().labels);
        assert_eq!(back.replay.shape, [1, 28, 28]);
        let worst = back
            .all()
            .images
            .iter()
            .zip(&a.all().images)
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        assert!(worst <= 2, "Q8_0 changed a pixel by {worst}");
        let empty =
            ModelFile::from_bytes(ModelBuilder::new("m", "mlp").unwrap().to_bytes().unwrap())
                .unwrap();
        assert_eq!(Anchors::from_file(&empty).unwrap(), None);
    }
}
