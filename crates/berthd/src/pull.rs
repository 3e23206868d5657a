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
use tonic::Status;

use crate::errors::to_status;
use crate::events::Exchange;
use crate::gc::Collector;
use crate::mount::Mounted;

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

fn registry_status(e: berth_image::registry::RegistryError) -> Status {
    use berth_image::registry::RegistryError as E;
    match &e {
        E::InvalidReference(_) => Status::invalid_argument(e.to_string()),
        E::Config(_) => Status::failed_precondition(e.to_string()),
        E::NotFound(_) => Status::not_found(e.to_string()),
        E::Unauthorized(_) => Status::permission_denied(e.to_string()),
        E::Status { .. } | E::Transport { .. } => Status::unavailable(e.to_string()),
        E::DigestMismatch { .. } | E::SizeMismatch { .. } | E::Invalid(_) => {
            Status::data_loss(e.to_string())
        }
    }
}

fn image_status(what: &str, e: berth_image::ImageError) -> Status {
    let mut msg = format!("{what}: {e}");
    let mut cur = std::error::Error::source(&e);
    while let Some(c) = cur {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cur = c.source();
    }
    Status::data_loss(msg)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    crate::services::blocking(f).await
}

/// Reads chunks from a channel as a byte stream (end of channel = end of stream).
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.cur = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

enum Chunk {
    Data(Bytes),
    End,
}

/// One layer's job.
struct Layer {
    desc: ImgDesc,
    diff_id: Digest,
    chain: Digest,
    parent: Option<Digest>,
    /// Becomes true when the layer below is committed (sender dropped = it failed).
    below: Option<watch::Receiver<bool>>,
    done: watch::Sender<bool>,
}

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
    pub(crate) fn check_snapshotter(&self, sn: &str) -> Result<(), Status> {
        self.store.snapshotter(sn).map(|_| ()).map_err(to_status)
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
    ) -> Result<Image, Status> {
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
            .map_err(to_status)?;
        let _guard = LeaseGuard {
            store: self.store.clone(),
            gc: self.gc.clone(),
            ns: ns.clone(),
            id: lease.clone(),
        };
        let repo = self
            .registry
            .repository(&spec.reference, &spec.session)
            .map_err(registry_status)?;
        progress.send("resolving", &spec.name, 0, 0, None);
        let root = repo.resolve().await.map_err(registry_status)?;
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
                .map_err(|e| image_status("index", e))?
                .ok_or_else(|| {
                    Status::not_found(format!(
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
        let (config, layers) =
            manifest_parts(&manifest_bytes).map_err(|e| image_status("manifest", e))?;
        let config_bytes = self.small_blob(&ctx, &config).await?;
        let diff_ids = config_diff_ids(&config_bytes).map_err(|e| image_status("config", e))?;
        if diff_ids.len() != layers.len() {
            return Err(Status::data_loss(format!(
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
            let r = r.map_err(|e| Status::internal(format!("layer task: {e}")))?;
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
                    .map_err(to_status)?,
                false,
            ),
            Err(e) => return Err(to_status(e)),
        };
        self.store.flush().await.map_err(to_status)?;
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
    ) -> Result<(), Status> {
        let labels: HashMap<String, String> = labels.into_iter().collect();
        let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.store
            .content_update(ns, d, &labels, &paths)
            .map_err(to_status)?;
        Ok(())
    }

    /// Fetches a manifest, index or config (from the store if present), stores it, returns it.
    async fn small_blob(&self, ctx: &Ctx, desc: &ImgDesc) -> Result<Bytes, Status> {
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
            .map_err(registry_status)?;
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
                store.content_writer(&ns, &r, Some(b.len() as i64), Some(d.clone()), Some(&lease))
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
                        .map_err(|e| to_status(berth_store::content_error(e)))?;
                    match store.content_commit(w, b.len() as i64, Some(d), &labels) {
                        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
                        Err(e) => Err(to_status(e)),
                    }
                }
                Err(StoreError::AlreadyExists(_)) => Ok(()),
                Err(e) => Err(to_status(e)),
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

    async fn layer(&self, ctx: &Ctx, job: Layer) -> Result<(), Status> {
        let Layer {
            desc,
            diff_id,
            chain,
            parent,
            below,
            done,
        } = job;
        let name = desc.digest.to_string();
        let ns = &ctx.ns;
        let flight_key = format!(
            "{ns}/{}/{chain}/{}",
            ctx.snapshotter.as_deref().unwrap_or("-"),
            desc.digest
        );
        ctx.progress
            .send("waiting", &name, 0, desc.size, Some(&desc));
        // Another pull of the same layer: wait for it, then see what is left to do.
        let _flight = loop {
            if let Some(f) = self.join_flight(flight_key.clone()).await {
                break f;
            }
        };
        let has_content = self.store.content_info(ns, &desc.digest).is_ok();
        let has_snapshot = ctx
            .snapshotter
            .as_deref()
            .is_some_and(|sn| self.has_snapshot(ns, sn, chain.as_str()));
        if has_content {
            self.hold(ctx, "content", desc.digest.as_str())?;
        }
        let Some(sn) = ctx.snapshotter.clone().filter(|_| !has_snapshot) else {
            if !has_content {
                let _permit = ctx.permits.acquire().await;
                self.download(ctx, &desc, None).await?;
            } else {
                ctx.progress
                    .send("exists", &name, desc.size, desc.size, Some(&desc));
            }
            if let Some(sn) = &ctx.snapshotter {
                self.hold(ctx, &format!("snapshots/{sn}"), chain.as_str())?;
            }
            let _ = done.send(true);
            return Ok(());
        };

        let independent = self
            .store
            .snapshotter(&sn)
            .map_err(to_status)?
            .independent_layers();
        // Written straight into the upper directory, as containerd's overlay applier does.
        let whiteouts = Whiteouts::Overlay;
        let key = format!(
            "extract-{} {chain}",
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..12)
                .unwrap_or("0")
        );
        let snap_labels = HashMap::from([(LABEL_SNAPSHOT_REF.to_string(), chain.to_string())]);
        let mut applied_ok = false;
        if independent {
            let permit = ctx.permits.acquire().await;
            self.store
                .prepare_snapshot(
                    ns,
                    &sn,
                    NewSnapshot {
                        key: &key,
                        parent: "",
                        kind: SnapshotKind::Active,
                        labels: snap_labels.clone(),
                        lease: Some(&ctx.lease),
                    },
                )
                .map_err(to_status)?;
            let dir = self.store.snapshot_dir(ns, &sn, &key).map_err(to_status)?;
            let applied = if has_content {
                ctx.progress
                    .send("unpacking", &name, 0, desc.size, Some(&desc));
                Some(self.apply_from_store(ns, &desc, dir, whiteouts).await)
            } else {
                self.download(ctx, &desc, Some((dir, whiteouts))).await?
            };
            drop(permit);
            match applied {
                Some(Ok(a)) => {
                    check_diff_id(&desc, &a.digest, &diff_id)?;
                    applied_ok = true;
                }
                Some(Err(berth_image::ImageError::NeedsLowerLayers(why))) => {
                    tracing::debug!(layer = %desc.digest, %why, "applying onto the mounted parent");
                }
                Some(Err(e)) => {
                    let _ = self.store.remove_snapshot(ns, &sn, &key);
                    return Err(image_status(&format!("layer {}", desc.digest), e));
                }
                // Resumed download: the stream did not start at 0; apply from the store.
                None => {
                    ctx.progress
                        .send("unpacking", &name, 0, desc.size, Some(&desc));
                    let dir = self.store.snapshot_dir(ns, &sn, &key).map_err(to_status)?;
                    match self.apply_from_store(ns, &desc, dir, whiteouts).await {
                        Ok(a) => {
                            check_diff_id(&desc, &a.digest, &diff_id)?;
                            applied_ok = true;
                        }
                        Err(berth_image::ImageError::NeedsLowerLayers(_)) => {}
                        Err(e) => {
                            let _ = self.store.remove_snapshot(ns, &sn, &key);
                            return Err(image_status(&format!("layer {}", desc.digest), e));
                        }
                    }
                }
            }
            if !applied_ok {
                let _ = self.store.remove_snapshot(ns, &sn, &key);
            }
        } else if !has_content {
            let _permit = ctx.permits.acquire().await;
            self.download(ctx, &desc, None).await?;
        }

        // Chain it onto the layer below, once that one is committed.
        if let Some(mut b) = below
            && b.wait_for(|d| *d).await.is_err()
        {
            if applied_ok {
                let _ = self.store.remove_snapshot(ns, &sn, &key);
            }
            return Err(Status::aborted(format!(
                "layer {}: a lower layer failed",
                desc.digest
            )));
        }
        let parent = parent.map(|p| p.to_string());
        if applied_ok {
            let r = self.store.commit_snapshot_onto(
                ns,
                &sn,
                chain.as_str(),
                &key,
                parent.as_deref(),
                snap_labels,
                Some(&ctx.lease),
            );
            let _ = self.store.remove_snapshot(ns, &sn, &key);
            match r {
                Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(to_status(e)),
            }
        } else {
            ctx.progress
                .send("unpacking", &name, 0, desc.size, Some(&desc));
            self.apply_serial(ctx, &sn, &desc, &diff_id, &chain, parent.as_deref(), &key)
                .await?;
        }
        self.hold(ctx, &format!("snapshots/{sn}"), chain.as_str())?;
        self.label(
            ns,
            &desc.digest,
            [(LABEL_UNCOMPRESSED.to_string(), diff_id.to_string())],
        )?;
        ctx.progress
            .send("complete", &name, desc.size, desc.size, Some(&desc));
        let _ = done.send(true);
        Ok(())
    }

    /// Puts an existing resource under the pull's lease, so GC keeps it until the image does.
    fn hold(&self, ctx: &Ctx, kind: &str, id: &str) -> Result<(), Status> {
        match self.store.add_lease_resource(
            &ctx.ns,
            &ctx.lease,
            &berth_store::Resource {
                id: id.to_string(),
                r#type: kind.to_string(),
            },
        ) {
            Ok(()) | Err(StoreError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(to_status(e)),
        }
    }

    /// Prepares `key` over the committed parent, mounts it, applies the layer from the content
    /// store, checks the diff id and commits it as `chain`.
    #[allow(clippy::too_many_arguments)]
    async fn apply_serial(
        &self,
        ctx: &Ctx,
        sn: &str,
        desc: &ImgDesc,
        diff_id: &Digest,
        chain: &Digest,
        parent: Option<&str>,
        key: &str,
    ) -> Result<(), Status> {
        let ns = &ctx.ns;
        let mounts = self
            .store
            .prepare_snapshot(
                ns,
                sn,
                NewSnapshot {
                    key,
                    parent: parent.unwrap_or(""),
                    kind: SnapshotKind::Active,
                    labels: HashMap::from([(LABEL_SNAPSHOT_REF.to_string(), chain.to_string())]),
                    lease: Some(&ctx.lease),
                },
            )
            .map_err(to_status)?;
        let mounts = crate::services::mounts_pb(mounts);
        let reader = self
            .store
            .content_reader(ns, &desc.digest)
            .map_err(to_status)?;
        let dir = self.mounts_dir.clone();
        let applied = blocking(move || {
            let m = Mounted::new(&dir, &mounts)
                .map_err(|e| Status::internal(format!("mounting the snapshot: {e}")))?;
            Ok(berth_image::apply_layer(reader, m.path()))
        })
        .await;
        let applied = match applied {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let _ = self.store.remove_snapshot(ns, sn, key);
                return Err(image_status(&format!("layer {}", desc.digest), e));
            }
            Err(e) => {
                let _ = self.store.remove_snapshot(ns, sn, key);
                return Err(e);
            }
        };
        if let Err(e) = check_diff_id(desc, &applied.digest, diff_id) {
            let _ = self.store.remove_snapshot(ns, sn, key);
            return Err(e);
        }
        let r = self.store.commit_snapshot(
            ns,
            sn,
            chain.as_str(),
            key,
            HashMap::from([(LABEL_SNAPSHOT_REF.to_string(), chain.to_string())]),
            Some(&ctx.lease),
        );
        match r {
            Ok(()) => Ok(()),
            Err(StoreError::AlreadyExists(_)) => {
                let _ = self.store.remove_snapshot(ns, sn, key);
                Ok(())
            }
            Err(e) => {
                let _ = self.store.remove_snapshot(ns, sn, key);
                Err(to_status(e))
            }
        }
    }

    async fn apply_from_store(
        &self,
        ns: &str,
        desc: &ImgDesc,
        dir: PathBuf,
        whiteouts: Whiteouts,
    ) -> Result<berth_image::Applied, berth_image::ImageError> {
        let reader = self
            .store
            .content_reader(ns, &desc.digest)
            .map_err(|e| berth_image::ImageError::NotFound(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            berth_image::apply_layer_with(
                std::io::BufReader::with_capacity(1 << 20, reader),
                &dir,
                whiteouts,
            )
        })
        .await
        .map_err(|e| berth_image::ImageError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Downloads a layer into the content store (resuming a partial ingest), and when `apply`
    /// is given and the download starts at byte 0, applies it into that directory as it
    /// streams. Returns the apply's result, or `None` if nothing was applied.
    ///
    /// A partial download that cannot be resumed is discarded and the layer downloaded again
    /// from its first byte, once: one that is complete but does not verify, one the registry
    /// refuses to resume (416 Range Not Satisfiable, or any other HTTP error for the Range
    /// request), one whose resumed bytes end in a digest mismatch.
    async fn download(
        &self,
        ctx: &Ctx,
        desc: &ImgDesc,
        apply: Option<(PathBuf, Whiteouts)>,
    ) -> Result<Option<Result<berth_image::Applied, berth_image::ImageError>>, Status> {
        match self.download_once(ctx, desc, apply.clone()).await {
            Err(Attempt::StartOver(why)) => {
                tracing::warn!(layer = %desc.digest, reason = %why,
                    "the partial download cannot be resumed: downloading the layer again");
                let (store, ns, r) = (
                    self.store.clone(),
                    ctx.ns.clone(),
                    format!("layer-{}", desc.digest),
                );
                blocking(move || match store.content_abort(&ns, &r) {
                    Ok(()) | Err(StoreError::NotFound(_)) => Ok(()),
                    Err(e) => Err(to_status(e)),
                })
                .await?;
                self.download_once(ctx, desc, apply)
                    .await
                    .map_err(Attempt::into_status)
            }
            other => other.map_err(Attempt::into_status),
        }
    }

    /// One attempt of [`Puller::download`]; a resumed one that cannot go on asks to start over.
    async fn download_once(
        &self,
        ctx: &Ctx,
        desc: &ImgDesc,
        apply: Option<(PathBuf, Whiteouts)>,
    ) -> Result<Option<Result<berth_image::Applied, berth_image::ImageError>>, Attempt> {
        let name = desc.digest.to_string();
        let store = self.store.clone();
        let (ns, lease) = (ctx.ns.clone(), ctx.lease.clone());
        let (r, total, d) = (
            format!("layer-{}", desc.digest),
            desc.size,
            desc.digest.clone(),
        );
        let writer = blocking(move || {
            match store.content_writer(&ns, &r, Some(total), Some(d), Some(&lease)) {
                Ok(w) => Ok(Some(w)),
                Err(StoreError::AlreadyExists(_)) => Ok(None),
                Err(e) => Err(to_status(e)),
            }
        })
        .await?;
        let Some(mut writer) = writer else {
            ctx.progress
                .send("exists", &name, desc.size, desc.size, Some(desc));
            return Ok(match apply {
                Some((dir, w)) => Some(self.apply_from_store(&ctx.ns, desc, dir, w).await),
                None => None,
            });
        };
        let offset = writer.inner().offset();
        if offset > 0 && offset >= desc.size as u64 {
            // Downloaded in full before an interruption, never committed: commit it (which
            // verifies size and digest) instead of asking the registry for nothing.
            tracing::info!(layer = %desc.digest, offset, "committing a complete partial download");
            let store = self.store.clone();
            let labels = HashMap::from([ctx.source_label.clone()]);
            let (size, digest) = (desc.size, desc.digest.clone());
            let committed =
                blocking(
                    move || match store.content_commit(writer, size, Some(digest), &labels) {
                        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
                        Err(e) => Err(to_status(e)),
                    },
                )
                .await;
            if let Err(e) = committed {
                return Err(Attempt::StartOver(format!(
                    "the complete partial download does not verify: {}",
                    e.message()
                )));
            }
            ctx.progress
                .send("downloaded", &name, desc.size, desc.size, Some(desc));
            return Ok(match apply {
                Some((dir, w)) => Some(self.apply_from_store(&ctx.ns, desc, dir, w).await),
                None => None,
            });
        }
        if offset > 0 {
            tracing::info!(layer = %desc.digest, offset, "resuming a partial download");
        }
        let mut stream = match ctx.repo.fetch_blob(desc, offset).await {
            Ok(s) => s,
            Err(e @ berth_image::registry::RegistryError::Status { .. }) if offset > 0 => {
                return Err(Attempt::StartOver(format!(
                    "resuming at byte {offset}: {e}"
                )));
            }
            Err(e) => return Err(registry_status(e).into()),
        };
        ctx.progress
            .send("downloading", &name, offset as i64, desc.size, Some(desc));

        // The applier reads what the sink passes on; it may stop early (on error) without
        // stopping the download.
        let (apply_tx, apply_task) = match apply.filter(|_| offset == 0) {
            Some((dir, whiteouts)) => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(64);
                let task = tokio::task::spawn_blocking(move || {
                    let reader = ChannelReader {
                        rx,
                        cur: Bytes::new(),
                    };
                    berth_image::apply_layer_with(reader, &dir, whiteouts)
                });
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let (tx, mut rx) = mpsc::channel::<Chunk>(64);
        let store = self.store.clone();
        let labels = HashMap::from([ctx.source_label.clone()]);
        let (size, digest) = (desc.size, desc.digest.clone());
        let sink = tokio::task::spawn_blocking(move || -> Result<(), Status> {
            let mut pos = offset;
            let mut apply_tx = apply_tx;
            while let Some(c) = rx.blocking_recv() {
                match c {
                    Chunk::Data(b) => {
                        writer
                            .inner()
                            .write_at(pos, &b)
                            .map_err(|e| to_status(berth_store::content_error(e)))?;
                        pos += b.len() as u64;
                        if let Some(t) = &apply_tx
                            && t.send(b).is_err()
                        {
                            apply_tx = None;
                        }
                    }
                    Chunk::End => {
                        drop(apply_tx);
                        return match store.content_commit(writer, size, Some(digest), &labels) {
                            Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
                            Err(e) => Err(to_status(e)),
                        };
                    }
                }
            }
            Err(Status::aborted("download interrupted"))
        });
        let mut last = Instant::now();
        let streamed: Result<(), Status> = async {
            while let Some(chunk) = stream.next().await.map_err(registry_status)? {
                if tx.send(Chunk::Data(chunk)).await.is_err() {
                    break;
                }
                if last.elapsed() >= Duration::from_millis(100) {
                    last = Instant::now();
                    ctx.progress.send(
                        "downloading",
                        &name,
                        stream.position() as i64,
                        desc.size,
                        Some(desc),
                    );
                }
            }
            let _ = tx.send(Chunk::End).await;
            Ok(())
        }
        .await;
        drop(tx);
        let sunk = sink
            .await
            .map_err(|e| Status::internal(format!("content writer task: {e}")))?;
        let applied = match apply_task {
            Some(t) => Some(
                t.await
                    .map_err(|e| Status::internal(format!("apply task: {e}")))?,
            ),
            None => None,
        };
        streamed?;
        match sunk {
            // The bytes kept from before did not belong to this blob after all.
            Err(e) if offset > 0 && e.code() == tonic::Code::FailedPrecondition => {
                return Err(Attempt::StartOver(format!(
                    "the resumed download does not verify: {}",
                    e.message()
                )));
            }
            other => other?,
        }
        ctx.progress
            .send("downloaded", &name, desc.size, desc.size, Some(desc));
        Ok(applied)
    }
}

/// How one download attempt failed.
#[derive(Debug)]
enum Attempt {
    /// The partial download it resumed is no good: discard it and download from byte 0.
    StartOver(String),
    /// For good.
    Failed(Status),
}

impl Attempt {
    fn into_status(self) -> Status {
        match self {
            Attempt::StartOver(why) => Status::data_loss(why),
            Attempt::Failed(s) => s,
        }
    }
}

impl From<Status> for Attempt {
    fn from(s: Status) -> Self {
        Attempt::Failed(s)
    }
}

fn check_diff_id(desc: &ImgDesc, got: &Digest, want: &Digest) -> Result<(), Status> {
    if got != want {
        return Err(Status::data_loss(format!(
            "layer {}: uncompressed digest {got} does not match the config's diff id {want}",
            desc.digest
        )));
    }
    Ok(())
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

impl Puller {
    /// Pushes image `name` of `ns` to `dest` (blobs the registry lacks, then manifests, then
    /// the tag), with the same hosts, credentials and progress as pulls.
    pub(crate) async fn push(
        &self,
        ns: &str,
        name: &str,
        dest: &ImageRef,
        session: &Session,
        progress: ProgressSink,
    ) -> Result<(), Status> {
        let img = self.store.get_image(ns, name).map_err(to_status)?;
        let target = ImgDesc {
            media_type: img.target.media_type.clone(),
            digest: Digest::parse(&img.target.digest)
                .map_err(|e| Status::data_loss(format!("image {name}: target digest: {e}")))?,
            size: img.target.size,
            annotations: Default::default(),
        };
        let repo = self
            .registry
            .repository(dest, session)
            .map_err(registry_status)?;
        let tag = dest.tag.clone();
        let manifests = if is_index(&target.media_type) {
            let index = self.read_small(ns, &target.digest).await?;
            // Only the manifests this store holds (a pull keeps one platform).
            let mut present = Vec::new();
            for m in
                berth_image::media::index_manifests(&index).map_err(|e| image_status("index", e))?
            {
                if self.store.content_info(ns, &m.digest).is_ok() {
                    present.push(m);
                }
            }
            if present.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "image {name}: no manifest of its index is in the content store"
                )));
            }
            present
        } else {
            vec![target.clone()]
        };
        for m in &manifests {
            let bytes = self.read_small(ns, &m.digest).await?;
            let (config, layers) =
                manifest_parts(&bytes).map_err(|e| image_status("manifest", e))?;
            for blob in std::iter::once(&config).chain(layers.iter()) {
                self.push_blob(ns, &repo, blob, &progress).await?;
            }
            // Children first; the manifest by digest unless it is the tagged target itself.
            if m.digest != target.digest || tag.is_none() {
                repo.push_manifest(m, bytes, None)
                    .await
                    .map_err(registry_status)?;
            }
        }
        let top = self.read_small(ns, &target.digest).await?;
        repo.push_manifest(&target, top, tag.as_deref())
            .await
            .map_err(registry_status)?;
        progress.send("pushed", &dest.to_string(), 0, 0, Some(&target));
        Ok(())
    }

    async fn read_small(&self, ns: &str, d: &Digest) -> Result<Bytes, Status> {
        let r = self.store.content_reader(ns, d).map_err(to_status)?;
        if r.size() > berth_image::registry::MANIFEST_LIMIT {
            return Err(Status::failed_precondition(format!(
                "{d}: too large for a manifest"
            )));
        }
        blocking(move || {
            let mut buf = vec![0u8; r.size() as usize];
            let mut off = 0;
            while off < buf.len() {
                let n = r
                    .read_at(off as u64, &mut buf[off..])
                    .map_err(|e| Status::internal(e.to_string()))?;
                if n == 0 {
                    break;
                }
                off += n;
            }
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn push_blob(
        &self,
        ns: &str,
        repo: &Repository,
        desc: &ImgDesc,
        progress: &ProgressSink,
    ) -> Result<(), Status> {
        let name = desc.digest.to_string();
        if repo.has_blob(desc).await.map_err(registry_status)? {
            progress.send("exists", &name, desc.size, desc.size, Some(desc));
            return Ok(());
        }
        let reader = self
            .store
            .content_reader(ns, &desc.digest)
            .map_err(to_status)?;
        progress.send("uploading", &name, 0, desc.size, Some(desc));
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        tokio::task::spawn_blocking(move || {
            let mut off = 0u64;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                match reader.read_at(off, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        off += n as u64;
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                }
            }
        });
        let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        repo.push_blob_body(desc, body)
            .await
            .map_err(registry_status)?;
        progress.send("uploaded", &name, desc.size, desc.size, Some(desc));
        Ok(())
    }
}
