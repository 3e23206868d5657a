//! Fuzzes layer apply: any bytes, as a (possibly compressed) tar, applied into a fresh root inside
//! a sandbox directory. Whatever happens, nothing may appear beside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sandbox = tempfile::tempdir().unwrap();
    let root = sandbox.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let _ = berth_image::apply_layer(data, &root);
    let entries: Vec<_> = std::fs::read_dir(sandbox.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "something was written outside the root");
});
