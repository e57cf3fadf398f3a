//! A safetensors file through `pupil convert`'s importer (from a file, as users give it).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use pupil::import::{import_file, Target};

fuzz_target!(|bytes: &[u8]| {
    let Ok(mut file) = tempfile::Builder::new().suffix(".safetensors").tempfile() else {
        return;
    };
    if file.write_all(bytes).is_err() {
        return;
    }
    if let Ok(imported) = import_file(file.path(), "fuzz", Target::Keep) {
        let _ = imported.builder.to_bytes();
    }
});
