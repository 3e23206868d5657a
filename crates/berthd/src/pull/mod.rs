//! Server-side pulls: resolve a reference, fetch its index, manifest and config, then download
//! every layer in parallel (bounded) while it is decompressed and applied into a snapshot and
//! written to the content store, all in one pass over the bytes.
//!
//! Layers of a snapshotter with independent layers (overlayfs) are applied into parentless
//! snapshots at once and chained at commit, each after the one below it; a layer that needs
//! its lower layers to apply (a parent directory it does not list, a hard link to a lower file)
//! and layers of other snapshotters are applied onto the mounted parent, in order. No snapshot
//! is committed before its uncompressed digest has matched the config's diff id.
//!
//! Everything a pull creates is held by a lease labelled `berth.io/pull` until the image record
//! holds it; leases of pulls that died with a previous daemon are removed at start-up, and GC
//! then removes what they held, except partial downloads, which stay (for 24 hours) so the next
//! pull resumes them with a Range request.

use berth_store::Sharing;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_image::media::{
    PlatformSpec, chain_ids, config_diff_ids, is_index, manifest_parts, select_manifest,
};
use berth_image::registry::{Registry, Repository, Session};
use berth_image::{Descriptor as ImgDesc, ImageRef, Whiteouts};
use berth_store::{Digest, Image, NewSnapshot, SnapshotKind, Store, StoreError};
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::errors::PullError;
use crate::events::Exchange;
use crate::gc::Collector;
use crate::mount::Mounted;

mod layer;
use layer::Layer;
mod push;

/// Label on the leases pulls take.
pub(crate) const PULL_LEASE_LABEL: &str = "berth.io/pull";
const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";

/// One progress report: what (`name`), what is happening to it (`event`), how far.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) event: String,
    pub(crate) name: String,
    pub(crate) parents: Vec<String>,
    pub(crate) progress: i64,
    pub(crate) total: i64,
    pub(crate) desc: Option<ImgDesc>,
}

/// Where progress goes (nowhere if `None`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgressSink(Option<mpsc::UnboundedSender<Progress>>);

impl ProgressSink {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Progress>) -> Self {
        ProgressSink(Some(tx))
    }

    fn send(&self, event: &str, name: &str, progress: i64, total: i64, desc: Option<&ImgDesc>) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(Progress {
                event: event.to_string(),
                name: name.to_string(),
                parents: Vec::new(),
                progress,
                total,
                desc: desc.cloned(),
            });
        }
    }
}

/// What to pull, and where to.
#[derive(Debug, Clone)]
pub(crate) struct PullSpec {
    pub(crate) ns: String,
    pub(crate) reference: ImageRef,
    /// The image record's name (the reference as given, normalised).
    pub(crate) name: String,
    pub(crate) platform: PlatformSpec,
    /// Unpack into this snapshotter, or only fetch.
    pub(crate) snapshotter: Option<String>,
    pub(crate) session: Session,
    pub(crate) labels: HashMap<String, String>,
}

/// Pulls images; shared by the Transfer service and anything else that pulls.
#[derive(Debug, Clone)]
pub(crate) struct Puller {
    store: Store,
    registry: Registry,
    events: Arc<Exchange>,
    gc: Collector,
    mounts_dir: PathBuf,
    parallel: usize,
    /// Layers being fetched or unpacked, so that concurrent pulls wait instead of doubling work.
    flights: Arc<Mutex<HashMap<String, watch::Receiver<bool>>>>,
}

/// Deletes the pull's lease when the pull ends, however it ends.
struct LeaseGuard {
    store: Store,
    gc: Collector,
    ns: String,
    id: String,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let _ = self.store.delete_lease(&self.ns, &self.id);
        self.gc.schedule();
    }
}

/// Leaves a flight (waking waiters) when dropped.
struct Flight {
    flights: Arc<Mutex<HashMap<String, watch::Receiver<bool>>>>,
    key: String,
    tx: watch::Sender<bool>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        let _ = self.tx.send(true);
    }
}

use crate::pool::blocking;

struct Ctx {
    ns: String,
    lease: String,
    repo: Repository,
    snapshotter: Option<String>,
    source_label: (String, String),
    progress: ProgressSink,
    permits: Arc<Semaphore>,
}

impl Puller {
    pub(crate) fn new(
        store: Store,
        registry: Registry,
        events: Arc<Exchange>,
        gc: Collector,
        mounts_dir: PathBuf,
        parallel: usize,
    ) -> Self {
        Puller {
            store,
            registry,
            events,
            gc,
            mounts_dir,
            parallel: parallel.max(1),
            flights: Arc::default(),
        }
    }

    /// Whether `sn` is a configured snapshotter.
    pub(crate) fn check_snapshotter(&self, sn: &str) -> Result<(), PullError> {
        self.store
            .snapshotter(sn)
            .map(|_| ())
            .map_err(PullError::Store)
    }

    /// Removes the leases of pulls that died with a previous daemon (run at start-up).
    pub(crate) fn remove_stale_leases(store: &Store) -> Result<usize, StoreError> {
        let mut n = 0;
        for ns in store.list_namespaces()? {
            for l in store.list_leases(&ns.name)? {
                if l.labels.contains_key(PULL_LEASE_LABEL) {
                    store.delete_lease(&ns.name, &l.id)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Pulls `spec`; returns the image record.
    pub(crate) async fn pull(
        &self,
        spec: PullSpec,
        progress: ProgressSink,
    ) -> Result<Image, PullError> {
        let ns = spec.ns.clone();
        let lease = format!(
            "pull-{}",
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..16)
                .unwrap_or("0")
        );
        self.store
            .create_lease(
                &ns,
                &lease,
                HashMap::from([(PULL_LEASE_LABEL.to_string(), spec.name.clone())]),
            )
            .map_err(PullError::Store)?;
        let _guard = LeaseGuard {
            store: self.store.clone(),
            gc: self.gc.clone(),
            ns: ns.clone(),
            id: lease.clone(),
        };
        let repo = self
            .registry
            .repository(&spec.reference, &spec.session)
            .map_err(PullError::Registry)?;
        progress.send("resolving", &spec.name, 0, 0, None);
        let root = repo.resolve().await.map_err(PullError::Registry)?;
        progress.send("resolved", &spec.name, 0, 0, Some(&root));
        let ctx = Ctx {
            ns: ns.clone(),
            lease: lease.clone(),
            repo,
            snapshotter: spec.snapshotter.clone(),
            source_label: (
                format!(
                    "containerd.io/distribution.source.{}",
                    spec.reference.domain
                ),
                spec.reference.path.clone(),
            ),
            progress: progress.clone(),
            permits: Arc::new(Semaphore::new(self.parallel)),
        };

        let root_bytes = self.small_blob(&ctx, &root).await?;
        let (manifest, manifest_bytes) = if is_index(&root.media_type) {
            let m = select_manifest(&root_bytes, &spec.platform)
                .map_err(|e| PullError::Image("index".to_string(), e))?
                .ok_or_else(|| {
                    PullError::NoMatch(format!(
                        "{}: no manifest for platform {} in the index",
                        spec.name, spec.platform
                    ))
                })?;
            let bytes = self.small_blob(&ctx, &m).await?;
            // The index keeps the chosen manifest alive (containerd numbers all children).
            let pos = index_position(&root_bytes, &m.digest);
            self.label(
                &ns,
                &root.digest,
                [(
                    format!("containerd.io/gc.ref.content.m.{pos}"),
                    m.digest.to_string(),
                )],
            )?;
            (m, bytes)
        } else {
            (root.clone(), root_bytes)
        };
        let (config, layers) = manifest_parts(&manifest_bytes)
            .map_err(|e| PullError::Image("manifest".to_string(), e))?;
        let config_bytes = self.small_blob(&ctx, &config).await?;
        let diff_ids = config_diff_ids(&config_bytes)
            .map_err(|e| PullError::Image("config".to_string(), e))?;
        if diff_ids.len() != layers.len() {
            return Err(PullError::BadContent(format!(
                "{}: the config lists {} diff ids for {} layers",
                manifest.digest,
                diff_ids.len(),
                layers.len()
            )));
        }
        let mut refs = vec![(
            "containerd.io/gc.ref.content.config".to_string(),
            config.digest.to_string(),
        )];
        for (i, l) in layers.iter().enumerate() {
            refs.push((
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.to_string(),
            ));
        }
        self.label(&ns, &manifest.digest, refs)?;

        let chain = chain_ids(&diff_ids);
        let mut jobs = Vec::new();
        let mut below: Option<watch::Receiver<bool>> = None;
        for (i, desc) in layers.iter().enumerate() {
            let (tx, rx) = watch::channel(false);
            jobs.push(Layer {
                desc: desc.clone(),
                diff_id: diff_ids[i].clone(),
                chain: chain[i].clone(),
                parent: i.checked_sub(1).map(|p| chain[p].clone()),
                below: below.take(),
                done: tx,
            });
            below = Some(rx);
        }
        let ctx = Arc::new(ctx);
        let mut set = tokio::task::JoinSet::new();
        for job in jobs {
            let me = self.clone();
            let ctx = ctx.clone();
            set.spawn(async move { me.layer(&ctx, job).await });
        }
        while let Some(r) = set.join_next().await {
            let r = r.map_err(|e| PullError::Internal(format!("layer task: {e}")))?;
            if let Err(e) = r {
                set.abort_all();
                return Err(e);
            }
        }
        if let (Some(sn), Some(top)) = (&spec.snapshotter, chain.last()) {
            self.label(
                &ns,
                &config.digest,
                [(
                    format!("containerd.io/gc.ref.snapshot.{sn}"),
                    top.to_string(),
                )],
            )?;
        }

        let img = Image {
            name: spec.name.clone(),
            labels: spec.labels.clone(),
            target: berth_store::Descriptor {
                media_type: root.media_type.clone(),
                digest: root.digest.to_string(),
                size: root.size,
                annotations: Default::default(),
            },
            created_at: Default::default(),
            updated_at: Default::default(),
        };
        let (img, created) = match self.store.create_image(&ns, img.clone()) {
            Ok(i) => (i, true),
            Err(StoreError::AlreadyExists(_)) => (
                self.store
                    .update_image(&ns, img, &["target".into(), "labels".into()])
                    .map_err(PullError::Store)?,
                false,
            ),
            Err(e) => return Err(PullError::Store(e)),
        };
        self.store.flush().await.map_err(PullError::Store)?;
        use berth_api::containerd::services::images::v1::{ImageCreate, ImageUpdate};
        if created {
            self.events.publish(
                &ns,
                "/images/create",
                &ImageCreate {
                    name: img.name.clone(),
                    labels: img.labels.clone(),
                },
            );
        } else {
            self.events.publish(
                &ns,
                "/images/update",
                &ImageUpdate {
                    name: img.name.clone(),
                    labels: img.labels.clone(),
                },
            );
        }
        progress.send("saved", &spec.name, 0, 0, Some(&root));
        Ok(img)
    }

    /// Adds labels to a blob record.
    fn label(
        &self,
        ns: &str,
        d: &Digest,
        labels: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), PullError> {
        let labels: HashMap<String, String> = labels.into_iter().collect();
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.store
            .content_update(ns, d, &labels, &paths)
            .map_err(PullError::Store)?;
        Ok(())
    }

    /// Fetches a manifest, index or config (from the store if present), stores it, returns it.
    async fn small_blob(&self, ctx: &Ctx, desc: &ImgDesc) -> Result<Bytes, PullError> {
        if self.store.content_info(&ctx.ns, &desc.digest).is_ok() {
            self.hold(ctx, "content", desc.digest.as_str())?;
            let bytes = self.read_small(&ctx.ns, &desc.digest).await?;
            ctx.progress.send(
                "exists",
                desc.digest.as_str(),
                desc.size,
                desc.size,
                Some(desc),
            );
            return Ok(bytes);
        }
        let bytes = ctx
            .repo
            .fetch_manifest(desc)
            .await
            .map_err(PullError::Registry)?;
        let kind = if is_index(&desc.media_type) {
            "index"
        } else if berth_image::media::is_manifest(&desc.media_type) {
            "manifest"
        } else {
            "config"
        };
        let store = self.store.clone();
        let (ns, lease) = (ctx.ns.clone(), ctx.lease.clone());
        let (d, b) = (desc.digest.clone(), bytes.clone());
        let labels = HashMap::from([ctx.source_label.clone()]);
        blocking(move || {
            let r = format!("{kind}-{d}");
            let open = || {
                store.content_writer(
                    &ns,
                    &r,
                    Some(b.len() as i64),
                    Some(d.clone()),
                    Some(&lease),
                    Sharing::Adopt,
                )
            };
            // Another pull writing the same document holds the ingest: wait for it (as
            // containerd's clients retry a locked ref); it then answers AlreadyExists.
            let mut writer = open();
            for _ in 0..300 {
                if !matches!(writer, Err(StoreError::Unavailable(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
                writer = open();
            }
            match writer {
                Ok(mut w) => {
                    w.inner()
                        .write_at(0, &b)
                        .map_err(|e| PullError::Store(berth_store::content_error(e)))?;
                    match store.content_commit(w, b.len() as i64, Some(d), &labels) {
                        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
                        Err(e) => Err(PullError::Store(e)),
                    }
                }
                Err(StoreError::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(PullError::Store(e)),
            }
        })
        .await?;
        ctx.progress.send(
            "complete",
            desc.digest.as_str(),
            desc.size,
            desc.size,
            Some(desc),
        );
        Ok(bytes)
    }

    fn has_snapshot(&self, ns: &str, sn: &str, name: &str) -> bool {
        self.store
            .stat_snapshot(ns, sn, name)
            .is_ok_and(|i| i.kind == SnapshotKind::Committed)
    }

    /// Joins the flight for `key`: `None` if another pull is doing it (after waiting for it).
    async fn join_flight(&self, key: String) -> Option<Flight> {
        loop {
            let waiting = {
                let mut f = self.flights.lock().unwrap_or_else(|e| e.into_inner());
                match f.get(&key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(false);
                        f.insert(key.clone(), rx);
                        return Some(Flight {
                            flights: self.flights.clone(),
                            key,
                            tx,
                        });
                    }
                }
            };
            let mut w = waiting;
            let _ = w.wait_for(|done| *done).await;
            // Loop: the other pull is done (or failed, in which case we take over).
            if !self
                .flights
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&key)
            {
                return None;
            }
        }
    }

    /// Puts an existing resource under the pull's lease, so GC keeps it until the image does.
    fn hold(&self, ctx: &Ctx, kind: &str, id: &str) -> Result<(), PullError> {
        match self.store.add_lease_resource(
            &ctx.ns,
            &ctx.lease,
            &berth_store::Resource {
                id: id.to_string(),
                r#type: kind.to_string(),
            },
        ) {
            Ok(()) | Err(StoreError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(PullError::Store(e)),
        }
    }

    async fn read_small(&self, ns: &str, d: &Digest) -> Result<Bytes, PullError> {
        let r = self.store.content_reader(ns, d).map_err(PullError::Store)?;
        if r.size() > berth_image::registry::MANIFEST_LIMIT {
            return Err(PullError::Incomplete(format!(
                "{d}: too large for a manifest"
            )));
        }
        blocking(move || {
            let mut buf = vec![0u8; r.size() as usize];
            let mut off = 0;
            while off < buf.len() {
                let n = r
                    .read_at(off as u64, &mut buf[off..])
                    .map_err(|e| PullError::Internal(e.to_string()))?;
                if n == 0 {
                    break;
                }
                off += n;
            }
            Ok(Bytes::from(buf))
        })
        .await
    }
}

/// The position of `d` among an index's manifests (0 if absent).
fn index_position(index: &[u8], d: &Digest) -> usize {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Entry>,
    }
    serde_json::from_slice::<Index>(index)
        .ok()
        .and_then(|i| i.manifests.iter().position(|e| e.digest == d.as_str()))
        .unwrap_or(0)
}
