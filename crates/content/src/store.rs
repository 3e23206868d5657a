//! The store: blobs, and the ingests that produce them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::digest::is_sha256_hex;
use crate::error::io_at;
use crate::ingest::{self, IngestDir, not_found_or_io};
use crate::locks::Locks;
use crate::{BlobReader, ContentError, Digest, IngestStatus, Writer};

/// A committed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When its data was last written (the file's mtime).
    pub created: SystemTime,
}

/// A content-addressed blob store rooted at one directory. Cheap to clone; clones share the
/// ingest locks, so open one store per root and clone it.
#[derive(Clone, Debug)]
pub struct ContentStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `root/blobs/sha256`.
    blobs: PathBuf,
    /// `root/ingest`.
    ingest: PathBuf,
    locks: Arc<Locks>,
}

impl ContentStore {
    /// Opens the store at `root`, creating its directories, and removes temporary files a
    /// killed process left in ingests. Ingests themselves are kept, to be resumed.
    pub fn open(root: &Path) -> Result<ContentStore, ContentError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        for dir in [&blobs, &ingest] {
            fs::create_dir_all(dir).map_err(io_at(dir))?;
        }
        for entry in fs::read_dir(&ingest).map_err(io_at(&ingest))? {
            let entry = entry.map_err(io_at(&ingest))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                // Best effort: a leftover temporary file is harmless, an unreadable ingest must
                // not keep the daemon from starting.
                let _ = IngestDir::new(entry.path()).remove_temp_files();
            }
        }
        Ok(ContentStore {
            inner: Arc::new(Inner {
                blobs,
                ingest,
                locks: Arc::default(),
            }),
        })
    }

    pub(crate) fn locks(&self) -> &Arc<Locks> {
        &self.inner.locks
    }

    pub(crate) fn ingest_dir(&self, key: &str) -> IngestDir {
        IngestDir::new(self.inner.ingest.join(key))
    }

    /// Where the blob `d` lives (whether or not it exists): `root/blobs/sha256/<hex>`.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.blobs.join(d.hex())
    }

    /// Size and creation time of blob `d`.
    pub fn info(&self, d: &Digest) -> Result<BlobInfo, ContentError> {
        let path = self.blob_path(d);
        let meta = fs::metadata(&path).map_err(|e| blob_error(&path, d, e))?;
        Ok(BlobInfo {
            digest: d.clone(),
            size: meta.len(),
            created: meta.modified().map_err(io_at(&path))?,
        })
    }

    /// Whether blob `d` is committed.
    pub fn exists(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Opens blob `d` for reading.
    pub fn reader(&self, d: &Digest) -> Result<BlobReader, ContentError> {
        BlobReader::open(self.blob_path(d), d)
    }

    /// Deletes blob `d`. Readers already open keep reading it.
    pub fn delete(&self, d: &Digest) -> Result<(), ContentError> {
        let path = self.blob_path(d);
        fs::remove_file(&path).map_err(|e| blob_error(&path, d, e))
    }

    /// Every committed blob, in no particular order. Files in the blob directory whose names are
    /// not digests are ignored.
    pub fn list(&self) -> Result<Vec<BlobInfo>, ContentError> {
        let mut out = Vec::new();
        for (name, _) in hex_entries(&self.inner.blobs)? {
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            match self.info(&d) {
                Ok(info) => out.push(info),
                // Deleted since the directory was read.
                Err(ContentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Opens or resumes the ingest `r#ref`.
    ///
    /// - `r#ref` must not be empty (`InvalidArgument`); another live writer on it is `Locked`.
    /// - If `expected` is already committed the ingest is removed and the result is
    ///   `AlreadyExists(expected)`: the client has nothing to send.
    /// - `total` and `expected` replace recorded values when given; otherwise those of a
    ///   resumed ingest hold.
    /// - A resumed ingest keeps its data: the writer's offset is its length, and its digest is
    ///   rebuilt by reading it.
    pub fn writer(
        &self,
        r#ref: &str,
        total: Option<i64>,
        expected: Option<Digest>,
    ) -> Result<Writer, ContentError> {
        Writer::open(self, r#ref, total, expected)
    }

    /// Status of the ingest `r#ref`; `NotFound` if there is none.
    pub fn status(&self, r#ref: &str) -> Result<IngestStatus, ContentError> {
        let key = ingest::key(r#ref);
        self.status_of(&key, r#ref.to_string())
    }

    fn status_of(&self, key: &str, r#ref: String) -> Result<IngestStatus, ContentError> {
        let mut st = self.ingest_dir(key).status(r#ref)?;
        if let Some((offset, updated_at)) = self.inner.locks.progress(key) {
            st.offset = offset;
            st.updated_at = updated_at;
        }
        Ok(st)
    }

    /// Status of every ingest whose ref can be read back.
    pub fn list_statuses(&self) -> Result<Vec<IngestStatus>, ContentError> {
        let mut out = Vec::new();
        for (key, dir) in self.ingest_dirs()? {
            let Some(r) = dir.read_ref() else { continue };
            match self.status_of(&key, r) {
                Ok(st) => out.push(st),
                // Committed or aborted since the directory was read.
                Err(ContentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes the ingest `r#ref` (`NotFound` if there is none), waiting a moment for a writer
    /// that holds it to let go.
    pub fn abort(&self, r#ref: &str) -> Result<(), ContentError> {
        let key = ingest::key(r#ref);
        // A writer still open after the wait loses its ingest, as with containerd (whose
        // Abort takes no lock): its later writes and its commit fail.
        let _lock = self.inner.locks.lock_soon(&key);
        let dir = self.ingest_dir(&key);
        fs::metadata(dir.path()).map_err(|e| not_found_or_io(dir.path(), r#ref, e))?;
        dir.remove()
    }

    /// Removes ingests not written to for at least `age`, skipping those under a live writer,
    /// and returns their refs. Directories whose ref cannot be read back are removed too but,
    /// having no name, are not listed. Each ingest is locked while it is examined, so a writer
    /// opening it at that moment gets `Locked` (and retries).
    pub fn remove_ingests_older_than(&self, age: Duration) -> Result<Vec<String>, ContentError> {
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for (key, dir) in self.ingest_dirs()? {
            let Some(_lock) = self.inner.locks.try_lock(&key) else {
                continue;
            };
            let Some(updated_at) = dir.updated_at() else {
                continue;
            };
            if now.duration_since(updated_at).unwrap_or_default() < age {
                continue;
            }
            let r = dir.read_ref();
            dir.remove()?;
            removed.extend(r);
        }
        Ok(removed)
    }

    /// The ingest directories, by key. Entries that are not ours are ignored.
    fn ingest_dirs(&self) -> Result<Vec<(String, IngestDir)>, ContentError> {
        let mut out = Vec::new();
        for (key, path) in hex_entries(&self.inner.ingest)? {
            out.push((key, IngestDir::new(path)));
        }
        Ok(out)
    }
}

/// An I/O error on blob `d`, where "no such file" means the blob does not exist.
pub(crate) fn blob_error(path: &Path, d: &Digest, e: io::Error) -> ContentError {
    if e.kind() == io::ErrorKind::NotFound {
        ContentError::NotFound(format!("content {d}"))
    } else {
        io_at(path)(e)
    }
}

/// The entries of `dir` named by 64 lowercase hex digits (blob files, ingest directories);
/// anything else there is not ours and is ignored.
fn hex_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, ContentError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        if let Some(name) = entry.file_name().to_str().filter(|n| is_sha256_hex(n)) {
            out.push((name.to_string(), entry.path()));
        }
    }
    Ok(out)
}
