//! A GGUF file through `pupil convert`'s importer: metadata, tensor infos, the tokenizer
//! and every tensor's conversion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pupil::import::{import_gguf, Target};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(imported) = import_gguf(bytes, "fuzz", Target::Keep) {
        let _ = imported.builder.to_bytes();
    }
});
