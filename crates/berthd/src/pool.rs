//! The blocking pool: store and file work (I/O, directory walks, fsync) off the async threads.

use tonic::Status;

/// An error a blocking task that died (panicked) reports as.
pub(crate) trait Died {
    /// The error for a task that died, `what` telling how.
    fn died(what: String) -> Self;
}

impl Died for Status {
    fn died(what: String) -> Self {
        Status::internal(what)
    }
}

/// Runs blocking store work (file I/O, directory walks, fsync) on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static, E: Died + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::died(format!("blocking task: {e}")))?
}
