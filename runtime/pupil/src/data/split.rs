//! A set of examples of any shape in memory: each example is `dim` bytes standing for
//! `byte / 255` (images' pixels, or features scaled to [0, 1]), with one class label each.
//! Its shape comes from the data (an IDX header, a model file's anchors), never from a
//! constant: `[C, H, W]` for images, `[D]` for feature vectors.

use super::DataError;

/// Examples of one shape with their labels (labels of an unlabelled pool are 0 and unused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The shape of one example, e.g. `[1, 28, 28]` or `[64]`.
    pub shape: Vec<usize>,
    /// `n * dim` bytes, example after example, each value `byte / 255`.
    pub images: Vec<u8>,
    /// `n` class labels.
    pub labels: Vec<u8>,
    /// Number of examples.
    pub n: usize,
}

/// A data set's training and test examples, of one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Examples to train on.
    pub train: Split,
    /// Examples to measure on.
    pub test: Split,
}

impl Split {
    /// `labels.len()` examples of `shape` from `images`; refuses a byte count that does not
    /// match.
    pub fn new(shape: &[usize], images: Vec<u8>, labels: Vec<u8>) -> Result<Split, DataError> {
        let dim = shape.iter().product::<usize>();
        if shape.is_empty() || dim == 0 || images.len() != labels.len() * dim {
            return Err(DataError::Shape {
                shape: shape.to_vec(),
                bytes: images.len(),
                n: labels.len(),
            });
        }
        Ok(Split {
            shape: shape.to_vec(),
            n: labels.len(),
            images,
            labels,
        })
    }

    /// No examples of `shape`.
    pub fn empty(shape: &[usize]) -> Split {
        Split {
            shape: shape.to_vec(),
            images: Vec::new(),
            labels: Vec::new(),
            n: 0,
        }
    }

    /// Values per example (the product of the shape).
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// The bytes of example `i`, or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let dim = self.dim();
        let start = i.checked_mul(dim)?;
        self.images.get(start..)?.get(..dim)
    }

    /// The examples at `indices` (each must be below `n`), in that order.
    pub fn subset(&self, indices: &[usize]) -> Split {
        let dim = self.dim();
        let mut images = Vec::with_capacity(indices.len() * dim);
        for &i in indices {
            images.extend_from_slice(&self.images[i * dim..(i + 1) * dim]);
        }
        Split {
            shape: self.shape.clone(),
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            n: indices.len(),
        }
    }

    /// Examples `from..to`.
    pub fn range(&self, from: usize, to: usize) -> Split {
        let dim = self.dim();
        Split {
            shape: self.shape.clone(),
            images: self.images[from * dim..to * dim].to_vec(),
            labels: self.labels[from..to].to_vec(),
            n: to - from,
        }
    }

    /// This split followed by `other` (of the same shape).
    pub fn concat(&self, other: &Split) -> Result<Split, DataError> {
        if other.n > 0 && self.n > 0 && other.shape != self.shape {
            return Err(DataError::Shape {
                shape: other.shape.clone(),
                bytes: other.images.len(),
                n: other.n,
            });
        }
        let mut images = self.images.clone();
        images.extend_from_slice(&other.images);
        let mut labels = self.labels.clone();
        labels.extend_from_slice(&other.labels);
        let shape = if self.n > 0 {
            &self.shape
        } else {
            &other.shape
        };
        Split::new(shape, images, labels)
    }

    /// The largest label plus one (0 for no examples).
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&y| usize::from(y) + 1)
    }

    /// Appends example `i` as `byte / 255` floats to `out`.
    pub fn extend_f32(&self, i: usize, out: &mut Vec<f32>) -> Result<(), DataError> {
        let image = self.image(i).ok_or(DataError::Index {
            index: i,
            n: self.n,
        })?;
        out.extend(image.iter().map(|&p| f32::from(p) / 255.0));
        Ok(())
    }

    /// Fills `images` with the examples at `indices` as byte / 255 (`indices.len() * dim`
    /// floats) and `labels` with their labels, reusing both buffers' memory.
    /// On error the buffers hold a partial batch.
    pub fn batch_f32(
        &self,
        indices: &[usize],
        images: &mut Vec<f32>,
        labels: &mut Vec<u32>,
    ) -> Result<(), DataError> {
        images.clear();
        labels.clear();
        images.reserve(indices.len() * self.dim());
        labels.reserve(indices.len());
        for &index in indices {
            let &label = self
                .labels
                .get(index)
                .ok_or(DataError::Index { index, n: self.n })?;
            self.extend_f32(index, images)?;
            labels.push(u32::from(label));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked_and_kept() {
        let s = Split::new(&[1, 2, 3], (0..12).collect(), vec![0, 4]).unwrap();
        assert_eq!((s.dim(), s.n, s.classes()), (6, 2, 5));
        assert_eq!(s.image(1).unwrap(), &[6, 7, 8, 9, 10, 11]);
        assert!(s.image(2).is_none());
        assert_eq!(s.subset(&[1]).images, (6..12).collect::<Vec<u8>>());
        assert_eq!(s.range(0, 1).concat(&s.range(1, 2)).unwrap(), s);
        assert!(Split::new(&[1, 2, 3], vec![0; 11], vec![0, 1]).is_err());
        assert!(Split::new(&[], vec![], vec![]).is_err());
        let other = Split::new(&[6], vec![0; 6], vec![1]).unwrap();
        assert!(s.concat(&other).is_err());
        let (mut x, mut y) = (Vec::new(), Vec::new());
        s.batch_f32(&[1, 0], &mut x, &mut y).unwrap();
        assert_eq!((x.len(), &y), (12, &vec![4, 0]));
        assert!((x[0] - 6.0 / 255.0).abs() < 1e-7);
        assert!(s.batch_f32(&[2], &mut x, &mut y).is_err());
    }
}
