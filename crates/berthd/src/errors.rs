//! The one mapping from core errors to gRPC statuses, with containerd's codes.

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
