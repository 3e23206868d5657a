//! One ingest directory on disk: `ingest/<sha256 hex of the ref>/` holding `ref`, `data`,
//! `startedat` and, once known, `total` and `expected`.
//!
//! Progress is not written anywhere: the offset is the length of `data` and the update time its
//! mtime. The small files are replaced atomically (temporary file, then rename), and are read
//! forgivingly: a missing or garbled one reads as "unknown", never as an error.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::error::io_at;
use crate::{ContentError, Digest};

const REF: &str = "ref";
const DATA: &str = "data";
const STARTED_AT: &str = "startedat";
const TOTAL: &str = "total";
const EXPECTED: &str = "expected";
/// Prefix of the temporary files metadata is written through; `ContentStore::open` removes
/// leftovers.
const TEMP_PREFIX: &str = ".tmp-";

/// The status of an ingest (containerd's `content.Status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestStatus {
    /// The client's name for the ingest.
    pub r#ref: String,
    /// Bytes written so far.
    pub offset: u64,
    /// The expected size, 0 or negative when unknown.
    pub total: i64,
    /// The expected digest, if the client gave one.
    pub expected: Option<Digest>,
    /// When the ingest was first opened.
    pub started_at: SystemTime,
    /// When data was last written.
    pub updated_at: SystemTime,
}

/// The directory name of the ingest `r#ref`. Hashing makes any ref (slashes, dots, long) a safe
/// file name.
pub(crate) fn key(r#ref: &str) -> String {
    hex::encode(Sha256::digest(r#ref.as_bytes()))
}

/// An ingest directory (which may not exist).
#[derive(Debug)]
pub(crate) struct IngestDir {
    path: PathBuf,
}

impl IngestDir {
    pub(crate) fn new(path: PathBuf) -> IngestDir {
        IngestDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.path.join(DATA)
    }

    /// Creates the directory if needed and records `r#ref` in it. Returns when the ingest started.
    pub(crate) fn prepare(&self, r#ref: &str) -> Result<SystemTime, ContentError> {
        match fs::create_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_at(&self.path)(e)),
        }
        if self.read_ref().as_deref() != Some(r#ref) {
            self.write(REF, r#ref)?;
        }
        if let Some(t) = self.started_at() {
            return Ok(t);
        }
        let now = SystemTime::now();
        self.write(STARTED_AT, &encode_time(now))?;
        Ok(now)
    }

    /// The ref recorded in the directory, if it is readable and hashes to the directory's name.
    pub(crate) fn read_ref(&self) -> Option<String> {
        let r = fs::read_to_string(self.path.join(REF)).ok()?;
        let name = self.path.file_name()?.to_str()?;
        (!r.is_empty() && key(&r) == name).then_some(r)
    }

    /// The recorded total, 0 when unknown.
    pub(crate) fn total(&self) -> i64 {
        self.read_small(TOTAL)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn write_total(&self, total: i64) -> Result<(), ContentError> {
        self.write(TOTAL, &total.to_string())
    }

    /// The recorded expected digest, if any.
    pub(crate) fn expected(&self) -> Option<Digest> {
        self.read_small(EXPECTED)
            .and_then(|s| Digest::parse(s.trim()).ok())
    }

    pub(crate) fn write_expected(&self, d: &Digest) -> Result<(), ContentError> {
        self.write(EXPECTED, d.as_str())
    }

    fn started_at(&self) -> Option<SystemTime> {
        self.read_small(STARTED_AT).and_then(|s| decode_time(&s))
    }

    /// The status as recorded on disk (without a live writer's buffered bytes).
    pub(crate) fn status(&self, r#ref: String) -> Result<IngestStatus, ContentError> {
        let dir_meta =
            fs::metadata(&self.path).map_err(|e| not_found_or_io(&self.path, &r#ref, e))?;
        let data = match fs::metadata(self.data()) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_at(&self.data())(e)),
        };
        let started_at = self
            .started_at()
            .or_else(|| dir_meta.modified().ok())
            .unwrap_or(UNIX_EPOCH);
        // File times come from a coarser clock than `SystemTime::now`: an ingest just started
        // can have data older than its start.
        let updated_at = data
            .as_ref()
            .and_then(|m| m.modified().ok())
            .map_or(started_at, |t| t.max(started_at));
        Ok(IngestStatus {
            r#ref,
            offset: data.map_or(0, |m| m.len()),
            total: self.total(),
            expected: self.expected(),
            started_at,
            updated_at,
        })
    }

    /// When the ingest last changed: its data's mtime, else its start, else the directory's mtime.
    pub(crate) fn updated_at(&self) -> Option<SystemTime> {
        fs::metadata(self.data())
            .and_then(|m| m.modified())
            .ok()
            .or_else(|| self.started_at())
            .or_else(|| fs::metadata(&self.path).and_then(|m| m.modified()).ok())
    }

    /// Deletes the directory; one already gone is not an error.
    pub(crate) fn remove(&self) -> Result<(), ContentError> {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(&self.path)(e)),
            _ => Ok(()),
        }
    }

    /// Removes temporary files a killed process left behind.
    pub(crate) fn remove_temp_files(&self) -> Result<(), ContentError> {
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_at(&self.path)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_at(&self.path))?;
            if entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(TEMP_PREFIX.as_bytes())
            {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_at(&path)(e)),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Reads a metadata file; anything unreadable or implausibly large is "unknown".
    fn read_small(&self, name: &str) -> Option<String> {
        let path = self.path.join(name);
        let len = fs::metadata(&path).ok()?.len();
        if len > 4096 {
            return None;
        }
        fs::read_to_string(path).ok()
    }

    /// Replaces metadata file `name` atomically. Not fsynced: after a power loss an ingest may
    /// lose a value, which the client sends again when it resumes.
    fn write(&self, name: &str, value: &str) -> Result<(), ContentError> {
        let temp = self.path.join(format!("{TEMP_PREFIX}{name}"));
        let mut f = fs::File::create(&temp).map_err(io_at(&temp))?;
        f.write_all(value.as_bytes()).map_err(io_at(&temp))?;
        drop(f);
        let path = self.path.join(name);
        fs::rename(&temp, &path).map_err(io_at(&path))
    }
}

/// An I/O error on an ingest, where "no such file" means the ingest does not exist.
pub(crate) fn not_found_or_io(path: &Path, r#ref: &str, e: io::Error) -> ContentError {
    if e.kind() == io::ErrorKind::NotFound {
        ContentError::NotFound(format!("ingest ref {ref}"))
    } else {
        io_at(path)(e)
    }
}

/// Times are stored as nanoseconds since the Unix epoch, in decimal.
fn encode_time(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string()
}

fn decode_time(s: &str) -> Option<SystemTime> {
    let nanos: u64 = s.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(decode_time(&encode_time(t)), Some(t));
        assert_eq!(decode_time("soon"), None);
        assert_eq!(decode_time(""), None);
    }

    #[test]
    fn garbled_metadata_reads_as_unknown() {
        let root = tempfile::tempdir().unwrap();
        let dir = IngestDir::new(root.path().join(key("r")));
        dir.prepare("r").unwrap();
        fs::write(dir.path().join(TOTAL), "12ab").unwrap();
        fs::write(dir.path().join(EXPECTED), "sha256:nope").unwrap();
        fs::write(dir.path().join(STARTED_AT), "\u{0}\u{1}").unwrap();
        fs::write(dir.path().join(REF), "other").unwrap();
        assert_eq!(dir.total(), 0);
        assert_eq!(dir.expected(), None);
        assert_eq!(dir.started_at(), None);
        assert_eq!(dir.read_ref(), None);
        let st = dir.status("r".into()).unwrap();
        assert_eq!((st.offset, st.total, st.expected), (0, 0, None));
        // Preparing again repairs what it needs.
        dir.prepare("r").unwrap();
        assert_eq!(dir.read_ref().as_deref(), Some("r"));
        assert!(dir.started_at().is_some());
    }
}
