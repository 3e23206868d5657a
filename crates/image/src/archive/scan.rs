//! Reading an archive's tar stream, in whatever order its entries come: blobs go to the sink as
//! they stream past, the small JSON files that describe the archive stay in memory, and the
//! digest of every other regular file is remembered by path (Docker archives name layers by
//! path).
//!
//! Memory stays bounded by the caps below, with one exception outside this code: the tar crate
//! reads a GNU long-name or PAX extension header whole, whatever its declared size. The daemon
//! should bound the size of an import request.

use std::collections::HashMap;
use std::io::{self, Read};

use berth_content::Digest;

use super::BlobSink;
use super::io::{Captured, EntryReader, Input, Tracked, describe, is_gzip};
use crate::ImageError;
use crate::media::{printable, shorten};

/// Cap on each JSON document held in memory: the archive's own files, and manifests, indexes
/// and configs found under `blobs/`.
pub(super) const JSON_LIMIT: u64 = 16 << 20;
/// Cap on all JSON blobs held in memory together.
pub(super) const JSON_BUDGET: u64 = 64 << 20;
/// Cap on the files and links remembered by path.
const MAX_ENTRIES: usize = 1 << 20;
/// Cap on an entry's path.
const MAX_PATH: usize = 4096;

/// What reading the archive found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// `oci-layout`.
    pub(super) layout: Option<Vec<u8>>,
    /// `index.json`.
    pub(super) index: Option<Vec<u8>>,
    /// Docker's `manifest.json`.
    pub(super) docker_manifest: Option<Vec<u8>>,
    /// The blobs under `blobs/`, by digest.
    pub(super) blobs: HashMap<Digest, Blob>,
    /// Every other regular file stored (and those under `blobs/` too), by path.
    pub(super) files: HashMap<String, File>,
    /// Symbolic links outside `blobs/`, by path, to the (cleaned) path they point at.
    pub(super) symlinks: HashMap<String, String>,
    json_held: u64,
}

/// A blob found under `blobs/`.
#[derive(Debug)]
pub(super) struct Blob {
    pub(super) size: u64,
    /// Its bytes, if it is a JSON document small enough to keep.
    pub(super) json: Captured,
}

/// A regular file that was stored as a blob.
#[derive(Debug, Clone)]
pub(super) struct File {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) gzip: bool,
}

/// Reads the whole archive (plain or gzipped tar) from `r`, storing blobs into `sink`.
///
/// Fails on the first problem; what was stored before stays in the sink, unreferenced, for the
/// caller's garbage collector to remove.
pub(super) fn scan(r: impl Read, sink: &mut dyn BlobSink) -> Result<Scan, ImageError> {
    // Tar headers come in 512-byte reads: buffer them.
    let input = Input::detect(io::BufReader::with_capacity(64 << 10, r)).map_err(input_error)?;
    let mut archive = tar::Archive::new(Tracked::new(input));
    let mut scan = Scan::default();
    for entry in archive.entries().map_err(input_error)? {
        let entry = entry.map_err(input_error)?;
        scan.entry(entry, sink)?;
    }
    let mut rest = archive.into_inner();
    if rest.total == 0 {
        return Err(ImageError::InvalidArchive("empty input".into()));
    }
    // The tar reader takes a clean end of input for the end of the archive; a real archive
    // ends with zero blocks first, so reaching the end means the stream was cut at an entry
    // boundary.
    if rest.at_eof {
        return Err(ImageError::InvalidArchive(
            "truncated: no end-of-archive marker".into(),
        ));
    }
    // Read the padding after the marker, so that a gzip stream's trailer (length and CRC) is
    // checked and a cut-off gzip stream is an error too.
    io::copy(&mut rest, &mut io::sink()).map_err(input_error)?;
    Ok(scan)
}

impl Scan {
    fn entry<R: Read>(
        &mut self,
        entry: tar::Entry<'_, R>,
        sink: &mut dyn BlobSink,
    ) -> Result<(), ImageError> {
        let path = clean_path(&entry.path_bytes())?;
        let kind = entry.header().entry_type();
        if kind.is_dir() || kind.is_pax_global_extensions() {
            return Ok(());
        }
        let under_blobs = path == "blobs" || path.starts_with("blobs/");
        if !kind.is_file() {
            if under_blobs {
                return Err(ImageError::InvalidArchive(format!(
                    "{path}: only regular files may be under blobs/ (found {kind:?})"
                )));
            }
            if kind.is_symlink()
                && let Some(target) = entry.link_name_bytes()
                && let Ok(target) = std::str::from_utf8(&target)
                && let Some(target) = resolve_link(&path, target)
            {
                self.count()?;
                self.symlinks.insert(path, target);
            }
            // Anything else (hard links, devices, FIFOs) means nothing in an image archive.
            return Ok(());
        }
        let size = entry.size();
        match path.as_str() {
            "oci-layout" => self.layout = Some(read_small(entry, &path, size)?),
            "index.json" => self.index = Some(read_small(entry, &path, size)?),
            "manifest.json" => self.docker_manifest = Some(read_small(entry, &path, size)?),
            // Docker's legacy tag file: manifest.json carries the same tags.
            "repositories" => {}
            _ if under_blobs => self.blob(entry, path, size, sink)?,
            _ => self.other_file(entry, path, size, sink)?,
        }
        Ok(())
    }

    /// A file under `blobs/`: stored under the digest its path names, which the sink verifies.
    fn blob<R: Read>(
        &mut self,
        entry: tar::Entry<'_, R>,
        path: String,
        size: u64,
        sink: &mut dyn BlobSink,
    ) -> Result<(), ImageError> {
        self.count()?;
        let digest = blob_digest(&path)?;
        let room = JSON_LIMIT.min(JSON_BUDGET.saturating_sub(self.json_held));
        let mut reader = EntryReader::new(entry, size).capture_json(room);
        if sink.has(&digest) {
            // Already stored: nothing to write, but a small JSON document may still be needed
            // to walk the image, and then its bytes must match its name.
            // Otherwise only its first bytes are read, to tell a gzipped layer.
            let want = if size <= room { size } else { 2 };
            let copied = io::copy(&mut (&mut reader).take(want), &mut io::sink());
            if let Some(e) = reader.input_error.take() {
                return Err(ImageError::InvalidArchive(format!(
                    "{path}: {}",
                    printable(&e)
                )));
            }
            copied?;
            if let Captured::Json(bytes) = reader.captured() {
                let actual = Digest::of(bytes);
                if actual != digest {
                    return Err(ImageError::DigestMismatch {
                        expected: digest,
                        actual,
                    });
                }
            }
        } else {
            let stored = store(sink, Some(&digest), &mut reader, &path, size)?;
            if stored != digest {
                return Err(ImageError::DigestMismatch {
                    expected: digest,
                    actual: stored,
                });
            }
        }
        let gzip = is_gzip(reader.head());
        let json = reader.into_captured();
        if let Captured::Json(bytes) = &json {
            self.json_held += bytes.len() as u64;
        }
        self.files.insert(
            path,
            File {
                digest: digest.clone(),
                size,
                gzip,
            },
        );
        self.blobs.insert(digest, Blob { size, json });
        Ok(())
    }

    /// Any other regular file: stored under the digest of its bytes, in case `manifest.json`
    /// names it as a config or layer.
    fn other_file<R: Read>(
        &mut self,
        entry: tar::Entry<'_, R>,
        path: String,
        size: u64,
        sink: &mut dyn BlobSink,
    ) -> Result<(), ImageError> {
        self.count()?;
        let mut reader = EntryReader::new(entry, size);
        let digest = store(sink, None, &mut reader, &path, size)?;
        let gzip = is_gzip(reader.head());
        self.files.insert(path, File { digest, size, gzip });
        Ok(())
    }

    fn count(&self) -> Result<(), ImageError> {
        if self.files.len() + self.symlinks.len() >= MAX_ENTRIES {
            return Err(ImageError::TooLarge {
                what: "number of archive entries".into(),
                limit: MAX_ENTRIES as u64,
            });
        }
        Ok(())
    }
}

/// Streams one entry into the sink; returns the digest it was stored under.
fn store<R: Read>(
    sink: &mut dyn BlobSink,
    expected: Option<&Digest>,
    reader: &mut EntryReader<R>,
    path: &str,
    size: u64,
) -> Result<Digest, ImageError> {
    let result = sink.put(expected, reader);
    // A failure of the input shows up as a failure of the sink, which was reading it: report
    // it as what it is.
    if let Some(e) = reader.input_error.take() {
        return Err(ImageError::InvalidArchive(format!(
            "{path}: {}",
            printable(&e)
        )));
    }
    let (digest, written) = result?;
    if written != size || reader.bytes_read() != size {
        return Err(ImageError::InvalidArchive(format!(
            "{path}: {written} of {size} bytes stored"
        )));
    }
    Ok(digest)
}

/// Reads a small file whole, refusing one bigger than [`JSON_LIMIT`].
fn read_small<R: Read>(entry: R, path: &str, size: u64) -> Result<Vec<u8>, ImageError> {
    if size > JSON_LIMIT {
        return Err(ImageError::TooLarge {
            what: path.to_string(),
            limit: JSON_LIMIT,
        });
    }
    let mut reader = EntryReader::new(entry, size);
    let mut bytes = Vec::with_capacity(size as usize);
    let read = reader.read_to_end(&mut bytes);
    if let Some(e) = reader.input_error.take() {
        return Err(ImageError::InvalidArchive(format!(
            "{path}: {}",
            printable(&e)
        )));
    }
    read?;
    Ok(bytes)
}

/// The digest a path `blobs/<algorithm>/<encoded>` names.
fn blob_digest(path: &str) -> Result<Digest, ImageError> {
    let mut parts = path.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("blobs"), Some(algorithm), Some(encoded), None) => {
            Digest::parse(&format!("{algorithm}:{encoded}")).map_err(|_| {
                ImageError::InvalidArchive(format!("{}: not a valid blob name", shorten(path)))
            })
        }
        _ => Err(ImageError::InvalidArchive(format!(
            "{}: unexpected file under blobs/",
            shorten(path)
        ))),
    }
}

/// An entry's path, normalised (no `.`, empty or trailing components); refuses paths that are
/// absolute, climb with `..`, are not UTF-8, hold control characters (no image archive has
/// them, and they would end up in messages) or are unreasonably long.
fn clean_path(raw: &[u8]) -> Result<String, ImageError> {
    let lossy = || shorten(&String::from_utf8_lossy(raw));
    let Ok(path) = std::str::from_utf8(raw) else {
        return Err(ImageError::InvalidArchive(format!(
            "entry path {} is not UTF-8",
            lossy()
        )));
    };
    if path.len() > MAX_PATH {
        return Err(ImageError::InvalidArchive(format!(
            "entry path {} is longer than {MAX_PATH} bytes",
            lossy()
        )));
    }
    if path.starts_with('/') {
        return Err(ImageError::InvalidArchive(format!(
            "absolute entry path {}",
            lossy()
        )));
    }
    if path.chars().any(char::is_control) {
        return Err(ImageError::InvalidArchive(format!(
            "entry path {} contains control characters",
            lossy()
        )));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(ImageError::InvalidArchive(format!(
                    "entry path {} contains ..",
                    lossy()
                )));
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(ImageError::InvalidArchive(format!(
            "empty entry path {}",
            lossy()
        )));
    }
    Ok(parts.join("/"))
}

/// Where a symbolic link at `path` pointing at `target` leads, inside the archive; `None` for
/// absolute targets and targets above the archive's root.
fn resolve_link(path: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Classifies an error of the input stream: malformed tar or gzip data is an invalid archive;
/// anything else (the client's connection failing, say) stays an I/O error.
pub(super) fn input_error(e: io::Error) -> ImageError {
    use io::ErrorKind::*;
    match e.kind() {
        Other | InvalidData | InvalidInput | UnexpectedEof => {
            ImageError::InvalidArchive(printable(&describe(&e)))
        }
        _ => ImageError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_paths() {
        assert_eq!(clean_path(b"./index.json").unwrap(), "index.json");
        assert_eq!(
            clean_path(b"blobs//sha256/./ab/").unwrap(),
            "blobs/sha256/ab"
        );
        let bad: [&[u8]; 6] = [
            b"/etc/passwd",
            b"../../etc/passwd",
            b"a/../b",
            b"./",
            b"\xff",
            b"a\x1b[2Jb",
        ];
        for bad in bad {
            assert!(
                matches!(clean_path(bad), Err(ImageError::InvalidArchive(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn resolves_links_inside_the_archive_only() {
        assert_eq!(
            resolve_link("a/layer.tar", "../b/layer.tar").as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(resolve_link("a/layer.tar", "../../etc/passwd"), None);
        assert_eq!(resolve_link("a/layer.tar", "/etc/passwd"), None);
    }

    #[test]
    fn names_blobs() {
        let hex = "a".repeat(64);
        assert!(blob_digest(&format!("blobs/sha256/{hex}")).is_ok());
        for bad in [
            "blobs/sha256/xyz",
            "blobs/sha256",
            "blobs/x/y/z",
            "blobs/md5/abc",
        ] {
            assert!(blob_digest(bad).is_err(), "{bad}");
        }
    }
}
