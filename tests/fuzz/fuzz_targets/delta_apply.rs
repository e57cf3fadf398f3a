//! A version delta as a device applies it to the model it runs: the input is the base's
//! length (u32, little-endian), the base, then the delta.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return;
    };
    let cut = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (base, delta) = rest.split_at(cut);
    let _ = pupil_sync::delta::apply(base, delta, 1 << 20);
});
