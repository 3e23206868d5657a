//! Berth's OCI runtime.
//!
//! This crate makes containers: it is what `berth-runc` (the runc-compatible binary in this
//! crate) and, later, the shim call. See `DESIGN.md` (Security) for the hardening it promises.
//!
//! Layers, youki-style: [`cgroups`] (v1 and v2 behind one trait), `seccomp` (the spec's filter
//! compiled to classic BPF), `init` (what runs in the new process between fork and execve), and
//! [`container`] (one file per verb, driving the others and the state directory).

pub mod cgroups;
mod error;
mod seccomp;

pub use error::{Result, RuntimeError};
