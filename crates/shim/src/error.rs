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
            ShimError::Runtime(r) => runtime_code(&r.message()),
            // The Go shim passes such failures up as plain errors, which travel as Unknown.
            ShimError::Mount(_) | ShimError::Stdio(_) => Code::Unknown,
            ShimError::Io { .. } => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// The code of a runtime command's failure, from what the runtime said (runc's and
/// berth-runc's wording): what a client can act on gets its code, the rest stays Unknown (the
/// Go shim sends every runtime failure as Unknown).
fn runtime_code(message: &str) -> Code {
    let m = message.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| m.contains(w));
    if any(&["already exists"]) {
        Code::AlreadyExists
    } else if any(&[
        "executable file not found",
        "no such file or directory",
        "does not exist",
    ]) {
        Code::NotFound
    } else if any(&[
        "not running",
        "is paused",
        "is stopped",
        "not mounted",
        "cannot allocate memory",
    ]) {
        Code::FailedPrecondition
    } else if any(&["invalid", "unknown signal", "not supported"]) {
        Code::InvalidArgument
    } else {
        Code::Unknown
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
        let failed = |m: &str| -> Status {
            ShimError::Runtime(RuncError::Failed {
                binary: "/opt/berth/bin/berth-runc".into(),
                command: "create".into(),
                status: 1,
                message: m.into(),
            })
            .into()
        };
        let s = failed("container with given ID already exists");
        assert_eq!(s.code(), Code::AlreadyExists);
        assert_eq!(
            s.message(),
            "berth-runc create failed: container with given ID already exists",
            "the runtime by name, not by install path"
        );
        let s = failed("exec: \"nope\": executable file not found in $PATH");
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(
            failed("cgroup controller hugetlb is not mounted").code(),
            Code::FailedPrecondition
        );
        assert_eq!(failed("something else").code(), Code::Unknown);
    }
}
