//! One stored update's deltas laid out over a round's flat coordinates and read a
//! block at a time, straight from the update's bytes: a top-k delta of a large tensor
//! costs the round its stored values, not a dense copy of the tensor.

use pupil_wire::update::Delta;

use crate::aggregate::DeltaSource;

/// An update's deltas, each at its tensor's offset in the round's layout.
pub(super) struct UpdateSource<'a> {
    /// (offset, delta), ascending by offset.
    deltas: Vec<(usize, Delta<'a>)>,
    /// Length of the round's layout.
    len: usize,
    /// The squared L2 norm of every delta together.
    squared_norm: f64,
}

impl<'a> UpdateSource<'a> {
    /// The source of `deltas` placed at `offsets` in a layout of `len` coordinates.
    pub(super) fn new(mut deltas: Vec<(usize, Delta<'a>)>, len: usize) -> Self {
        deltas.sort_by_key(|(at, _)| *at);
        let squared_norm = deltas.iter().map(|(_, d)| d.squared_norm()).sum();
        UpdateSource {
            deltas,
            len,
            squared_norm,
        }
    }
}

impl DeltaSource for UpdateSource<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, start: usize, out: &mut [f32]) {
        out.fill(0.0);
        let end = start + out.len();
        for (at, delta) in &self.deltas {
            let tensor_end = at + delta.elements() as usize;
            if tensor_end <= start || *at >= end {
                continue;
            }
            let from = start.max(*at);
            let to = end.min(tensor_end);
            delta.read_range(from - at, &mut out[from - start..to - start]);
        }
    }

    fn squared_norm(&self) -> f64 {
        self.squared_norm
    }
}
