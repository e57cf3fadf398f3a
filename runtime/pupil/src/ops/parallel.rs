//! Splitting independent items of CPU work over the cores.

/// Multiply-adds below which a CPU op runs on the calling thread (spawning costs more).
const MIN_WORK: usize = 1 << 16;

/// Calls `f(first item, its slices)` over groups of consecutive items on up to as many
/// threads as there are cores. `outputs` are `(values, values per item)`, all holding the
/// same number of items; `work` (multiply-adds in all) below a threshold stays on this
/// thread. Each item's values are written by one call only, so the result is the same as
/// one loop over the items.
pub(crate) fn for_each_item<const N: usize, F>(outputs: [(&mut [f32], usize); N], work: usize, f: F)
where
    F: Fn(usize, [&mut [f32]; N]) + Sync,
{
    let items = outputs
        .iter()
        .find(|(_, per)| *per > 0)
        .map_or(0, |(v, per)| v.len() / per);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.min(items).min(work / MIN_WORK).max(1);
    if threads == 1 {
        return f(0, outputs.map(|(v, _)| v));
    }
    let per_group = items.div_ceil(threads);
    let mut chunks = outputs.map(|(v, per)| {
        v.chunks_mut((per * per_group).max(1))
            .collect::<Vec<_>>()
            .into_iter()
    });
    std::thread::scope(|s| {
        for first in (0..items).step_by(per_group) {
            let parts: [&mut [f32]; N] =
                std::array::from_fn(|i| chunks[i].next().unwrap_or_default());
            let f = &f;
            s.spawn(move || f(first, parts));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_visited_once_with_its_slices() {
        for (items, work) in [(1, 1 << 30), (7, 1 << 30), (64, 1 << 30), (64, 10)] {
            let mut a = vec![0.0; items * 3];
            let mut b = vec![0.0; items * 2];
            for_each_item([(&mut a, 3), (&mut b, 2)], work, |first, [ca, cb]| {
                for (i, (x, y)) in ca.chunks_mut(3).zip(cb.chunks_mut(2)).enumerate() {
                    x.fill((first + i) as f32);
                    y.fill((first + i) as f32 + 0.5);
                }
            });
            for i in 0..items {
                assert_eq!(a[3 * i..3 * i + 3], [i as f32; 3]);
                assert_eq!(b[2 * i..2 * i + 2], [i as f32 + 0.5; 2]);
            }
        }
    }
}
