//! Berth's image library: how images travel in and out of the daemon.
//!
//! Archive import and export, the work behind `ctr images import` and `ctr images export`:
//! reading OCI image-layout and `docker save` tarballs (plain or gzipped) into content storage,
//! and writing OCI image-layout tarballs back out. Layers both ways: [`apply_layer`] unpacks one
//! onto a directory (`Diff.Apply`), [`tree_changes`]/[`overlay_changes`] and [`Changes::write`]
//! make one from two trees (`Diff.Diff`). The [`registry`] client (resolve, fetch and push over
//! the OCI distribution API, auth, `hosts.toml`, resumed and verified blob downloads) and
//! [`media`] (media types, platform matching, chain ids) serve the daemon's pulls and pushes.
//!
//! In the layers of `DESIGN.md` this is core: it knows nothing of gRPC, and it does not know the
//! content store either. It reaches storage only through two small traits, [`BlobSink`] (write
//! blobs) and [`BlobSource`] (read them), which the daemon implements over its content store and
//! metadata. Creating the image records, and the garbage-collection labels that keep an image's
//! blobs alive, remain the daemon's job: [`import`] only says which images an archive holds.
//!
//! Archives are untrusted input. Blob bytes are streamed, never buffered, and verified against
//! their digests; only small JSON documents are held in memory, under fixed caps; entry paths
//! that are absolute or climb with `..` are refused; nothing here ever writes a file.

#![warn(missing_docs)]

mod apply;
mod archive;
mod diff;
mod error;
pub mod media;
mod reference;
pub mod registry;

use std::collections::BTreeMap;

use berth_content::Digest;

pub use apply::{Applied, Whiteouts, apply_layer, apply_layer_with};
pub use archive::{
    BlobSink, BlobSource, ExportImage, ExportOptions, ImportOptions, ImportedImage, export, import,
};
pub use diff::{
    Changes, Compression, DiffOptions, Diffed, MEDIA_TYPE_LAYER, MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD, overlay_changes, tree_changes,
};
pub use error::ImageError;
pub use reference::ImageRef;

/// A content descriptor, as in an OCI index or manifest: what a blob is, which blob, how big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The blob's media type, e.g. `application/vnd.oci.image.manifest.v1+json`.
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: i64,
    /// The descriptor's annotations (for an image target, those found in the archive's index).
    pub annotations: BTreeMap<String, String>,
}
