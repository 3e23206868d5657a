//! Links the shim as a position-dependent executable.
//!
//! A PIE's `.data.rel.ro` and `.got` are rewritten by the dynamic loader at every start, which
//! makes them private dirty memory in every shim (~180 KiB here, a third of an idle shim's
//! anonymous memory). Linked `-no-pie`, they stay clean pages of the file, shared by all shims.
//! The cost is a fixed load address for the executable image (libraries are still randomised) —
//! what Debian's Go shim, containerd and runc binaries do too (they are `ET_EXEC`).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
