//! The verbs, one file each, over a state root (youki's `container_<verb>.rs` layout).

mod create;
mod delete;
mod exec;
mod kill;
mod namespaces;
mod pause;
mod query;
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
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Runtime { root: root.into() }
    }

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
