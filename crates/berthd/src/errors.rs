//! The one mapping from core errors to gRPC statuses, with containerd's codes: the metadata
//! store's, the image library's, the registry client's, the pull engine's, the task manager's
//! and a shim's. Services map through these and nowhere else; the table in the tests pins
//! every code.

use std::io::ErrorKind;

use berth_image::ImageError;
use berth_image::registry::RegistryError;
use berth_store::StoreError;
use tonic::Status;

/// Converts a store error into the status containerd returns for the same case.
pub(crate) fn to_status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(_) => Status::not_found(e.to_string()),
        StoreError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        StoreError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
        StoreError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
        StoreError::Unavailable(_) => Status::unavailable(e.to_string()),
        StoreError::OutOfRange(_) => Status::out_of_range(e.to_string()),
        StoreError::SchemaMismatch { .. } | StoreError::Corrupt { .. } => {
            tracing::error!(error = %e, "metadata store");
            Status::data_loss(e.to_string())
        }
        StoreError::Db(_) | StoreError::Content(_) => {
            tracing::error!(error = %e, "metadata store");
            Status::internal(e.to_string())
        }
    }
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An image-library error about `what` (a layer, a manifest, "computing the diff"): data that
/// does not verify or parse is DataLoss, whoever sent it; a tree a layer cannot express, or a
/// layer that needs its lower layers, FailedPrecondition; a missing blob NotFound; the content
/// store's errors as the store maps them; any other I/O error Internal.
pub(crate) fn image_status(what: &str, e: ImageError) -> Status {
    let msg = format!("{what}: {}", chain(&e));
    match e {
        ImageError::NotFound(_) => Status::not_found(msg),
        ImageError::Unrepresentable(_) | ImageError::NeedsLowerLayers(_) => {
            Status::failed_precondition(msg)
        }
        ImageError::InvalidArchive(_)
        | ImageError::DigestMismatch { .. }
        | ImageError::TooLarge { .. }
        | ImageError::Json { .. } => Status::data_loss(msg),
        ImageError::Io(io)
            if matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) =>
        {
            Status::data_loss(msg)
        }
        ImageError::Io(_) => Status::internal(msg),
        ImageError::Content(c) => {
            let code = to_status(berth_store::content_error(c)).code();
            Status::new(code, msg)
        }
    }
}

/// A registry client's error as the status a client of containerd's Transfer sees.
pub(crate) fn registry_status(e: RegistryError) -> Status {
    use RegistryError as E;
    match &e {
        E::InvalidReference(_) => Status::invalid_argument(e.to_string()),
        E::Config(_) => Status::failed_precondition(e.to_string()),
        E::NotFound(_) => Status::not_found(e.to_string()),
        E::Unauthorized(_) => Status::permission_denied(e.to_string()),
        E::Status { .. } | E::Transport { .. } => Status::unavailable(e.to_string()),
        E::DigestMismatch { .. } | E::SizeMismatch { .. } | E::Invalid(_) => {
            Status::data_loss(e.to_string())
        }
    }
}

/// What the task manager (`runtime/`) fails with.
#[derive(Debug)]
pub(crate) enum TaskError {
    /// A request field (or the container record it names) is wrong: what and why.
    BadRequest(String),
    /// No such task.
    NoTask(String),
    /// The task (or its bundle) exists already.
    TaskExists(String),
    /// The runtime's shim is not there.
    NoRuntime(String),
    /// What the API has but Berth does not do.
    Unsupported(&'static str),
    /// The container cannot run as it is.
    NotRunnable(String),
    /// The shim could not be started.
    ShimStart(String),
    /// The shim's start did not finish in time.
    ShimTimedOut(String),
    /// The shim's socket does not answer.
    ShimUnreachable(String),
    /// The shim answered a call with an error.
    Shim(berth_ttrpc::Status),
    /// The bundle's files could not be written.
    Bundle(String),
    /// The metadata store failed.
    Store(StoreError),
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::BadRequest(m)
            | TaskError::NoTask(m)
            | TaskError::TaskExists(m)
            | TaskError::NoRuntime(m)
            | TaskError::NotRunnable(m)
            | TaskError::ShimStart(m)
            | TaskError::ShimTimedOut(m)
            | TaskError::ShimUnreachable(m)
            | TaskError::Bundle(m) => f.write_str(m),
            TaskError::Unsupported(m) => f.write_str(m),
            TaskError::Shim(s) => f.write_str(s.message()),
            TaskError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// What a pull or a push failed with.
#[derive(Debug)]
pub(crate) enum PullError {
    /// The metadata or content store's.
    Store(StoreError),
    /// The registry client's.
    Registry(RegistryError),
    /// The image library's, about what it names (a layer, the manifest, the index).
    Image(String, ImageError),
    /// Content that does not verify: a size, a digest or a layer count that does not match.
    BadContent(String),
    /// Nothing that matches (no manifest for the platform asked for).
    NoMatch(String),
    /// Something the job needs is missing (a blob of the image being pushed).
    Incomplete(String),
    /// A download cut short.
    Interrupted(String),
    /// A task of the job that died: a fault of ours.
    Internal(String),
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullError::Store(e) => write!(f, "{e}"),
            PullError::Registry(e) => write!(f, "{e}"),
            PullError::Image(what, e) => write!(f, "{what}: {}", chain(e)),
            PullError::BadContent(m)
            | PullError::NoMatch(m)
            | PullError::Incomplete(m)
            | PullError::Interrupted(m)
            | PullError::Internal(m) => f.write_str(m),
        }
    }
}

impl crate::pool::Died for PullError {
    fn died(what: String) -> Self {
        PullError::Internal(what)
    }
}

/// A pull's or push's error as the status containerd's Transfer service returns.
pub(crate) fn pull_status(e: PullError) -> Status {
    match e {
        PullError::Store(e) => to_status(e),
        PullError::Registry(e) => registry_status(e),
        PullError::Image(what, e) => image_status(&what, e),
        PullError::BadContent(m) => Status::data_loss(m),
        PullError::NoMatch(m) => Status::not_found(m),
        PullError::Incomplete(m) => Status::failed_precondition(m),
        PullError::Interrupted(m) => Status::aborted(m),
        PullError::Internal(m) => Status::internal(m),
    }
}

/// A task manager's error as the status containerd returns for the same case.
pub(crate) fn task_status(e: TaskError) -> Status {
    let msg = e.to_string();
    match e {
        TaskError::BadRequest(_) => Status::invalid_argument(msg),
        TaskError::NoTask(_) | TaskError::NoRuntime(_) => Status::not_found(msg),
        TaskError::TaskExists(_) => Status::already_exists(msg),
        TaskError::Unsupported(_) => Status::unimplemented(msg),
        TaskError::NotRunnable(_) => Status::failed_precondition(msg),
        TaskError::ShimStart(_) | TaskError::Bundle(_) => Status::internal(msg),
        TaskError::ShimTimedOut(_) => Status::deadline_exceeded(msg),
        TaskError::ShimUnreachable(_) => Status::unavailable(msg),
        TaskError::Shim(s) => shim_status(s),
        TaskError::Store(e) => to_status(e),
    }
}

/// What a shim call failed with, as a gRPC status with the same code.
pub(crate) fn shim_status(e: berth_ttrpc::Status) -> Status {
    let code = tonic::Code::from_i32(e.code() as i32);
    Status::new(code, e.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_core_error_has_one_code() {
        let d = berth_store::Digest::from_sha256_bytes(&[0; 32]);
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let image = [
            (ImageError::NotFound("blob".into()), Code::NotFound),
            (
                ImageError::Unrepresentable("a socket".into()),
                Code::FailedPrecondition,
            ),
            (
                ImageError::NeedsLowerLayers("a/b".into()),
                Code::FailedPrecondition,
            ),
            (ImageError::InvalidArchive("../x".into()), Code::DataLoss),
            (
                ImageError::DigestMismatch {
                    expected: d.clone(),
                    actual: d.clone(),
                },
                Code::DataLoss,
            ),
            (
                ImageError::TooLarge {
                    what: "manifest".into(),
                    limit: 1,
                },
                Code::DataLoss,
            ),
            (
                ImageError::Json {
                    what: "config".into(),
                    source: json,
                },
                Code::DataLoss,
            ),
            (
                ImageError::Io(std::io::Error::new(ErrorKind::InvalidData, "bad gzip")),
                Code::DataLoss,
            ),
            (
                ImageError::Io(std::io::Error::new(ErrorKind::UnexpectedEof, "short")),
                Code::DataLoss,
            ),
            (
                ImageError::Io(std::io::Error::from(ErrorKind::PermissionDenied)),
                Code::Internal,
            ),
            (
                ImageError::Content(berth_store::ContentError::NotFound("blob".into())),
                Code::NotFound,
            ),
        ];
        for (e, code) in image {
            let shown = e.to_string();
            let st = image_status("layer x", e);
            assert_eq!(st.code(), code, "{shown}");
            assert!(st.message().starts_with("layer x: "), "{}", st.message());
        }
        let registry = [
            (
                RegistryError::InvalidReference("x".into()),
                Code::InvalidArgument,
            ),
            (RegistryError::Config("x".into()), Code::FailedPrecondition),
            (RegistryError::NotFound("x".into()), Code::NotFound),
            (
                RegistryError::Unauthorized("x".into()),
                Code::PermissionDenied,
            ),
            (RegistryError::Invalid("x".into()), Code::DataLoss),
        ];
        for (e, code) in registry {
            assert_eq!(registry_status(e).code(), code);
        }
        let store = [
            (StoreError::NotFound("x".into()), Code::NotFound),
            (StoreError::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                StoreError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (
                StoreError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (StoreError::Unavailable("x".into()), Code::Unavailable),
            (StoreError::OutOfRange("x".into()), Code::OutOfRange),
        ];
        for (e, code) in store {
            assert_eq!(to_status(e).code(), code);
        }
        let task = [
            (TaskError::BadRequest("x".into()), Code::InvalidArgument),
            (TaskError::NoTask("x".into()), Code::NotFound),
            (TaskError::NoRuntime("x".into()), Code::NotFound),
            (TaskError::TaskExists("x".into()), Code::AlreadyExists),
            (TaskError::Unsupported("x"), Code::Unimplemented),
            (TaskError::NotRunnable("x".into()), Code::FailedPrecondition),
            (TaskError::ShimStart("x".into()), Code::Internal),
            (TaskError::Bundle("x".into()), Code::Internal),
            (TaskError::ShimTimedOut("x".into()), Code::DeadlineExceeded),
            (TaskError::ShimUnreachable("x".into()), Code::Unavailable),
            (
                TaskError::Shim(berth_ttrpc::Status::new(berth_ttrpc::Code::NotFound, "x")),
                Code::NotFound,
            ),
            (
                TaskError::Store(StoreError::NotFound("x".into())),
                Code::NotFound,
            ),
        ];
        for (e, code) in task {
            let st = task_status(e);
            assert_eq!(st.code(), code);
            assert!(st.message().contains('x'), "{}", st.message());
        }
        let pull = [
            (
                PullError::Store(StoreError::NotFound("x".into())),
                Code::NotFound,
            ),
            (
                PullError::Registry(RegistryError::Unauthorized("x".into())),
                Code::PermissionDenied,
            ),
            (
                PullError::Image("x".into(), ImageError::InvalidArchive("y".into())),
                Code::DataLoss,
            ),
            (PullError::BadContent("x".into()), Code::DataLoss),
            (PullError::NoMatch("x".into()), Code::NotFound),
            (PullError::Incomplete("x".into()), Code::FailedPrecondition),
            (PullError::Interrupted("x".into()), Code::Aborted),
            (PullError::Internal("x".into()), Code::Internal),
        ];
        for (e, code) in pull {
            let shown = e.to_string();
            let st = pull_status(e);
            assert_eq!((st.code(), st.message()), (code, shown.as_str()));
        }
    }
}
