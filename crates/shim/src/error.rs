//! The task service's errors and their ttrpc codes — the codes containerd's runc shim returns for
//! the same cases, because the daemon and its clients branch on them.

use berth_ttrpc::{Code, Status};

use crate::mount::MountError;
use crate::runc::RuncError;
use crate::stdio::StdioError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error(transparent)]
    Runtime(#[from] RuncError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl ShimError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> ShimError {
        ShimError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<ShimError> for Status {
    fn from(e: ShimError) -> Status {
        let code = match &e {
            ShimError::NotFound(_) => Code::NotFound,
            ShimError::AlreadyExists(_) => Code::AlreadyExists,
            ShimError::FailedPrecondition(_) => Code::FailedPrecondition,
            ShimError::InvalidArgument(_) | ShimError::Stdio(StdioError::Unsupported(_)) => {
                Code::InvalidArgument
            }
            ShimError::Unimplemented(_) => Code::Unimplemented,
            // The Go shim passes runtime failures up as plain errors, which travel as Unknown.
            ShimError::Runtime(_) | ShimError::Mount(_) | ShimError::Stdio(_) => Code::Unknown,
            ShimError::Io { .. } => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let s: Status = ShimError::NotFound("process x does not exist".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "process x does not exist");
        let s: Status = ShimError::Stdio(StdioError::Unsupported("binary://x".into())).into();
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}
