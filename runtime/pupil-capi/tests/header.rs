//! `include/pupil.h` is what cbindgen generates from the crate today
//! (`PUPIL_BLESS=1 cargo test -p pupil-capi --test header` rewrites it).

use std::path::Path;

#[test]
fn the_committed_header_is_what_cbindgen_generates() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(Path::new(dir).join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .unwrap()
        .write(&mut generated);
    let path = Path::new(dir).join("include/pupil.h");
    if std::env::var_os("PUPIL_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/pupil.h is out of date: PUPIL_BLESS=1 cargo test -p pupil-capi --test header"
    );
}
