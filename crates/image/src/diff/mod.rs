//! Producing a layer from two directory trees: the work behind `Diff.Diff` (containerd's
//! walking differ). The result is an OCI layer tar, optionally gzip or zstd compressed, that
//! [`apply_layer`](crate::apply_layer) turns the lower tree into the upper one with.
//!
//! Two phases. First the changes are found, without writing anything:
//! - [`tree_changes`] walks both trees side by side (each directory's entries sorted by name,
//!   parents before children) and compares entries by type, mode, owner, device number,
//!   extended attributes and, for non-directories, size, mtime and, where mtimes cannot tell,
//!   content. Something only in the lower tree is deleted (one whiteout for a whole directory).
//! - [`overlay_changes`] is the fast path for an overlay's upper directory: only that directory
//!   is walked. Overlay whiteouts (character devices 0:0) become OCI whiteouts, opaque
//!   directories (`trusted.overlay.opaque=y`) become `.wh..wh..opq`. Upper directories that use
//!   overlay features a layer cannot express this way (redirected directories, metacopy files)
//!   make it answer `None`, and the caller compares the mounted trees instead.
//!
//! Then [`Changes::write`] writes them as a tar, in order, as containerd's `archive.WriteDiff`
//! does: each entry's parent directories first (with the upper tree's metadata), whiteouts as
//! empty `.wh.<name>` files, hard links within the layer as tar hard links (an unchanged file
//! whose inode a changed file shares is written as a link too, so the link survives), mtimes
//! truncated to seconds (clamped to `source_date_epoch` when given), extended attributes as PAX
//! `SCHILY.xattr.*` records (overlayfs's own `trusted.overlay.*` excluded). Sockets are skipped.
//! Both digests are computed while writing: the written (compressed) stream's and the tar's
//! (the diff id).

mod walk;
mod write;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::{Path, PathBuf};

use berth_content::Digest;
use sha2::Digest as _;

use crate::ImageError;
use crate::media::{DOCKER_LAYER, DOCKER_LAYER_GZIP};

pub use walk::{overlay_changes, tree_changes};

/// The OCI media type of an uncompressed layer.
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The OCI media type of a gzip-compressed layer (containerd's default for `Diff.Diff`).
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The OCI media type of a zstd-compressed layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (deflate, level 6; the header carries no name and no time).
    #[default]
    Gzip,
    /// zstd, level 3.
    Zstd,
}

impl Compression {
    /// The compression a layer media type asks for; `None` for a type that is not a layer
    /// type this crate writes. An empty media type means containerd's default, gzip.
    pub fn for_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "" | MEDIA_TYPE_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(Compression::Gzip),
            MEDIA_TYPE_LAYER | DOCKER_LAYER => Some(Compression::None),
            MEDIA_TYPE_LAYER_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// How to write a diff.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Compression of the written stream.
    pub compression: Compression,
    /// If set, no mtime in the layer is later than this (seconds since the epoch), and
    /// whiteouts carry it; otherwise whiteouts carry 0, so the same trees give the same bytes.
    pub source_date_epoch: Option<i64>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diffed {
    /// Digest of the written (possibly compressed) stream: the blob's digest.
    pub digest: Digest,
    /// Size of the written stream.
    pub size: u64,
    /// Digest of the uncompressed tar: the layer's diff id.
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
}

/// What changed, in the order a layer must list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// In the upper tree only.
    Add,
    /// In both, different.
    Modify,
    /// In the lower tree only: a whiteout.
    Delete,
    /// In both and the same, but hard-linked: written only if a changed file shares its inode.
    Unmodified,
    /// The directory hides everything lower layers had in it: `.wh..wh..opq`.
    Opaque,
}

#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) kind: Kind,
    /// Relative to the roots, never empty, no `..`.
    pub(crate) path: PathBuf,
}

/// The changes between two trees, found by [`tree_changes`] or [`overlay_changes`]; files'
/// metadata and contents are read from the upper tree when they are written.
#[derive(Debug, Clone)]
pub struct Changes {
    /// Where added and modified entries are read from.
    source: PathBuf,
    list: Vec<Change>,
}

impl Changes {
    /// How many changes there are (entries written, not counting parent directories and extra
    /// hard links).
    pub fn len(&self) -> usize {
        self.list
            .iter()
            .filter(|c| c.kind != Kind::Unmodified)
            .count()
    }

    /// Whether the trees are the same.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the layer to `out` and returns its digests and sizes. The source tree must not
    /// change meanwhile: a file that shrinks while it is read is an error, not a corrupt tar.
    pub fn write(&self, opts: &DiffOptions, out: impl Write) -> Result<Diffed, ImageError> {
        // A plain tar's digest is its diff id: hashed once, not twice.
        let compressed = Hashing::new(out, opts.compression != Compression::None);
        let encoder = match opts.compression {
            Compression::None => Encoder::Plain(compressed),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                compressed,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(compressed, 3)?),
        };
        let tar_out = Hashing::new(std::io::BufWriter::with_capacity(256 << 10, encoder), true);
        let tar_out = write::write_changes(&self.source, &self.list, opts, tar_out)?;
        let (diff_id, uncompressed_size, buffered) = tar_out.finish();
        let diff_id = diff_id.ok_or_else(|| std::io::Error::other("diff id not computed"))?;
        let encoder = buffered.into_inner().map_err(|e| e.into_error())?;
        let (digest, size, mut out) = encoder.finish()?.finish();
        let digest = digest.unwrap_or_else(|| diff_id.clone());
        out.flush()?;
        Ok(Diffed {
            digest,
            size,
            diff_id,
            uncompressed_size,
        })
    }
}

/// A writer that counts, and hashes if asked to, what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Option<sha2::Sha256>,
    size: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W, hash: bool) -> Self {
        Hashing {
            inner,
            hasher: hash.then(sha2::Sha256::new),
            size: 0,
        }
    }

    fn finish(self) -> (Option<Digest>, u64, W) {
        let d = self
            .hasher
            .map(|h| Digest::from_sha256_bytes(&h.finalize()));
        (d, self.size, self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    Plain(Hashing<W>),
    Gzip(flate2::write::GzEncoder<Hashing<W>>),
    Zstd(zstd::stream::write::Encoder<'static, Hashing<W>>),
}

impl<W: Write> Encoder<W> {
    fn finish(self) -> std::io::Result<Hashing<W>> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// An entry's path under a root.
fn under(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}
