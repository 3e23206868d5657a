//! The store's error type.

/// What went wrong in the store. Variants map one-to-one onto containerd's error classes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// The object exists already.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Try again later (e.g. an ingest ref held by another writer).
    #[error("{0}")]
    Unavailable(String),
    /// An offset outside what is allowed.
    #[error("{0}")]
    OutOfRange(String),
    /// The blob store failed (I/O).
    #[error("content store: {0}")]
    Content(String),
    /// The database was written by an incompatible version.
    #[error(
        "metadata schema version {found} is not supported (this berthd reads version {expected})"
    )]
    SchemaMismatch {
        /// Version found on disk.
        found: String,
        /// Version this build reads.
        expected: u32,
    },
    /// A record could not be decoded.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// The key of the record.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
    /// sled failed.
    #[error("metadata database: {0}")]
    Db(#[from] sled::Error),
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
        }
    }
}
