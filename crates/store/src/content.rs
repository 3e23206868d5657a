//! Content per namespace: the blob store holds bytes once; records here make a blob visible in a
//! namespace, carry its labels, and tie writes to leases.

use std::collections::HashMap;

use std::time::SystemTime;

use berth_content::{BlobReader, ContentError, ContentStore, Digest, IngestStatus, Writer};
use serde::{Deserialize, Serialize};

use crate::leases::Resource;
use crate::records::{decode, encode, key, list};
use crate::time::Timestamp;
use crate::{Store, StoreError, labels};

/// What `Content.Info` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentInfo {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size.
    pub size: i64,
    /// When it became visible in the namespace.
    pub created_at: Timestamp,
    /// When its labels last changed.
    pub updated_at: Timestamp,
    /// Labels.
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    labels: HashMap<String, String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

const TREE: &str = "content";

/// Separates a namespace from a client's ref in the blob store's ingest names.
fn ingest_ref(ns: &str, r: &str) -> String {
    format!("{ns}/{r}")
}

/// How a new writer treats a blob that another namespace already has on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Made visible in the writer's namespace at once, without a transfer, and the open
    /// answers `AlreadyExists`: what the daemon's own writers (pulls) want.
    Adopt,
    /// As containerd answers a client's Write stream: the writer starts complete (of the
    /// expected size, if one is given) and its commit makes the blob visible; nothing is
    /// visible before that commit.
    OnCommit,
}

/// Maps a blob-store error onto the store's error classes.
pub fn content_error(e: ContentError) -> StoreError {
    match e {
        ContentError::NotFound(m) => StoreError::NotFound(m),
        ContentError::AlreadyExists(d) => StoreError::AlreadyExists(format!("content {d}")),
        ContentError::Locked(r) => StoreError::Unavailable(format!("ref {r} locked")),
        ContentError::InvalidArgument(m) => StoreError::InvalidArgument(m),
        e @ ContentError::OutOfRange { .. } => StoreError::OutOfRange(e.to_string()),
        ContentError::FailedPrecondition(m) => StoreError::FailedPrecondition(m),
        e @ ContentError::Io { .. } => {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            StoreError::Content(format!("{e}{cause}"))
        }
    }
}

/// Strips the namespace from a blob-store ingest status.
fn status_in(ns: &str, mut st: IngestStatus) -> Option<IngestStatus> {
    let r = st.r#ref.strip_prefix(ns)?.strip_prefix('/')?.to_string();
    st.r#ref = r;
    Some(st)
}

/// A write in progress in a namespace.
#[derive(Debug)]
pub struct NsWriter {
    ns: String,
    r#ref: String,
    lease: Option<String>,
    inner: Writer,
    shared: Option<Shared>,
}

/// A blob another namespace has, offered to a writer here (containerd's shared content
/// policy): the writer starts complete; a commit makes the blob visible here without a byte
/// copied, and a write first copies the blob (or the part the write keeps) into the ingest.
#[derive(Debug)]
struct Shared {
    blobs: ContentStore,
    digest: Digest,
    size: u64,
    opened_at: SystemTime,
}

impl NsWriter {
    /// The blob-store writer (offsets, digest, writes) of a writer that shares nothing: what
    /// the daemon's own writers (pulls, diffs) get.
    pub fn inner(&mut self) -> &mut Writer {
        &mut self.inner
    }

    /// Bytes written so far, or the shared blob's size.
    pub fn offset(&self) -> u64 {
        match &self.shared {
            Some(s) => s.size,
            None => self.inner.offset(),
        }
    }

    /// Digest of the bytes written so far.
    pub fn digest(&self) -> Digest {
        match &self.shared {
            Some(s) => s.digest.clone(),
            None => self.inner.digest(),
        }
    }

    /// Status with the client's ref.
    pub fn status(&self) -> IngestStatus {
        match &self.shared {
            Some(s) => IngestStatus {
                r#ref: self.r#ref.clone(),
                offset: s.size,
                total: s.size as i64,
                expected: Some(s.digest.clone()),
                started_at: s.opened_at,
                updated_at: s.opened_at,
            },
            None => {
                let mut st = self.inner.status();
                st.r#ref = self.r#ref.clone();
                st
            }
        }
    }

    /// Sets the expected size (a shared blob's size stands until something is written).
    pub fn set_total(&mut self, total: i64) {
        if self.shared.is_none() {
            self.inner.set_total(total);
        }
    }

    /// Sets the expected digest (a shared blob's stands until something is written).
    pub fn set_expected(&mut self, d: Digest) {
        if self.shared.is_none() {
            self.inner.set_expected(d);
        }
    }

    /// Writes `data` at `offset` (the current offset, or 0 to start over); returns the new
    /// offset. On a shared blob, the write keeps the blob's bytes before `offset`.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        if let Some(s) = &self.shared {
            if data.is_empty() && offset == s.size {
                return Ok(offset);
            }
            if offset != 0 && offset != s.size {
                return Err(content_error(ContentError::OutOfRange {
                    offset,
                    expected: s.size,
                }));
            }
        }
        if let Some(s) = self.shared.take() {
            self.unshare(&s, offset).map_err(content_error)?;
        }
        self.inner.write_at(offset, data).map_err(content_error)
    }

    /// Copies the first `keep` bytes of the shared blob into the ingest, which has no size
    /// bound then (the blob's size was where the write started, not where it ends).
    fn unshare(&mut self, s: &Shared, keep: u64) -> Result<(), ContentError> {
        self.inner.set_total(0);
        self.inner.write_at(0, &[])?;
        let r = s.blobs.reader(&s.digest)?;
        let mut buf = vec![0; 1 << 20];
        let mut at = 0;
        while at < keep {
            let want = buf
                .len()
                .min(usize::try_from(keep - at).unwrap_or(usize::MAX));
            let n = r.read_at(at, &mut buf[..want])?;
            if n == 0 {
                return Err(ContentError::FailedPrecondition(format!(
                    "blob {} ends at {at}, before {keep}",
                    s.digest
                )));
            }
            self.inner.write_at(at, &buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }
}

impl Store {
    fn content(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    fn content_record(&self, ns: &str, d: &Digest) -> Result<Option<Record>, StoreError> {
        let k = key(ns, d.as_str());
        match self.content()?.get(&k)? {
            Some(v) => Ok(Some(decode(TREE, &k, &v)?)),
            None => Ok(None),
        }
    }

    fn info_of(&self, d: &Digest, rec: Record) -> Result<ContentInfo, StoreError> {
        let blob = self.blobs.info(d).map_err(content_error)?;
        Ok(ContentInfo {
            digest: d.clone(),
            size: blob.size as i64,
            created_at: rec.created_at,
            updated_at: rec.updated_at,
            labels: rec.labels,
        })
    }

    /// Info of a blob visible in `ns`.
    pub fn content_info(&self, ns: &str, d: &Digest) -> Result<ContentInfo, StoreError> {
        let rec = self
            .content_record(ns, d)?
            .ok_or_else(|| StoreError::NotFound(format!("content {d}")))?;
        self.info_of(d, rec)
    }

    /// Every blob visible in `ns` (records whose blob vanished are skipped).
    pub fn content_list(&self, ns: &str) -> Result<Vec<ContentInfo>, StoreError> {
        let mut out = Vec::new();
        for (id, rec) in list::<Record>(&self.content()?, TREE, ns)? {
            let Ok(d) = Digest::parse(&id) else { continue };
            match self.info_of(&d, rec) {
                Ok(i) => out.push(i),
                Err(StoreError::NotFound(_)) => {
                    tracing::warn!(namespace = ns, digest = %d, "content record without its blob");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Updates labels of a blob in `ns` (`labels`, `labels.<k>`; no paths replaces them).
    pub fn content_update(
        &self,
        ns: &str,
        d: &Digest,
        new_labels: &HashMap<String, String>,
        paths: &[String],
    ) -> Result<ContentInfo, StoreError> {
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(StoreError::InvalidArgument(format!(
                    "cannot update {p:?} field on content info {d}"
                )));
            }
        }
        let _gc = self.gc_read();
        let tree = self.content()?;
        let k = key(ns, d.as_str());
        let rec = tree.transaction(|tx| {
            use sled::transaction::ConflictableTransactionError::Abort;
            let mut rec: Record = match tx.get(&k)? {
                Some(v) => decode(TREE, &k, &v).map_err(Abort)?,
                None => return Err(Abort(StoreError::NotFound(format!("content {d}")))),
            };
            labels::apply_paths(&mut rec.labels, new_labels, paths, true);
            labels::validate(&rec.labels).map_err(Abort)?;
            rec.updated_at = Timestamp::now();
            tx.insert(k.as_slice(), encode(&rec))?;
            Ok(rec)
        })?;
        self.info_of(d, rec)
    }

    /// Removes a blob from `ns`. The bytes go when no namespace references them (at GC).
    pub fn content_delete(&self, ns: &str, d: &Digest) -> Result<(), StoreError> {
        if self.content()?.remove(key(ns, d.as_str()))?.is_none() {
            return Err(StoreError::NotFound(format!("content {d}")));
        }
        Ok(())
    }

    /// A reader of a blob visible in `ns`.
    pub fn content_reader(&self, ns: &str, d: &Digest) -> Result<BlobReader, StoreError> {
        if self.content_record(ns, d)?.is_none() {
            return Err(StoreError::NotFound(format!("content {d}")));
        }
        self.blobs.reader(d).map_err(content_error)
    }

    /// Adds a record for a blob that is on disk, and ties it to `lease`.
    fn content_adopt(
        &self,
        ns: &str,
        d: &Digest,
        labels: &HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<bool, StoreError> {
        let _ns = self.hold_namespace(ns)?;
        let now = Timestamp::now();
        let rec = Record {
            labels: labels.clone(),
            created_at: now,
            updated_at: now,
        };
        let created = self
            .content()?
            .compare_and_swap(
                key(ns, d.as_str()),
                None as Option<&[u8]>,
                Some(encode(&rec)),
            )?
            .is_ok();
        if let Some(l) = lease {
            self.add_lease_resource_locked(
                ns,
                l,
                &Resource {
                    id: d.to_string(),
                    r#type: "content".into(),
                },
            )?;
        }
        Ok(created)
    }

    /// Opens (or resumes) the ingest `ref` in `ns`. If `expected` is already visible in `ns`:
    /// `AlreadyExists`. A blob on disk that another namespace has is treated as `shared`
    /// says.
    pub fn content_writer(
        &self,
        ns: &str,
        r#ref: &str,
        total: Option<i64>,
        expected: Option<Digest>,
        lease: Option<&str>,
        shared: Sharing,
    ) -> Result<NsWriter, StoreError> {
        let share = shared == Sharing::OnCommit;
        if r#ref.is_empty() {
            return Err(StoreError::InvalidArgument("ref: must not be empty".into()));
        }
        if let Some(l) = lease {
            self.get_lease(ns, l)?;
        }
        let _gc = self.gc_read();
        let mut shared = None;
        let mut on_disk = false;
        if let Some(d) = &expected {
            if self.content_record(ns, d)?.is_some() {
                return Err(StoreError::AlreadyExists(format!("content {d}")));
            }
            if let Ok(blob) = self.blobs.info(d) {
                if !share {
                    self.content_adopt(ns, d, &HashMap::new(), lease)?;
                    let _ = self.blobs.abort(&ingest_ref(ns, r#ref));
                    return Err(StoreError::AlreadyExists(format!("content {d}")));
                }
                on_disk = true;
                if total.is_none_or(|t| t == blob.size as i64) {
                    shared = Some(Shared {
                        blobs: self.blobs.clone(),
                        digest: d.clone(),
                        size: blob.size,
                        opened_at: SystemTime::now(),
                    });
                }
            }
        }
        // The blob store answers AlreadyExists for a blob it has; here that is for the commit
        // to say, so the ingest is opened without the digest and told it after.
        let mut inner = match (&shared, on_disk) {
            (Some(_), _) => self.blobs.writer(&ingest_ref(ns, r#ref), None, None),
            (None, true) => self.blobs.writer(&ingest_ref(ns, r#ref), total, None),
            (None, false) => self
                .blobs
                .writer(&ingest_ref(ns, r#ref), total, expected.clone()),
        }
        .map_err(content_error)?;
        if let (None, true, Some(d)) = (&shared, on_disk, &expected) {
            inner.set_expected(d.clone());
        }
        let _ns = self.hold_namespace(ns)?;
        if let Some(l) = lease {
            self.add_lease_resource_locked(
                ns,
                l,
                &Resource {
                    id: r#ref.to_string(),
                    r#type: "ingests".into(),
                },
            )?;
        }
        Ok(NsWriter {
            ns: ns.to_string(),
            r#ref: r#ref.to_string(),
            lease: lease.map(str::to_string),
            inner,
            shared,
        })
    }

    /// Commits a write: verifies size and digest, makes the blob visible in the namespace with
    /// `labels`, and moves the lease's hold from the ingest to the content.
    pub fn content_commit(
        &self,
        w: NsWriter,
        size: i64,
        expected: Option<Digest>,
        labels: &HashMap<String, String>,
    ) -> Result<Digest, StoreError> {
        labels::validate(labels)?;
        let _gc = self.gc_read();
        let NsWriter {
            ns,
            r#ref,
            lease,
            inner,
            shared,
        } = w;
        let committed = match shared {
            // Nothing written on a shared blob: check it as containerd does, drop the empty
            // ingest, and make the blob visible here.
            Some(s) => {
                if size > 0 && size as u64 != s.size {
                    return Err(StoreError::FailedPrecondition(format!(
                        "unexpected commit size {}, expected {size}",
                        s.size
                    )));
                }
                if let Some(e) = expected.as_ref().filter(|e| **e != s.digest) {
                    return Err(StoreError::FailedPrecondition(format!(
                        "unexpected commit digest {}, expected {e}",
                        s.digest
                    )));
                }
                inner.discard().map(|()| s.digest)
            }
            None => inner.commit(size, expected),
        };
        let (d, existed) = match committed {
            Ok(d) => (d, false),
            Err(ContentError::AlreadyExists(d)) => (d, true),
            Err(e) => return Err(content_error(e)),
        };
        if let Some(l) = &lease {
            let _ = self.delete_lease_resource(
                &ns,
                l,
                &Resource {
                    id: r#ref.clone(),
                    r#type: "ingests".into(),
                },
            );
        }
        let created = self.content_adopt(&ns, &d, labels, lease.as_deref())?;
        if existed && !created {
            return Err(StoreError::AlreadyExists(format!("content {d}")));
        }
        Ok(d)
    }

    /// Status of the ingest `ref` in `ns`.
    pub fn content_status(&self, ns: &str, r#ref: &str) -> Result<IngestStatus, StoreError> {
        let st = self
            .blobs
            .status(&ingest_ref(ns, r#ref))
            .map_err(content_error)?;
        status_in(ns, st).ok_or_else(|| StoreError::NotFound(format!("ingest ref {ref:?}")))
    }

    /// Every ingest in `ns`.
    pub fn content_statuses(&self, ns: &str) -> Result<Vec<IngestStatus>, StoreError> {
        Ok(self
            .blobs
            .list_statuses()
            .map_err(content_error)?
            .into_iter()
            .filter_map(|s| status_in(ns, s))
            .collect())
    }

    /// Abandons the ingest `ref` in `ns`.
    pub fn content_abort(&self, ns: &str, r#ref: &str) -> Result<(), StoreError> {
        self.blobs
            .abort(&ingest_ref(ns, r#ref))
            .map_err(content_error)
    }
}
