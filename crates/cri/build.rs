//! Builds the pause program (`pause/main.rs`) with rustc itself and leaves it in `OUT_DIR` for
//! `include_bytes!`: it must be `panic=abort` and, on x86_64, linked static without a C
//! runtime, which a cargo profile cannot ask for one crate.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let src = dir.join("pause/main.rs");
    println!("cargo:rerun-if-changed={}", src.display());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets it");
    let mut cmd = Command::new(rustc);
    cmd.args([
        "--edition",
        "2024",
        "--crate-name",
        "berth_pause",
        "--crate-type",
        "bin",
    ])
    .args(["--target", &target])
    .args([
        "-C",
        "panic=abort",
        "-C",
        "opt-level=s",
        "-C",
        "debuginfo=0",
    ])
    .args(["-C", "strip=symbols"])
    .env(
        "BERTH_PAUSE_VERSION",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
    )
    .arg("-o")
    .arg(out.join("pause"))
    .arg(&src);
    if target.starts_with("x86_64-") && target.contains("-linux-") {
        for arg in [
            "-nostartfiles",
            "-nostdlib",
            "-static",
            "-Wl,--gc-sections",
            "-Wl,--build-id=none",
        ] {
            cmd.arg("-C").arg(format!("link-arg={arg}"));
        }
    }
    let status = cmd.status().expect("running rustc for the pause program");
    assert!(
        status.success(),
        "building the pause program failed: {status}"
    );
}
