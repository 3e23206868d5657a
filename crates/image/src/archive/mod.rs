//! Image archives: OCI image-layout and `docker save` tarballs in ([`import`]), OCI image-layout
//! tarballs out ([`export`]), as `ctr images import` and `ctr images export` do.
//!
//! Layout of the code: `scan` reads the tar stream into storage and remembers what it saw;
//! `oci` and `docker` turn that into the archive's list of top-level manifests; `check` makes
//! sure every blob those images need is there; `names` decides what the images are called;
//! `export` is the other direction; `io` holds the small readers and writers they share.

mod check;
mod docker;
mod export;
mod import;
mod io;
mod names;
mod oci;
mod scan;

use std::io::Read;

use berth_content::Digest;

use crate::{Descriptor, ImageError};

pub use export::export;
pub use import::import;

/// Where [`import`] stores blobs: the daemon's content store, under a lease.
pub trait BlobSink {
    /// True if the blob is already stored; import then skips writing it (and verifies nothing).
    fn has(&mut self, d: &Digest) -> bool;
    /// Stores the bytes read from `r`, to its end. With `expected`, the sink must verify the
    /// digest and refuse a mismatch (with [`ImageError::DigestMismatch`]). Returns the digest
    /// and size written.
    fn put(
        &mut self,
        expected: Option<&Digest>,
        r: &mut dyn Read,
    ) -> Result<(Digest, u64), ImageError>;
}

/// Where [`export`] reads blobs from: the daemon's content store.
pub trait BlobSource {
    /// The blob's size. An absent blob is [`ImageError::NotFound`] (or a content store
    /// `NotFound`, wrapped), which `skip_missing` tolerates; any other error fails the export.
    fn size(&self, d: &Digest) -> Result<u64, ImageError>;
    /// Opens the blob for reading.
    fn open(&self, d: &Digest) -> Result<Box<dyn Read + '_>, ImageError>;
}

/// How [`import`] names what it finds (`ctr images import` flags of the same names).
#[derive(Debug, Default, Clone)]
pub struct ImportOptions {
    /// Prefix for images the archive names by tag only (`latest` → `<base_name>:latest`); when
    /// set, full names that do not start with it are dropped, as ctr's `--base-name` does.
    pub base_name: Option<String>,
    /// Also create an image of this name whose target is the archive's whole index.
    pub index_name: Option<String>,
    /// Also name every top-level manifest `<base_name>@<digest>` (without a base name:
    /// `<repository of its name>@<digest>`, and nothing for unnamed manifests).
    pub digests: bool,
}

/// An image found in an archive: the caller creates (or updates) the image record.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedImage {
    /// Full image name, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// The image's target, as listed in the archive's index (annotations included).
    pub target: Descriptor,
}

/// An image to write into an archive.
#[derive(Debug, Clone)]
pub struct ExportImage {
    /// Full image name; becomes the `io.containerd.image.name` annotation, and its tag the
    /// `org.opencontainers.image.ref.name` annotation.
    pub name: String,
    /// The image's target: a manifest or an index.
    pub target: Descriptor,
}

/// How [`export`] treats missing content.
#[derive(Debug, Default, Clone)]
pub struct ExportOptions {
    /// Leave out what an index lists but the store lacks (other platforms, typically), instead
    /// of failing with [`ImageError::NotFound`].
    pub skip_missing: bool,
}
