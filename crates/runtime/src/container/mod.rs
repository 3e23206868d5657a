//! The verbs, one file each, over a state root (youki's `container_<verb>.rs` layout).

mod create;
mod delete;
mod exec;
mod kill;
mod namespaces;
mod pause;
mod query;
pub use query::OomWatch;
mod start;
mod update;

use std::path::{Path, PathBuf};

pub use create::{CreateOptions, load_spec, parse_spec};
pub use exec::ExecOptions;
pub use kill::parse_signal as kill_signal;

use crate::error::{Result, RuntimeError};
use crate::state::{ContainerState, Status};

/// The runtime over one state root (`--root`, default `/run/berth-runc`).
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

impl Runtime {
    /// The runtime keeping its containers' state under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Runtime { root: root.into() }
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn load(&self, id: &str) -> Result<ContainerState> {
        ContainerState::load(&self.root, id)
    }

    fn dir(&self, id: &str) -> PathBuf {
        ContainerState::dir(&self.root, id)
    }
}

/// Waits (up to `ms`) for a process to be gone or a zombie.
pub(crate) fn wait_gone(st: &ContainerState, ms: u64) -> bool {
    for _ in 0..ms {
        if !st.init_alive() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    !st.init_alive()
}

pub(crate) fn bad_state(op: &'static str, id: &str, status: Status) -> RuntimeError {
    RuntimeError::BadState {
        op,
        id: id.to_string(),
        status: status.to_string(),
    }
}

/// Clones the container's child (fork-like, with namespace `flags`) straight into its cgroup
/// when `join` allows: born in the cgroup2 directory, left to move itself into the v1 ones
/// (see [`SelfJoin`](crate::cgroups::SelfJoin)). Returns the pid (0 in the child) and the
/// self-join the child must do; `None` means the parent moves the child the old way (no
/// self-join possible, or a kernel without `clone3`/`CLONE_INTO_CGROUP`).
///
/// # Safety
/// As [`clone_fork`](crate::sys::clone_fork): the caller is single-threaded.
pub(crate) unsafe fn clone_joining(
    flags: libc::c_int,
    join: Option<crate::cgroups::SelfJoin>,
) -> Result<(libc::pid_t, Option<crate::cgroups::SelfJoin>)> {
    use std::os::fd::AsRawFd;
    let clone = || {
        // SAFETY: the caller's guarantee.
        unsafe { crate::sys::clone_fork(flags) }.map_err(|e| RuntimeError::sys("clone", e))
    };
    let Some(dir) = join
        .as_ref()
        .and_then(|j| j.into.as_ref())
        .map(|d| d.as_raw_fd())
    else {
        return Ok((clone()?, join));
    };
    // SAFETY: the caller's guarantee; `dir` stays open (owned by `join`) through the call.
    match unsafe { crate::sys::clone_fork_into(flags, dir) } {
        Ok(pid) => Ok((pid, join)),
        // Whatever the kernel refused here, the plain move reports it better.
        Err(_) => Ok((clone()?, None)),
    }
}
