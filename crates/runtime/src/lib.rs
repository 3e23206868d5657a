//! Berth's OCI runtime.
//!
//! This crate makes containers: it is what `berth-runc` (the runc-compatible binary in this
//! crate) and, later, the shim call. See `DESIGN.md` (Security) for the hardening it promises.
//!
//! Layers, youki-style: [`cgroups`] (v1 and v2 behind one trait), `seccomp` (the spec's filter
//! compiled to classic BPF), `init` (what runs in the new process between clone and execve),
//! and [`Runtime`] (one file per verb in `container/`, driving the others and the state dir).
//!
//! The caller must be single-threaded when it calls `create`, `run` or `exec`: the new process
//! is a fork-like clone that keeps running this crate's code until execve.

pub mod cgroups;
mod console;
mod container;
mod error;
mod hooks;
mod init;
mod protect;
mod seccomp;
mod state;
mod sys;

pub use container::kill_signal as parse_signal;
pub use container::load_spec;
pub use container::{CreateOptions, ExecOptions, Runtime};
pub use error::{Result, RuntimeError};
pub use init::process::known_capabilities;
pub use protect::{protect_self_exe, self_exe_is_readonly};
pub use seccomp::{
    Program as SeccompProgram, SeccompError, compile as compile_seccomp,
    supported_actions as seccomp_actions,
};
pub use state::{
    ContainerState, OCI_VERSION, OciState, Status, now_rfc3339, validate_id, write_atomic,
};
pub use sys::recv_fd;
