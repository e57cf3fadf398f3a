//! Aggregation a block of coordinates at a time: a round reads each update's delta
//! through a [`DeltaSource`] (a sparse top-k update stays sparse, a dense one is decoded
//! a block at a time), so its memory is the model's size plus one block per update,
//! not one model-sized copy per update.

use super::AggregateError;

/// Coordinates read from every update at once.
pub const BLOCK: usize = 1 << 12;

/// One update's flat delta, read a block at a time.
pub trait DeltaSource {
    /// Its number of values.
    fn len(&self) -> usize;
    /// Whether it has no values.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes values `start..start + out.len()` into `out`.
    fn read(&self, start: usize, out: &mut [f32]);
    /// The squared L2 norm of all its values, summed in f64.
    fn squared_norm(&self) -> f64;
}

impl DeltaSource for &[f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }

    fn read(&self, start: usize, out: &mut [f32]) {
        out.copy_from_slice(&self[start..start + out.len()]);
    }

    fn squared_norm(&self) -> f64 {
        self.iter().map(|&v| f64::from(v) * f64::from(v)).sum()
    }
}

/// Checks that `sources` is non-empty and of equal lengths; returns the length.
pub(crate) fn common_len<S: DeltaSource>(sources: &[S]) -> Result<usize, AggregateError> {
    let first = sources.first().ok_or(AggregateError::Empty)?;
    let expected = first.len();
    for (index, d) in sources.iter().enumerate() {
        if d.len() != expected {
            return Err(AggregateError::LengthMismatch {
                index,
                len: d.len(),
                expected,
            });
        }
    }
    Ok(expected)
}

/// The factor that scales a delta of squared norm `squared` down to L2 norm `max_norm`
/// (1 when it is within it).
pub(crate) fn clip_factor(squared: f64, max_norm: f32) -> f32 {
    let norm = squared.sqrt();
    if norm <= f64::from(max_norm) || norm == 0.0 {
        1.0
    } else {
        (f64::from(max_norm) / norm) as f32
    }
}

/// The clip factor of every source for norm `max_norm`.
pub(crate) fn clip_factors<S: DeltaSource>(sources: &[S], max_norm: f32) -> Vec<f32> {
    sources
        .iter()
        .map(|s| clip_factor(s.squared_norm(), max_norm))
        .collect()
}

/// `f` of every coordinate's values across `sources` (each scaled by its factor in
/// `scales`, in the order of `sources`), `len` coordinates in all, read [`BLOCK`]
/// coordinates at a time.
pub(crate) fn per_coordinate<S: DeltaSource>(
    sources: &[S],
    scales: &[f32],
    len: usize,
    mut f: impl FnMut(&mut [f32]) -> f32,
) -> Vec<f32> {
    let m = sources.len();
    let mut out = vec![0.0f32; len];
    let mut block = vec![0.0f32; m * BLOCK.min(len)];
    let mut column = vec![0.0f32; m];
    for start in (0..len).step_by(BLOCK) {
        let b = BLOCK.min(len - start);
        for (u, s) in sources.iter().enumerate() {
            s.read(start, &mut block[u * b..(u + 1) * b]);
        }
        for (i, o) in out[start..start + b].iter_mut().enumerate() {
            for (u, c) in column.iter_mut().enumerate() {
                *c = block[u * b + i] * scales[u];
            }
            *o = f(&mut column);
        }
    }
    out
}
