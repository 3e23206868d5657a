//! The image library's error type.

use berth_content::{ContentError, Digest};

/// What went wrong while importing or exporting images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The archive is malformed, incomplete or hostile; the message names the entry or blob.
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    /// A blob's bytes do not hash to the digest they were stored or referenced under.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the blob was named or referenced by.
        expected: Digest,
        /// The digest of the bytes actually read.
        actual: Digest,
    },
    /// Applying a layer without its lower layers was not possible (see `Whiteouts::Overlay`).
    #[error("layer needs its lower layers: {0}")]
    NeedsLowerLayers(String),
    /// A blob that must be read is absent from storage.
    #[error("{0}: not found")]
    NotFound(String),
    /// A document that is held in memory is bigger than its cap.
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge {
        /// What was too large (a file name, a digest).
        what: String,
        /// The cap, in bytes.
        limit: u64,
    },
    /// A file cannot be written in a layer (its name would read as a whiteout).
    #[error("cannot be written in a layer: {0}")]
    Unrepresentable(String),
    /// Reading the input or writing the output failed.
    #[error("i/o")]
    Io(#[from] std::io::Error),
    /// The content store failed.
    #[error("content store")]
    Content(#[from] ContentError),
    /// A JSON document could not be parsed.
    #[error("parsing {what}")]
    Json {
        /// Which document (a file name or a digest).
        what: String,
        /// The parser's complaint.
        source: serde_json::Error,
    },
}

impl ImageError {
    /// Whether this error says that a blob is absent (as opposed to unreadable or corrupt).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(
            self,
            ImageError::NotFound(_) | ImageError::Content(ContentError::NotFound(_))
        )
    }
}
