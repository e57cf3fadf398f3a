//! A `.pupil` model file as a device reads it: the header, manifest and tensor table, then
//! every tensor's values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pupil_format::ModelFile;

fuzz_target!(|bytes: &[u8]| {
    let Ok(file) = ModelFile::from_bytes(bytes.to_vec()) else {
        return;
    };
    let _ = file.info();
    let _ = file.content_hash();
    for t in file.tensors() {
        let _ = t.to_f32();
    }
});
