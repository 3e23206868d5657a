//! Opening the database, its schema version, and durability.

use std::path::Path;
use std::sync::{Arc, RwLock};

use berth_content::ContentStore;

use crate::StoreError;

/// The metadata layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

const SCHEMA_KEY: &[u8] = b"schema_version";
const UUID_KEY: &[u8] = b"uuid";

/// Per-namespace object trees. Keys in each are `<namespace>/<id>`; a namespace can be deleted
/// only when none of them holds a key under it.
pub(crate) const NAMESPACED_TREES: &[&str] = &[
    "images",
    "containers",
    "leases",
    "content",
    "snapshots",
    "sandboxes",
];

/// The metadata store. Cheap to clone; clones share the database.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) db: sled::Db,
    /// The blob store behind the content records.
    pub(crate) blobs: ContentStore,
    /// Held for reading by writers that add references, for writing by the garbage collector.
    /// A std lock: held only around synchronous store calls, never across an await.
    pub(crate) gc_lock: Arc<RwLock<()>>,
    /// Snapshotter backends by name (`overlayfs`, `native`).
    pub(crate) snapshotters:
        Arc<std::collections::BTreeMap<String, Arc<dyn berth_snapshot::Snapshotter>>>,
    pub(crate) meta: sled::Tree,
    pub(crate) namespaces: sled::Tree,
    /// Guards namespace deletion against concurrent creation of objects in that namespace:
    /// deleting takes it for writing, creating an object takes it for reading. A std lock because
    /// it is never held across an await.
    pub(crate) ns_guard: Arc<RwLock<()>>,
}

impl Store {
    /// Opens (or creates) the store under `root`: the database `root/meta.sled` (its schema
    /// version checked) and the blob store `root/content`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(root, Vec::new())
    }

    /// [`Store::open`], with more snapshotter backends (proxies to remote snapshotters) next to
    /// `overlayfs` and `native`.
    pub fn open_with(
        root: impl AsRef<Path>,
        extra: Vec<(String, Arc<dyn berth_snapshot::Snapshotter>)>,
    ) -> Result<Store, StoreError> {
        let root = root.as_ref();
        let blobs =
            ContentStore::open(&root.join("content")).map_err(crate::content::content_error)?;
        let db = sled::Config::new()
            .path(root.join("meta.sled"))
            .flush_every_ms(Some(500))
            .open()?;
        let meta = db.open_tree("meta")?;
        match meta.get(SCHEMA_KEY)? {
            None => {
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_string().as_bytes())?;
            }
            Some(v) => {
                let found = String::from_utf8_lossy(&v).into_owned();
                if found != SCHEMA_VERSION.to_string() {
                    return Err(StoreError::SchemaMismatch {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
        }
        let namespaces = db.open_tree("namespaces")?;
        for t in NAMESPACED_TREES {
            db.open_tree(t)?;
        }
        let mut snapshotters: std::collections::BTreeMap<
            String,
            Arc<dyn berth_snapshot::Snapshotter>,
        > = std::collections::BTreeMap::new();
        snapshotters.insert(
            "overlayfs".into(),
            Arc::new(berth_snapshot::Overlay::new(
                root.join("snapshots/overlayfs"),
            )),
        );
        snapshotters.insert(
            "native".into(),
            Arc::new(berth_snapshot::Native::new(root.join("snapshots/native"))),
        );
        for (name, b) in extra {
            snapshotters.insert(name, b);
        }
        let store = Store {
            db,
            blobs,
            gc_lock: Arc::new(RwLock::new(())),
            snapshotters: Arc::new(snapshotters),
            meta,
            namespaces,
            ns_guard: Arc::new(RwLock::new(())),
        };
        store.repair()?;
        store.db.flush()?;
        Ok(store)
    }

    /// Waits until every change so far is on disk (sled's flush: the log is synced).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Flushes synchronously; for shutdown paths outside an async runtime.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Drops what a crash can leave half-done: content records whose blob is not on disk,
    /// snapshot records whose directory is gone, and snapshot directories no record names.
    /// (Blobs without records are the garbage collector's.)
    fn repair(&self) -> Result<(), StoreError> {
        let snapshots = self.db.open_tree("snapshots")?;
        for kv in snapshots.iter() {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let sn = key.split('/').nth(1).unwrap_or("");
            let rec: Option<crate::snapshots::Record> = serde_json::from_slice(&v).ok();
            let present = match (self.snapshotters.get(sn), &rec) {
                (Some(b), Some(r)) => b.exists(&r.id),
                // A snapshotter not configured now (a proxy left out of the config): keep its
                // records for when it comes back.
                (None, Some(_)) => true,
                (_, None) => false,
            };
            if !present {
                tracing::warn!(record = %key, "removing a snapshot record whose directory is missing");
                snapshots.remove(&k)?;
            }
        }
        for (sn, backend) in self.snapshotters.iter() {
            backend.empty_trash();
            let n = match self.cleanup_snapshots(sn) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(snapshotter = %sn, error = %e, "snapshot cleanup at start-up");
                    0
                }
            };
            if n > 0 {
                tracing::warn!(snapshotter = %sn, removed = n, "removed snapshot directories without records");
            }
        }
        let content = self.db.open_tree("content")?;
        for k in content.iter().keys() {
            let k = k?;
            let Some(slash) = k.iter().position(|&b| b == b'/') else {
                continue;
            };
            let id = String::from_utf8_lossy(&k[slash + 1..]).into_owned();
            let missing = match berth_content::Digest::parse(&id) {
                Ok(d) => !self.blobs.exists(&d),
                Err(_) => true,
            };
            if missing {
                tracing::warn!(record = %String::from_utf8_lossy(&k), "removing a content record whose blob is missing");
                content.remove(&k)?;
            }
        }
        Ok(())
    }

    /// The blob store.
    pub fn blobs(&self) -> &ContentStore {
        &self.blobs
    }

    pub(crate) fn gc_read(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gc_lock.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn gc_write(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gc_lock.write().unwrap_or_else(|e| e.into_inner())
    }

    /// This daemon's identity: a UUID generated on first start and kept for its lifetime.
    pub fn server_uuid(&self) -> Result<String, StoreError> {
        if let Some(v) = self.meta.get(UUID_KEY)? {
            let s = String::from_utf8_lossy(&v).into_owned();
            if uuid::Uuid::parse_str(&s).is_ok() {
                return Ok(s);
            }
        }
        let fresh = uuid::Uuid::new_v4().to_string();
        // Another caller may race us: keep whichever UUID landed first.
        match self
            .meta
            .compare_and_swap(UUID_KEY, None as Option<&[u8]>, Some(fresh.as_bytes()))?
        {
            Ok(()) => {
                self.db.flush()?;
                Ok(fresh)
            }
            Err(_) => {
                let v = self.meta.get(UUID_KEY)?.unwrap_or_default();
                Ok(String::from_utf8_lossy(&v).into_owned())
            }
        }
    }
}

/// Re-opens a store just closed in this process: sled's background flusher may hold the file
/// lock for a moment after the last handle is dropped.
/// Opens the store at `root` again, waiting (up to 5 s) for the lock a dropped `Store` holds
/// until sled's background threads let go of the database file.
#[cfg(test)]
pub(crate) fn open_when_unlocked(root: &Path) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(root) {
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
pub(crate) fn reopen(root: &Path) -> Store {
    open_when_unlocked(root).unwrap_or_else(|e| panic!("reopening the store: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = {
            let s = Store::open(dir.path()).unwrap();
            s.server_uuid().unwrap()
        };
        let s = reopen(dir.path());
        assert_eq!(s.server_uuid().unwrap(), a);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn schema_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.meta.insert(SCHEMA_KEY, b"99".as_ref()).unwrap();
            s.db.flush().unwrap();
        }
        match open_when_unlocked(dir.path()) {
            Err(StoreError::SchemaMismatch { found, .. }) => assert_eq!(found, "99"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
