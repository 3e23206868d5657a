//! The blocking pool: store and file work (I/O, directory walks, fsync) off the async threads.

use tonic::Status;

/// Runs blocking store work (file I/O, directory walks, fsync) on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("blocking task: {e}")))?
}
