//! A buffer pool: tensors freed during a step hand their GPU buffers back, and the next step
//! takes them again instead of allocating. Sizes are rounded to classes so near sizes share.

use std::collections::HashMap;
use std::sync::Mutex;

/// Buffers waiting for reuse, keyed by their (rounded) size in bytes.
#[derive(Default)]
pub(crate) struct BufferPool {
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
}

/// Round `bytes` up to its size class: multiples of 256 bytes up to 4 KiB, then steps of 1/8 of
/// the power of two below (at most 12.5 % waste).
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 4096 {
        return bytes.div_ceil(256) * 256;
    }
    let step = (1u64 << (63 - bytes.leading_zeros())) / 8;
    bytes.div_ceil(step) * step
}

impl BufferPool {
    /// Take a free buffer of exactly this class, if any.
    pub(crate) fn take(&self, class: u64) -> Option<wgpu::Buffer> {
        self.free.lock().ok()?.get_mut(&class)?.pop()
    }

    /// Give a buffer back for reuse.
    pub(crate) fn give(&self, class: u64, buffer: wgpu::Buffer) {
        if let Ok(mut free) = self.free.lock() {
            free.entry(class).or_default().push(buffer);
        }
    }

    /// Bytes currently parked in the pool.
    pub(crate) fn parked_bytes(&self) -> u64 {
        self.free
            .lock()
            .map(|f| f.iter().map(|(c, v)| c * v.len() as u64).sum())
            .unwrap_or(0)
    }

    /// Drop every parked buffer (frees GPU memory).
    pub(crate) fn clear(&self) {
        if let Ok(mut free) = self.free.lock() {
            free.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn classes_cover_the_request_with_bounded_waste() {
        for bytes in [
            1u64,
            4,
            255,
            256,
            257,
            4096,
            4097,
            10_000,
            1 << 20,
            (1 << 20) + 1,
            3 << 28,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(
                c as f64 <= (bytes.max(256) as f64) * 1.125 + 256.0,
                "{bytes} -> {c}"
            );
        }
    }
}
