//! A signed update as the server receives it: the envelope, the body and every delta,
//! decoded and summed into a buffer of its declared size (bounded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pupil_wire::{Envelope, Update};

fuzz_target!(|bytes: &[u8]| {
    let Ok(envelope) = Envelope::parse(bytes) else {
        return;
    };
    let Ok(update) = Update::parse(envelope.body) else {
        return;
    };
    let _ = update.squared_norm();
    for delta in update.deltas.iter().flatten() {
        let n = delta.elements();
        if n <= 1 << 20 {
            let mut out = vec![0.0f32; n as usize];
            let _ = delta.add_to(&mut out, 0.5);
        }
        let _ = delta.squared_norm();
    }
});
