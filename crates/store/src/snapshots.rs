//! Snapshots per namespace: names, parents, kinds and labels here; directories and mounts in the
//! backend snapshotters (`berth-snapshot`). A snapshot's backend id never changes, so a commit
//! only renames the record.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use berth_snapshot::{Kind, Mount, Snapshotter, Usage};
use serde::{Deserialize, Serialize};

use crate::leases::Resource;
use crate::records::{decode, encode, list};
use crate::time::Timestamp;
use crate::{Store, StoreError, labels};

const TREE: &str = "snapshots";

/// What `Prepare` and `View` ask for.
#[derive(Debug, Clone)]
pub struct NewSnapshot<'a> {
    /// The new snapshot's key.
    pub key: &'a str,
    /// Its committed parent, or empty.
    pub parent: &'a str,
    /// Active or view.
    pub kind: Kind,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Lease to attach it to.
    pub lease: Option<&'a str>,
}

/// A snapshot as `Snapshots.Stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its key or committed name.
    pub name: String,
    /// The parent's name, or empty.
    pub parent: String,
    /// View, active or committed.
    pub kind: Kind,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    kind: u8,
    pub(crate) parent: String,
    #[serde(default)]
    pub(crate) labels: HashMap<String, String>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

fn kind_of(k: u8) -> Kind {
    match k {
        0 => Kind::View,
        1 => Kind::Active,
        _ => Kind::Committed,
    }
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::View => 0,
        Kind::Active => 1,
        Kind::Committed => 2,
    }
}

/// `<ns>/<snapshotter>/<name>`: snapshotter names have no `/`, so the prefix is unambiguous.
fn skey(ns: &str, sn: &str, name: &str) -> Vec<u8> {
    format!("{ns}/{sn}/{name}").into_bytes()
}

fn info(name: String, r: &Record) -> SnapshotInfo {
    SnapshotInfo {
        name,
        parent: r.parent.clone(),
        kind: kind_of(r.kind),
        labels: r.labels.clone(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

impl Store {
    fn snapshots(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// The backend named `sn`.
    pub fn snapshotter(&self, sn: &str) -> Result<&Arc<dyn Snapshotter>, StoreError> {
        self.snapshotters
            .get(sn)
            .ok_or_else(|| StoreError::NotFound(format!("snapshotter {sn:?}")))
    }

    /// Every backend, by name.
    pub fn snapshotters(&self) -> impl Iterator<Item = &Arc<dyn Snapshotter>> {
        self.snapshotters.values()
    }

    pub(crate) fn snapshot_record(
        &self,
        ns: &str,
        sn: &str,
        name: &str,
    ) -> Result<Option<Record>, StoreError> {
        let k = skey(ns, sn, name);
        match self.snapshots()?.get(&k)? {
            Some(v) => Ok(Some(decode(TREE, &k, &v)?)),
            None => Ok(None),
        }
    }

    fn get_snapshot(&self, ns: &str, sn: &str, name: &str) -> Result<Record, StoreError> {
        self.snapshot_record(ns, sn, name)?
            .ok_or_else(|| StoreError::NotFound(format!("snapshot {name:?}")))
    }

    /// Backend ids of `parent` and its ancestors, nearest first.
    fn chain(&self, ns: &str, sn: &str, parent: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut next = parent.to_string();
        while !next.is_empty() {
            let r = self.get_snapshot(ns, sn, &next)?;
            out.push(r.id.clone());
            next = r.parent;
            if out.len() > 1024 {
                return Err(StoreError::FailedPrecondition(
                    "snapshot parent chain too long".into(),
                ));
            }
        }
        Ok(out)
    }

    /// Creates an active (or view) snapshot over a committed parent; returns its mounts.
    pub fn prepare_snapshot(
        &self,
        ns: &str,
        sn: &str,
        new: NewSnapshot<'_>,
    ) -> Result<Vec<Mount>, StoreError> {
        let NewSnapshot {
            key,
            parent,
            kind,
            labels: snapshot_labels,
            lease,
        } = new;
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("key: must not be empty".into()));
        }
        labels::validate(&snapshot_labels)?;
        let backend = self.snapshotter(sn)?.clone();
        if let Some(l) = lease {
            self.get_lease(ns, l)?;
        }
        let _gc = self.gc_read();
        let _ns = self.hold_namespace(ns)?;
        if !parent.is_empty() {
            let p = self.snapshot_record(ns, sn, parent)?.ok_or_else(|| {
                StoreError::NotFound(format!("parent snapshot {parent:?} does not exist"))
            })?;
            if kind_of(p.kind) != Kind::Committed {
                return Err(StoreError::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
        }
        let parents = self.chain(ns, sn, parent)?;
        let id = self.db.generate_id()?.to_string();
        let now = Timestamp::now();
        let rec = Record {
            id: id.clone(),
            kind: kind_code(kind),
            parent: parent.to_string(),
            labels: snapshot_labels,
            created_at: now,
            updated_at: now,
        };
        // Record first (so a crash leaves a record the start-up repair can see), then directories.
        if self
            .snapshots()?
            .compare_and_swap(skey(ns, sn, key), None as Option<&[u8]>, Some(encode(&rec)))?
            .is_err()
        {
            return Err(StoreError::AlreadyExists(format!("snapshot {key:?}")));
        }
        if let Err(e) = backend.create(&id, kind, &parents) {
            self.snapshots()?.remove(skey(ns, sn, key))?;
            let _ = backend.remove(&id);
            return Err(StoreError::Content(e.to_string()));
        }
        if let Some(l) = lease {
            self.add_lease_resource_locked(
                ns,
                l,
                &Resource {
                    id: key.to_string(),
                    r#type: format!("snapshots/{sn}"),
                },
            )?;
        }
        backend
            .mounts(&id, kind, &parents)
            .map_err(|e| StoreError::Content(e.to_string()))
    }

    /// The mounts of an active snapshot or view.
    pub fn snapshot_mounts(&self, ns: &str, sn: &str, key: &str) -> Result<Vec<Mount>, StoreError> {
        let backend = self.snapshotter(sn)?;
        let r = self.get_snapshot(ns, sn, key)?;
        let kind = kind_of(r.kind);
        if kind == Kind::Committed {
            return Err(StoreError::FailedPrecondition(format!(
                "snapshot {key:?} is committed; it has no mounts"
            )));
        }
        let parents = self.chain(ns, sn, &r.parent)?;
        backend
            .mounts(&r.id, kind, &parents)
            .map_err(|e| StoreError::Content(e.to_string()))
    }

    /// The directory an active snapshot's own changes go to (the overlay upper directory).
    pub fn snapshot_dir(&self, ns: &str, sn: &str, key: &str) -> Result<PathBuf, StoreError> {
        let backend = self.snapshotter(sn)?;
        let r = self.get_snapshot(ns, sn, key)?;
        Ok(backend.fs(&r.id))
    }

    /// Commits the active snapshot `key` as `name`.
    pub fn commit_snapshot(
        &self,
        ns: &str,
        sn: &str,
        name: &str,
        key: &str,
        new_labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<(), StoreError> {
        self.commit_snapshot_onto(ns, sn, name, key, None, new_labels, lease)
    }

    /// [`Store::commit_snapshot`], and for a parentless active snapshot of a snapshotter with
    /// independent layers, gives it `parent` (a committed snapshot) as it is committed: layers
    /// applied in parallel are chained this way, each once the one below it is committed.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_snapshot_onto(
        &self,
        ns: &str,
        sn: &str,
        name: &str,
        key: &str,
        parent: Option<&str>,
        new_labels: HashMap<String, String>,
        lease: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Some(p) = parent.filter(|p| !p.is_empty()) {
            if !self.snapshotter(sn)?.independent_layers() {
                return Err(StoreError::FailedPrecondition(format!(
                    "snapshotter {sn} cannot re-parent a snapshot"
                )));
            }
            let pr = self.get_snapshot(ns, sn, p)?;
            if kind_of(pr.kind) != Kind::Committed {
                return Err(StoreError::FailedPrecondition(format!(
                    "parent {p:?} is not a committed snapshot"
                )));
            }
        }
        if name.is_empty() {
            return Err(StoreError::InvalidArgument(
                "name: must not be empty".into(),
            ));
        }
        labels::validate(&new_labels)?;
        let backend = self.snapshotter(sn)?.clone();
        let _gc = self.gc_read();
        let tree = self.snapshots()?;
        let (from, to) = (skey(ns, sn, key), skey(ns, sn, name));
        // The backend first (a remote snapshotter freezes its copy), once the commit is known
        // to be possible.
        let current = self.get_snapshot(ns, sn, key)?;
        if kind_of(current.kind) != Kind::Active {
            return Err(StoreError::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        if tree.get(&to)?.is_some() {
            return Err(StoreError::AlreadyExists(format!("snapshot {name:?}")));
        }
        backend
            .commit(&current.id)
            .map_err(|e| StoreError::Content(e.to_string()))?;
        tree.transaction(|tx| {
            use sled::transaction::ConflictableTransactionError::Abort;
            let mut r: Record = match tx.get(&from)? {
                Some(v) => decode(TREE, &from, &v).map_err(Abort)?,
                None => return Err(Abort(StoreError::NotFound(format!("snapshot {key:?}")))),
            };
            if kind_of(r.kind) != Kind::Active {
                return Err(Abort(StoreError::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                ))));
            }
            if tx.get(&to)?.is_some() {
                return Err(Abort(StoreError::AlreadyExists(format!(
                    "snapshot {name:?}"
                ))));
            }
            if let Some(p) = parent.filter(|p| !p.is_empty()) {
                if !r.parent.is_empty() {
                    return Err(Abort(StoreError::FailedPrecondition(format!(
                        "snapshot {key:?} already has a parent"
                    ))));
                }
                r.parent = p.to_string();
            }
            r.kind = kind_code(Kind::Committed);
            if !new_labels.is_empty() {
                r.labels = new_labels.clone();
            }
            // A committed snapshot is made at its commit: created and updated are that time
            // (containerd's metadata store does so; clients compare the two).
            r.updated_at = Timestamp::now();
            r.created_at = r.updated_at;
            tx.remove(from.as_slice())?;
            tx.insert(to.as_slice(), encode(&r))?;
            Ok(())
        })?;
        if let Some(l) = lease {
            self.add_lease_resource_locked(
                ns,
                l,
                &Resource {
                    id: name.to_string(),
                    r#type: format!("snapshots/{sn}"),
                },
            )?;
        }
        Ok(())
    }

    /// Removes a snapshot that has no children, and its directories.
    pub fn remove_snapshot(&self, ns: &str, sn: &str, key: &str) -> Result<(), StoreError> {
        let backend = self.snapshotter(sn)?.clone();
        let r = self.get_snapshot(ns, sn, key)?;
        let children = list::<Record>(&self.snapshots()?, TREE, &format!("{ns}/{sn}"))?;
        if let Some((child, _)) = children.iter().find(|(_, c)| c.parent == key) {
            return Err(StoreError::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: snapshot {child:?} depends on it"
            )));
        }
        self.snapshots()?.remove(skey(ns, sn, key))?;
        backend
            .remove(&r.id)
            .map_err(|e| StoreError::Content(e.to_string()))
    }

    /// Info about a snapshot.
    pub fn stat_snapshot(&self, ns: &str, sn: &str, key: &str) -> Result<SnapshotInfo, StoreError> {
        self.snapshotter(sn)?;
        Ok(info(key.to_string(), &self.get_snapshot(ns, sn, key)?))
    }

    /// Every snapshot of `sn` in `ns`.
    pub fn list_snapshots(&self, ns: &str, sn: &str) -> Result<Vec<SnapshotInfo>, StoreError> {
        self.snapshotter(sn)?;
        Ok(
            list::<Record>(&self.snapshots()?, TREE, &format!("{ns}/{sn}"))?
                .into_iter()
                .map(|(name, r)| info(name, &r))
                .collect(),
        )
    }

    /// Updates labels (`labels`, `labels.<k>`; no paths replaces them).
    pub fn update_snapshot(
        &self,
        ns: &str,
        sn: &str,
        name: &str,
        new_labels: &HashMap<String, String>,
        paths: &[String],
    ) -> Result<SnapshotInfo, StoreError> {
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(StoreError::InvalidArgument(format!(
                    "cannot update {p:?} field on snapshot {name:?}"
                )));
            }
        }
        self.snapshotter(sn)?;
        let _gc = self.gc_read();
        let k = skey(ns, sn, name);
        let r = self.snapshots()?.transaction(|tx| {
            use sled::transaction::ConflictableTransactionError::Abort;
            let mut r: Record = match tx.get(&k)? {
                Some(v) => decode(TREE, &k, &v).map_err(Abort)?,
                None => return Err(Abort(StoreError::NotFound(format!("snapshot {name:?}")))),
            };
            labels::apply_paths(&mut r.labels, new_labels, paths, true);
            labels::validate(&r.labels).map_err(Abort)?;
            r.updated_at = Timestamp::now();
            tx.insert(k.as_slice(), encode(&r))?;
            Ok(r)
        })?;
        Ok(info(name.to_string(), &r))
    }

    /// Disk usage of a snapshot's own layer.
    pub fn snapshot_usage(&self, ns: &str, sn: &str, key: &str) -> Result<Usage, StoreError> {
        let backend = self.snapshotter(sn)?;
        let r = self.get_snapshot(ns, sn, key)?;
        backend
            .usage(&r.id)
            .map_err(|e| StoreError::Content(e.to_string()))
    }

    /// Removes directories of `sn` that no record in any namespace names.
    pub fn cleanup_snapshots(&self, sn: &str) -> Result<usize, StoreError> {
        let backend = self.snapshotter(sn)?.clone();
        let _gc = self.gc_write();
        let mut known = std::collections::HashSet::new();
        for kv in self.snapshots()?.iter() {
            let (k, v) = kv?;
            let r: Record = decode(TREE, &k, &v)?;
            known.insert(r.id);
        }
        let mut removed = 0;
        for id in backend
            .ids_on_disk()
            .map_err(|e| StoreError::Content(e.to_string()))?
        {
            if !known.contains(&id) {
                backend
                    .remove(&id)
                    .map_err(|e| StoreError::Content(e.to_string()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(key: &str, parent: &str) -> NewSnapshot<'static> {
        let (key, parent) = (
            Box::leak(key.to_string().into_boxed_str()),
            Box::leak(parent.to_string().into_boxed_str()),
        );
        NewSnapshot {
            key,
            parent,
            kind: Kind::Active,
            labels: HashMap::new(),
            lease: None,
        }
    }

    #[test]
    fn repair_drops_half_made_snapshots() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            s.prepare_snapshot("ns", "overlayfs", new("a", "")).unwrap();
            s.commit_snapshot("ns", "overlayfs", "a-c", "a", HashMap::new(), None)
                .unwrap();
            s.prepare_snapshot("ns", "overlayfs", new("b", "a-c"))
                .unwrap();
            s.prepare_snapshot("ns", "native", new("n", "")).unwrap();
            // As if a crash came between the record and its directory...
            let id = s
                .snapshot_record("ns", "overlayfs", "b")
                .unwrap()
                .unwrap()
                .id;
            std::fs::remove_dir_all(d.path().join("snapshots/overlayfs/snapshots").join(id))
                .unwrap();
            // ... and between a directory and its record.
            std::fs::create_dir_all(d.path().join("snapshots/native/snapshots/999/fs")).unwrap();
            s.flush_blocking().unwrap();
        }
        let s = crate::store::reopen(d.path());
        let names: Vec<_> = s
            .list_snapshots("ns", "overlayfs")
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["a-c"]);
        assert!(!d.path().join("snapshots/native/snapshots/999").exists());
        assert_eq!(s.list_snapshots("ns", "native").unwrap().len(), 1);
    }

    #[test]
    fn removed_snapshots_leave_at_once_and_the_trash_is_emptied() {
        let d = tempfile::tempdir().unwrap();
        let trash = d.path().join("snapshots/overlayfs/trash");
        {
            let s = Store::open(d.path()).unwrap();
            s.prepare_snapshot("ns", "overlayfs", new("a", "")).unwrap();
            let id = s
                .snapshot_record("ns", "overlayfs", "a")
                .unwrap()
                .unwrap()
                .id;
            let dir = d.path().join("snapshots/overlayfs/snapshots").join(&id);
            std::fs::write(dir.join("fs/file"), b"data").unwrap();
            s.remove_snapshot("ns", "overlayfs", "a").unwrap();
            assert!(!dir.exists(), "the directory is gone when Remove answers");
            // Deleted from the trash in the background.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read_dir(&trash).map(|r| r.count()).unwrap_or(0) > 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the trash was not emptied"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // As if a crash came before the background removal: emptied at the next start.
            std::fs::create_dir_all(trash.join("7-1-0/fs")).unwrap();
            s.flush_blocking().unwrap();
        }
        let _s = crate::store::reopen(d.path());
        assert!(!trash.exists());
    }
}
