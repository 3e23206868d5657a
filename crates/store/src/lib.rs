//! Berth's metadata store: one sled database holding namespaces, images, containers, leases and
//! the per-namespace content and snapshot records (over the blob store and the snapshotters it
//! owns), garbage collection, a start-up repair, plus the validation rules and the filter
//! language every service shares.
//!
//! In the layers of `DESIGN.md` this is core: it knows nothing of gRPC. Every multi-key change is
//! one sled transaction, and [`Store::flush`] is awaited before a mutating RPC answers.

#![warn(missing_docs)]

mod containers;
mod content;
mod error;
pub mod filters;
mod gc;
mod identifiers;
mod images;
mod labels;
mod leases;
mod namespaces;
mod records;
mod snapshots;
mod store;
mod time;

pub use berth_content::{BlobInfo, BlobReader, ContentError, ContentStore, Digest, IngestStatus};
pub use berth_snapshot::{Kind as SnapshotKind, Mount, Usage};
pub use containers::{AnyValue, Container};
pub use content::{ContentInfo, NsWriter, Sharing, content_error};
pub use error::StoreError;
pub use gc::{GcStats, LABEL_REF_CONTENT, LABEL_REF_SNAPSHOT, LABEL_ROOT};
pub use identifiers::validate as validate_identifier;
pub use images::{Descriptor, Image};
pub use labels::{MAX_LABEL_SIZE, validate as validate_labels};
pub use leases::{LABEL_EXPIRE, LABEL_FLAT, Lease, Resource};
pub use namespaces::Namespace;
pub use snapshots::{NewSnapshot, SnapshotInfo};
pub use store::{SCHEMA_VERSION, Store};
pub use time::{Timestamp, parse_rfc3339};

/// Checks a digest string (`sha256:<64 hex>`; other algorithms are refused).
pub fn validate_digest(s: &str) -> Result<Digest, StoreError> {
    Digest::parse(s).map_err(|e| StoreError::InvalidArgument(e.to_string()))
}
