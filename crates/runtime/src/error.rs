//! The runtime's error type.

use std::io;
use std::path::PathBuf;

use crate::cgroups::CgroupError;
use crate::seccomp::SeccompError;

/// Everything a runtime operation can fail with.
///
/// Three messages are matched as strings by containerd's shims and keep runc's wording:
/// [`RuntimeError::NotExist`], [`RuntimeError::Exists`] and [`RuntimeError::NotRunning`].
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No such container.
    #[error("container does not exist")]
    NotExist,
    /// The id is taken.
    #[error("container with given ID already exists")]
    Exists,
    /// The container has no running process.
    #[error("container not running")]
    NotRunning,
    /// An id the runtime refuses: the id and why.
    #[error("invalid container id {0:?}: {1}")]
    InvalidId(String, &'static str),
    /// An operation the container's status does not allow.
    #[error("cannot {op} container {id} that is {status}")]
    BadState {
        /// The operation.
        op: &'static str,
        /// The container.
        id: String,
        /// Its status.
        status: String,
    },
    /// The spec is not valid.
    #[error("invalid config: {0}")]
    Spec(String),
    /// A file operation failed.
    #[error("{context} {path}")]
    Path {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("{context}")]
    Sys {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// An operation refused as runc refuses it (runc's words).
    #[error("{0}")]
    Refused(String),
    /// The container's init failed before the process ran (its message).
    #[error("container init: {0}")]
    Init(String),
    /// A hook failed.
    #[error("hook {path}: {reason}")]
    Hook {
        /// The hook's program.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The seccomp filter could not be built or loaded.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Short alias used across the crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl RuntimeError {
    pub(crate) fn path(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        RuntimeError::Path {
            context,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        RuntimeError::Sys {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Adds a path to an `io::Result`.
pub(crate) trait PathContext<T> {
    fn at(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> PathContext<T> for io::Result<T> {
    fn at(self, context: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| RuntimeError::path(context, path, e))
    }
}

/// Adds a context string to a `nix::Result`.
pub(crate) trait SysContext<T> {
    fn sys(self, context: impl Into<String>) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn sys(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| RuntimeError::sys(context, e))
    }
}

/// An error and its sources, joined with ": " (for messages that cross a process boundary).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
