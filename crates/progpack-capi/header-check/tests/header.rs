//! `crates/progpack-capi/include/progpack.h` is generated from progpack-capi by cbindgen: this
//! test regenerates it and fails if the committed header differs. `PROGPACK_BLESS=1` writes
//! the new header instead.

use std::path::Path;

#[test]
fn committed_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("header-check lives inside crates/progpack-capi");
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let path = crate_dir.join("include/progpack.h");
    if std::env::var_os("PROGPACK_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/progpack.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/progpack.h is out of date: run \
         (cd crates/progpack-capi/header-check && PROGPACK_BLESS=1 cargo test --release)"
    );
}
