//! Berth's content store: the bytes of blobs (layers, manifests, image configs, indexes),
//! addressed by sha256 digest, and the resumable ingests that produce them.
//!
//! This crate owns bytes on disk and nothing else. It knows no namespaces, labels or leases:
//! the daemon's metadata layer (`berth-store`) keeps per-namespace records that make a blob
//! visible, ties ingests to leases, and decides when garbage collection deletes a blob or a
//! stale ingest. Everything here is synchronous file I/O; the daemon calls it from
//! `spawn_blocking`.
//!
//! Layout under the root:
//! - `blobs/sha256/<hex>`: committed blobs, read-only (mode 0444).
//! - `ingest/<sha256 hex of the ref>/`: a write in progress: `ref`, `data`, `startedat`, and
//!   `total` / `expected` once known. The offset is the length of `data` and the update time
//!   its mtime, so writes cost no metadata I/O.
//!
//! Whenever the process dies, a blob is either absent or complete and matching its name: a
//! commit fsyncs the data, renames it into `blobs/sha256` (atomic, never replacing) and fsyncs
//! that directory. An interrupted ingest is resumed from what reached its data file, its digest
//! rebuilt by reading it back.
//!
//! Ingest locks are in-process: one [`ContentStore`] (and its clones) per root.

#![warn(missing_docs)]

mod digest;
mod error;
mod ingest;
mod locks;
mod reader;
mod store;
mod sys;
mod writer;

pub use digest::Digest;
pub use error::ContentError;
pub use ingest::IngestStatus;
pub use reader::BlobReader;
pub use store::{BlobInfo, ContentStore};
pub use writer::Writer;
