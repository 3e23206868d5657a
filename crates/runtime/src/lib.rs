//! Berth's OCI runtime.
//!
//! This crate makes containers: it is what `berth-runc` (the runc-compatible binary in this
//! crate) and Berth's shim call. See `DESIGN.md` (Security) for the hardening it promises. It
//! also holds what a container gets by default ([`defaults`]: capabilities, masked and
//! read-only paths, base mounts), for berthctl's specs and the CRI's, and the one RFC 3339
//! formatter ([`time`]).
//!
//! Layers, youki-style: [`cgroups`] (v1 and v2 behind one trait; hybrid hosts driven through
//! v1 as runc does), `seccomp` (the spec's filter compiled to classic BPF by this crate, cached),
//! `init` (what runs in the new process between clone and execve: namespaces, mounts resolved
//! inside the rootfs with `openat2(RESOLVE_IN_ROOT)`, /dev, pivot_root, masked and read-only
//! paths, console, rlimits, capabilities, user, seccomp), `protect` (the runtime binary
//! re-executed from a detached read-only mount, CVE-2019-5736), and [`Runtime`] (one file per
//! verb in `container/`, over the state directory `<root>/<id>/{state.json,exec.fifo}`).
//!
//! The new process is a fork-like `clone` of the caller that keeps running this crate's code
//! until execve, so `create`, `run` and `exec` must be called from a single-threaded process
//! whose binary cannot be opened for writing (CVE-2019-5736): the `berth-runc` binary seals
//! itself with [`protect_self_exe`]; Berth's shim is single-threaded and runs from a read-only
//! bind of its binary, and hands the new process its stdio through `CreateOptions::stdio`. A
//! caller that cannot promise both should run `berth-runc`, as containerd's shim runs runc.
//!
//! Not supported: the systemd cgroup driver, rootless mode, checkpoint/restore, exec with a
//! seccomp notify filter, seccomp arches other than x86_64/x86/x32.

#![warn(missing_docs)]

pub mod cgroups;
mod console;
mod container;
pub mod defaults;
mod error;
mod hooks;
mod init;
pub mod pidfd;
mod protect;
mod seccomp;
mod state;
mod sys;
pub mod time;

pub use container::kill_signal as parse_signal;
pub use container::{CreateOptions, ExecOptions, OomWatch, Runtime};
pub use container::{load_spec, parse_spec};
pub use error::{Result, RuntimeError};
pub use init::process::known_capabilities;
pub use protect::{protect_self_exe, readonly_clone, self_exe_is_readonly};
pub use seccomp::{
    Program as SeccompProgram, SeccompError, compile as compile_seccomp,
    supported_actions as seccomp_actions,
};
pub use state::{ContainerState, OCI_VERSION, OciState, Status, validate_id, write_atomic};
pub use sys::recv_fd;
