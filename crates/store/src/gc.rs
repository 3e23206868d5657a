//! Garbage collection, containerd's model: mark everything reachable from the roots, sweep the
//! rest.
//!
//! Roots, per namespace: images (their targets and `containerd.io/gc.ref.content*` labels),
//! containers (their snapshot, and content and snapshots their labels reference),
//! unexpired leases (their resources), and content labelled `containerd.io/gc.root`. References
//! are followed through content labels `containerd.io/gc.ref.content` and
//! `containerd.io/gc.ref.content.<anything>`. Swept: expired leases, unreachable content records,
//! blobs no namespace references, and stale ingests no lease holds.
//!
//! Writers that add references (commits, image and label updates, lease resources) hold the GC
//! lock for reading; a collection holds it for writing, so it never sees a half-made reference.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use berth_content::Digest;

use crate::images::Image;
use crate::leases::{LABEL_FLAT, Lease};
use crate::records::list;
use crate::time::Timestamp;
use crate::{Store, StoreError};

/// Label making content a root.
pub const LABEL_ROOT: &str = "containerd.io/gc.root";
/// Prefix of labels referencing content.
pub const LABEL_REF_CONTENT: &str = "containerd.io/gc.ref.content";

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Expired leases deleted.
    pub leases: usize,
    /// Content records removed from namespaces.
    pub content_records: usize,
    /// Blob files deleted from disk.
    pub blobs: usize,
    /// Ingests removed.
    pub ingests: usize,
    /// Snapshots removed.
    pub snapshots: usize,
    /// Lease resource records whose lease was gone, removed (they hold nothing).
    pub lease_resources: usize,
    /// Time the store was locked.
    pub duration: Duration,
}

fn content_refs(labels: &HashMap<String, String>) -> impl Iterator<Item = Digest> + '_ {
    labels.iter().filter_map(|(k, v)| {
        let is_ref = k == LABEL_REF_CONTENT
            || k.strip_prefix(LABEL_REF_CONTENT)
                .is_some_and(|r| r.starts_with('.'));
        if is_ref { Digest::parse(v).ok() } else { None }
    })
}

impl Store {
    /// Runs one collection. Ingests untouched for `ingest_max_age` and held by no lease go too.
    pub fn collect_garbage(&self, ingest_max_age: Duration) -> Result<GcStats, StoreError> {
        let _gc = self.gc_write();
        let start = Instant::now();
        let mut stats = GcStats::default();
        let now = Timestamp::now();

        // Expired leases first: what only they held becomes unreachable in this same pass.
        for ns in self.list_namespaces()? {
            for lease in self.list_leases(&ns.name)? {
                if lease.expired(now) {
                    self.delete_lease(&ns.name, &lease.id)?;
                    stats.leases += 1;
                }
            }
        }

        // Resource records whose lease is gone (written by a store from before lease deletion
        // was one transaction, or added as the lease went) hold nothing: removed, not roots.
        let resources = {
            let mut live: HashSet<(String, String)> = HashSet::new();
            for ns in self.list_namespaces()? {
                for l in self.list_leases(&ns.name)? {
                    live.insert((ns.name.clone(), l.id));
                }
            }
            let (keep, orphans): (Vec<_>, Vec<_>) = self
                .all_lease_resources()?
                .into_iter()
                .partition(|(ns, lease, _)| live.contains(&(ns.clone(), lease.clone())));
            stats.lease_resources = self.remove_lease_resources(&orphans)?;
            keep
        };
        let content = self.db.open_tree("content")?;
        let mut leased_ingests: HashSet<String> = HashSet::new();
        let mut live_blobs: HashSet<Digest> = HashSet::new();
        for ns in self.list_namespaces()? {
            let ns = ns.name;
            let records: HashMap<Digest, HashMap<String, String>> =
                list::<ContentRecordLabels>(&content, "content", &ns)?
                    .into_iter()
                    .filter_map(|(id, r)| Digest::parse(&id).ok().map(|d| (d, r.labels)))
                    .collect();
            // (digest, follow its references)
            let mut queue: VecDeque<(Digest, bool)> = VecDeque::new();
            let containers = self.list_containers(&ns)?;
            for c in &containers {
                queue.extend(content_refs(&c.labels).map(|d| (d, true)));
            }
            for img in self.list_images(&ns)? {
                let Image { target, labels, .. } = img;
                if let Ok(d) = Digest::parse(&target.digest) {
                    queue.push_back((d, true));
                }
                queue.extend(content_refs(&labels).map(|d| (d, true)));
            }
            let leases: HashMap<String, Lease> = self
                .list_leases(&ns)?
                .into_iter()
                .map(|l| (l.id.clone(), l))
                .collect();
            for (rns, lease, r) in &resources {
                if *rns != ns {
                    continue;
                }
                let flat = leases
                    .get(lease)
                    .is_some_and(|l| l.labels.contains_key(LABEL_FLAT));
                match r.r#type.as_str() {
                    "content" => {
                        if let Ok(d) = Digest::parse(&r.id) {
                            queue.push_back((d, !flat));
                        }
                    }
                    "ingests" => {
                        leased_ingests.insert(format!("{ns}/{}", r.id));
                    }
                    _ => {}
                }
            }
            for (d, labels) in &records {
                if labels.get(LABEL_ROOT).is_some_and(|v| !v.is_empty()) {
                    queue.push_back((d.clone(), true));
                }
            }
            let mut marked: HashMap<Digest, bool> = HashMap::new();
            while let Some((d, follow)) = queue.pop_front() {
                match marked.get(&d) {
                    Some(true) => continue,
                    Some(false) if !follow => continue,
                    _ => {}
                }
                marked.insert(d.clone(), follow);
                if let Some(labels) = records.get(&d).filter(|_| follow) {
                    queue.extend(content_refs(labels).map(|c| (c, true)));
                }
            }
            stats.snapshots +=
                self.sweep_snapshots(&ns, &resources, &records, &marked, &containers)?;
            let mut batch = sled::Batch::default();
            for d in records.keys() {
                if marked.contains_key(d) {
                    live_blobs.insert(d.clone());
                } else {
                    batch.remove(crate::records::key(&ns, d.as_str()));
                    stats.content_records += 1;
                }
            }
            content.apply_batch(batch)?;
        }
        // Records in namespaces that no longer exist cannot be reached either; but a namespace
        // with content cannot be deleted, so every record belongs to a listed namespace.
        self.db.flush()?;

        for blob in self.blobs.list().map_err(crate::content::content_error)? {
            if !live_blobs.contains(&blob.digest) {
                match self.blobs.delete(&blob.digest) {
                    Ok(()) => stats.blobs += 1,
                    Err(berth_content::ContentError::NotFound(_)) => {}
                    Err(e) => return Err(crate::content::content_error(e)),
                }
            }
        }
        for st in self
            .blobs
            .list_statuses()
            .map_err(crate::content::content_error)?
        {
            if leased_ingests.contains(&st.r#ref) {
                continue;
            }
            let age = std::time::SystemTime::now()
                .duration_since(st.updated_at)
                .unwrap_or_default();
            if age >= ingest_max_age && self.blobs.abort(&st.r#ref).is_ok() {
                stats.ingests += 1;
            }
        }
        stats.duration = start.elapsed();
        Ok(stats)
    }
}

/// Prefix of labels referencing a snapshot: `containerd.io/gc.ref.snapshot.<snapshotter>[.<x>]`.
pub const LABEL_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

fn snapshot_refs<'a>(
    labels: &'a HashMap<String, String>,
    sn: &'a str,
) -> impl Iterator<Item = String> + 'a {
    labels.iter().filter_map(move |(k, v)| {
        let rest = k.strip_prefix(LABEL_REF_SNAPSHOT)?;
        let ok = rest == sn || rest.strip_prefix(sn).is_some_and(|r| r.starts_with('.'));
        ok.then(|| v.clone())
    })
}

impl Store {
    /// Marks and sweeps the snapshots of one namespace, for every snapshotter. Roots: leases,
    /// live content referencing them, and `containerd.io/gc.root`; parents are followed.
    fn sweep_snapshots(
        &self,
        ns: &str,
        resources: &[(String, String, crate::leases::Resource)],
        content: &HashMap<Digest, HashMap<String, String>>,
        live_content: &HashMap<Digest, bool>,
        containers: &[crate::containers::Container],
    ) -> Result<usize, StoreError> {
        let tree = self.db.open_tree("snapshots")?;
        let mut removed = 0;
        for (sn, backend) in self.snapshotters.iter() {
            let prefix = format!("{ns}/{sn}");
            let all: HashMap<String, crate::snapshots::Record> =
                list(&tree, "snapshots", &prefix)?.into_iter().collect();
            if all.is_empty() {
                continue;
            }
            let mut queue: Vec<String> = Vec::new();
            for (rns, _, r) in resources {
                if rns == ns && r.r#type == format!("snapshots/{sn}") {
                    queue.push(r.id.clone());
                }
            }
            for (d, labels) in content {
                if live_content.contains_key(d) {
                    queue.extend(snapshot_refs(labels, sn));
                }
            }
            for (name, r) in &all {
                if r.labels.get(LABEL_ROOT).is_some_and(|v| !v.is_empty()) {
                    queue.push(name.clone());
                }
            }
            // A container holds its root file system and what its labels reference.
            for c in containers {
                if c.snapshotter == *sn && !c.snapshot_key.is_empty() {
                    queue.push(c.snapshot_key.clone());
                }
                queue.extend(snapshot_refs(&c.labels, sn));
            }
            let mut marked = HashSet::new();
            while let Some(name) = queue.pop() {
                let Some(r) = all.get(&name) else { continue };
                if !marked.insert(name.clone()) {
                    continue;
                }
                if !r.parent.is_empty() {
                    queue.push(r.parent.clone());
                }
                queue.extend(snapshot_refs(&r.labels, sn));
            }
            for (name, r) in &all {
                if !marked.contains(name) {
                    tree.remove(format!("{prefix}/{name}").as_bytes())?;
                    backend
                        .remove(&r.id)
                        .map_err(|e| StoreError::Content(e.to_string()))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[derive(serde::Deserialize)]
struct ContentRecordLabels {
    #[serde(default)]
    labels: HashMap<String, String>,
}
