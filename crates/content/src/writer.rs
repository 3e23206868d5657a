//! Writing an ingest and committing it as a blob.

use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use crate::error::io_at;
use crate::ingest::{self, IngestDir};
use crate::locks::LockGuard;
use crate::{ContentError, ContentStore, Digest, IngestStatus, sys};

/// Small writes are gathered up to this size; larger ones go straight to the file.
const BUF_CAP: usize = 1 << 20;

/// An open ingest. It holds the ref's lock until it is dropped or committed.
///
/// Data is appended through a buffer and hashed as it comes; nothing is fsynced and no metadata
/// is rewritten per write. Dropping the writer flushes the buffer; a crash loses at most the
/// buffer, and the next writer resumes from what reached the file.
pub struct Writer {
    store: ContentStore,
    dir: IngestDir,
    r#ref: String,
    file: File,
    /// Bytes accepted but not yet written to `file`.
    buf: Vec<u8>,
    /// Hash of the file's bytes followed by `buf`.
    hasher: Sha256,
    offset: u64,
    total: i64,
    expected: Option<Digest>,
    /// The digest this writer's own client named (at open or since): the only one a commit is
    /// checked against besides the commit's own, as in containerd. A digest recorded by an
    /// earlier writer of the ingest is shown in its status but binds nobody.
    named: Option<Digest>,
    started_at: SystemTime,
    updated_at: SystemTime,
    /// False after a failed write (the file may hold bytes the hasher has not seen) or a commit.
    /// The writer then refuses everything; a new writer resumes from the file as it is.
    writable: bool,
    // Last, so that the lock outlives the file handle.
    lock: LockGuard,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("ref", &self.r#ref)
            .field("dir", &self.dir.path())
            .field("offset", &self.offset)
            .field("total", &self.total)
            .field("expected", &self.expected)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Opens or resumes the ingest `r#ref` (see `ContentStore::writer`).
    pub(crate) fn open(
        store: &ContentStore,
        r#ref: &str,
        total: Option<i64>,
        expected: Option<Digest>,
    ) -> Result<Writer, ContentError> {
        if r#ref.is_empty() {
            return Err(ContentError::InvalidArgument(
                "ref must not be empty".into(),
            ));
        }
        let key = ingest::key(r#ref);
        let lock = store
            .locks()
            .lock_soon(&key)
            .ok_or_else(|| ContentError::Locked(r#ref.to_string()))?;
        let dir = store.ingest_dir(&key);
        if let Some(d) = &expected
            && store.exists(d)
        {
            dir.remove()?;
            return Err(ContentError::AlreadyExists(d.clone()));
        }
        let started_at = dir.prepare(r#ref)?;
        let total = match total {
            Some(t) => {
                if dir.total() != t {
                    dir.write_total(t)?;
                }
                t
            }
            None => dir.total(),
        };
        let named = expected.clone();
        let expected = match expected {
            Some(d) => {
                if dir.expected().as_ref() != Some(&d) {
                    dir.write_expected(&d)?;
                }
                Some(d)
            }
            None => dir.expected(),
        };

        let data = dir.data();
        let mut file = open_data(&data)?;
        let mut buf = Vec::new();
        let (hasher, offset) = rehash(&mut file, &mut buf).map_err(io_at(&data))?;
        let updated_at = file
            .metadata()
            .and_then(|m| m.modified())
            .map_or(started_at, |t| t.max(started_at));
        lock.progress().set(offset, updated_at);
        buf.clear();
        Ok(Writer {
            store: store.clone(),
            dir,
            r#ref: r#ref.to_string(),
            file,
            buf,
            hasher,
            offset,
            total,
            expected,
            named,
            started_at,
            updated_at,
            writable: true,
            lock,
        })
    }

    /// The ingest's ref.
    pub fn r#ref(&self) -> &str {
        &self.r#ref
    }

    /// Bytes written so far (the offset the next append must use).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The digest of the bytes written so far.
    pub fn digest(&self) -> Digest {
        Digest::from_sha256_bytes(&self.hasher.clone().finalize())
    }

    /// Sets the expected size (0 or negative: unknown). Recorded on disk when it changes.
    pub fn set_total(&mut self, total: i64) {
        if total != self.total {
            self.total = total;
            // If recording fails the value still holds for this writer; only a resume after a
            // crash would miss it, and a resuming client sends it again.
            let _ = self.dir.write_total(total);
        }
    }

    /// Sets the expected digest. Recorded on disk when it changes.
    pub fn set_expected(&mut self, d: Digest) {
        self.named = Some(d.clone());
        if self.expected.as_ref() != Some(&d) {
            // As in `set_total`, recording is best effort.
            let _ = self.dir.write_expected(&d);
            self.expected = Some(d);
        }
    }

    /// The ingest's status, counting buffered bytes.
    pub fn status(&self) -> IngestStatus {
        IngestStatus {
            r#ref: self.r#ref.clone(),
            offset: self.offset,
            total: self.total,
            expected: self.expected.clone(),
            started_at: self.started_at,
            updated_at: self.updated_at,
        }
    }

    /// Writes `data` at `offset` and returns the new offset. `offset` must be the current
    /// offset (append) or 0, which discards what was written and starts over (containerd's
    /// semantics for a client restarting a download). Anything else is `OutOfRange`.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<u64, ContentError> {
        self.check_writable()?;
        let restart = match offset {
            o if o == self.offset => false,
            0 => true,
            _ => {
                return Err(ContentError::OutOfRange {
                    offset,
                    expected: self.offset,
                });
            }
        };
        let end = offset + data.len() as u64;
        if self.total > 0 && end > self.total as u64 {
            return Err(ContentError::InvalidArgument(format!(
                "write exceeds total: {end} bytes, total {}",
                self.total
            )));
        }
        if restart {
            self.truncate()?;
        }
        self.append(data)?;
        Ok(self.offset)
    }

    /// Verifies the ingest and makes it a blob; returns its digest. `size` 0 skips the size
    /// check; `expected` defaults to the one set on the writer, and without either the computed
    /// digest is accepted.
    ///
    /// A mismatch is `FailedPrecondition` and keeps the ingest, so the client can resume or
    /// abort it. If the blob exists already, the ingest is removed and the result is
    /// `AlreadyExists`.
    ///
    /// The data is fsynced, made read-only and renamed into place, and the blob directory is
    /// fsynced: the blob appears complete or not at all, even across a crash.
    pub fn commit(mut self, size: i64, expected: Option<Digest>) -> Result<Digest, ContentError> {
        self.check_writable()?;
        self.flush_buf()?;
        if size > 0 && size as u64 != self.offset {
            return Err(ContentError::FailedPrecondition(format!(
                "unexpected commit size {}, expected {size}",
                self.offset
            )));
        }
        let digest = self.digest();
        if let Some(e) = expected.as_ref().or(self.named.as_ref())
            && *e != digest
        {
            return Err(ContentError::FailedPrecondition(format!(
                "unexpected commit digest {digest}, expected {e}"
            )));
        }
        let blob = self.store.blob_path(&digest);
        if blob.exists() {
            self.dir.remove()?;
            return Err(ContentError::AlreadyExists(digest));
        }

        // From here on the file belongs to the commit, whatever happens.
        self.writable = false;
        let data = self.dir.data();
        self.file.sync_all().map_err(io_at(&data))?;
        self.file
            .set_permissions(Permissions::from_mode(0o444))
            .map_err(io_at(&data))?;
        match sys::rename_noreplace(&data, &blob) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.dir.remove()?;
                return Err(ContentError::AlreadyExists(digest));
            }
            Err(e) => {
                // Leave the ingest writable again for a resume; `open_data` would cope anyway.
                let _ = self.file.set_permissions(Permissions::from_mode(0o644));
                return Err(io_at(&blob)(e));
            }
        }
        // The ingest has no data any more. A directory that fails to go away is left to
        // stale-ingest clean-up.
        let _ = self.dir.remove();
        let blobs = blob.parent().unwrap_or(Path::new("."));
        sys::sync_dir(blobs).map_err(io_at(blobs))?;
        Ok(digest)
    }

    /// Gives the ingest up: its directory is removed while this writer still holds the ref.
    pub fn discard(mut self) -> Result<(), ContentError> {
        self.writable = false;
        self.buf.clear();
        self.dir.remove()
    }

    fn check_writable(&self) -> Result<(), ContentError> {
        if self.writable {
            return Ok(());
        }
        Err(ContentError::FailedPrecondition(format!(
            "ingest ref {} failed to write earlier; open it again to resume",
            self.r#ref
        )))
    }

    fn append(&mut self, data: &[u8]) -> Result<(), ContentError> {
        if self.buf.len() + data.len() > BUF_CAP {
            self.flush_buf()?;
        }
        if data.len() >= BUF_CAP {
            if let Err(e) = self.file.write_all(data) {
                self.writable = false;
                return Err(io_at(&self.dir.data())(e));
            }
        } else {
            if self.buf.capacity() < BUF_CAP {
                self.buf.reserve_exact(BUF_CAP - self.buf.len());
            }
            self.buf.extend_from_slice(data);
        }
        self.hasher.update(data);
        self.offset += data.len() as u64;
        self.updated_at = SystemTime::now();
        self.lock.progress().set(self.offset, self.updated_at);
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<(), ContentError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = self.file.write_all(&self.buf);
        self.buf.clear();
        if let Err(e) = res {
            self.writable = false;
            return Err(io_at(&self.dir.data())(e));
        }
        // The file's time is the last accepted write's, not the flush's: a reopened ingest
        // (and its status) reads its update time from it, as containerd's does.
        let _ = self.file.set_modified(self.updated_at);
        Ok(())
    }

    fn truncate(&mut self) -> Result<(), ContentError> {
        self.buf.clear();
        let res = self
            .file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)));
        if let Err(e) = res {
            self.writable = false;
            return Err(io_at(&self.dir.data())(e));
        }
        self.hasher = Sha256::new();
        self.offset = 0;
        self.updated_at = SystemTime::now();
        self.lock.progress().set(0, self.updated_at);
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.writable {
            // Best effort: whatever does not reach the file is simply not part of the ingest
            // when it is resumed.
            let _ = self.flush_buf();
        }
    }
}

/// Opens (creating) an ingest's data file for reading and appending.
fn open_data(path: &Path) -> Result<File, ContentError> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            // A resumed ingest keeps its data.
            .truncate(false)
            .mode(0o644)
            .open(path)
    };
    match open() {
        // A crash between a commit's chmod and its rename leaves a read-only file behind.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            std::fs::set_permissions(path, Permissions::from_mode(0o644)).map_err(io_at(path))?;
            open().map_err(io_at(path))
        }
        res => res.map_err(io_at(path)),
    }
}

/// Hashes what a resumed ingest holds, leaving the file positioned at its end. `buf` is scratch
/// space (later reused as the write buffer).
fn rehash(file: &mut File, buf: &mut Vec<u8>) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut offset = 0;
    if file.metadata()?.len() == 0 {
        return Ok((hasher, 0));
    }
    buf.resize(BUF_CAP, 0);
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hasher, offset))
}
