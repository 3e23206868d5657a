//! The content store's error type.

use std::io;
use std::path::{Path, PathBuf};

use crate::Digest;

/// What went wrong in the content store. Each variant is one of containerd's error classes, so
/// the daemon can map it to the gRPC code a containerd client expects.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The blob or ingest does not exist (`content sha256:…`, `ingest ref …`).
    #[error("{0}: not found")]
    NotFound(String),
    /// The blob is committed already.
    #[error("content {0}: already exists")]
    AlreadyExists(Digest),
    /// Another writer holds the ingest ref; the client should retry (gRPC `Unavailable`).
    #[error("ref {0} locked")]
    Locked(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A write at an offset other than the ingest's current one (or 0, which restarts it).
    #[error("write offset {offset} is not the current offset {expected}")]
    OutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The ingest's current offset.
        expected: u64,
    },
    /// A commit whose size or digest is not what the client expected. The ingest is kept.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A file system operation failed.
    #[error("i/o error on {}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// A `map_err` adapter naming the path an I/O error is about.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}
