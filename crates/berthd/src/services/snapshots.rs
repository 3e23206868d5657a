//! `containerd.services.snapshots.v1.Snapshots`, for every snapshotter the store has.

use std::sync::Arc;

use berth_api::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use berth_api::containerd::services::snapshots::v1::{
    CleanupRequest, CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
    snapshots_server,
};
use berth_store::filters::label_field;
use berth_store::{NewSnapshot, SnapshotInfo, SnapshotKind, Store};
use tonic::{Request, Response, Status};

use super::{
    batches, blocking, lease, mask, mounts_pb, namespace, parse_filters, parts, required, saved,
    select, ts,
};
use crate::errors::to_status;
use crate::events::Exchange;
use crate::gc::Collector;

#[derive(Debug)]
pub(crate) struct Snapshots {
    store: Store,
    events: Arc<Exchange>,
    gc: Collector,
}

impl Snapshots {
    pub(crate) fn new(store: Store, events: Arc<Exchange>, gc: Collector) -> Self {
        Snapshots { store, events, gc }
    }

    fn check(&self, sn: &str) -> Result<(), Status> {
        if sn.is_empty() {
            return Err(Status::invalid_argument("snapshotter: must be set"));
        }
        self.store
            .snapshotter(sn)
            .map(|_| ())
            .map_err(|_| Status::invalid_argument(format!("snapshotter: {sn:?} is not loaded")))
    }
}

fn kind_pb(k: SnapshotKind) -> Kind {
    match k {
        SnapshotKind::View => Kind::View,
        SnapshotKind::Active => Kind::Active,
        SnapshotKind::Committed => Kind::Committed,
    }
}

fn info_pb(i: SnapshotInfo) -> Info {
    Info {
        name: i.name,
        parent: i.parent,
        kind: kind_pb(i.kind) as i32,
        created_at: ts(i.created_at),
        updated_at: ts(i.updated_at),
        labels: i.labels,
    }
}

fn field(i: &SnapshotInfo, p: &[String]) -> Option<String> {
    match p.first().map(String::as_str)? {
        "name" => Some(i.name.clone()),
        "parent" => Some(i.parent.clone()).filter(|s| !s.is_empty()),
        "kind" => Some(kind_pb(i.kind).as_str_name().to_lowercase()),
        "labels" => label_field(&i.labels, p),
        _ => None,
    }
}

/// What Prepare and View ask for: a new snapshot of `kind`.
struct New {
    snapshotter: String,
    key: String,
    parent: String,
    labels: std::collections::HashMap<String, String>,
    kind: SnapshotKind,
}

/// Prepare's and View's requests have the same fields: the new snapshot either asks for, moved
/// out of request `$r`.
macro_rules! new_snapshot {
    ($r:expr, $kind:expr) => {
        New {
            snapshotter: $r.snapshotter,
            key: $r.key,
            parent: $r.parent,
            labels: $r.labels,
            kind: $kind,
        }
    };
}

impl Snapshots {
    /// A new active snapshot or view, made under the call's lease; its mounts.
    async fn create(
        &self,
        ns: &str,
        lease: Option<String>,
        new: New,
    ) -> Result<Vec<berth_store::Mount>, Status> {
        self.check(&new.snapshotter)?;
        let ns = ns.to_string();
        let store = self.store.clone();
        let made = blocking(move || {
            let snapshot = NewSnapshot {
                key: &new.key,
                parent: &new.parent,
                kind: new.kind,
                labels: new.labels,
                lease: lease.as_deref(),
            };
            Ok::<_, Status>(store.prepare_snapshot(&ns, &new.snapshotter, snapshot))
        });
        saved(&self.store, made.await?).await
    }
}

#[tonic::async_trait]
impl snapshots_server::Snapshots for Snapshots {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let event = SnapshotPrepare {
            key: r.key.clone(),
            parent: r.parent.clone(),
            snapshotter: r.snapshotter.clone(),
        };
        let new = new_snapshot!(r, SnapshotKind::Active);
        let mounts = mounts_pb(self.create(&ns, lease, new).await?);
        self.events.publish(&ns, "/snapshot/prepare", &event);
        Ok(Response::new(PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let (ns, lease) = (namespace(&req)?, lease(&req));
        let r = req.into_inner();
        let new = new_snapshot!(r, SnapshotKind::View);
        let mounts = mounts_pb(self.create(&ns, lease, new).await?);
        Ok(Response::new(ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let (ns, r) = parts(req)?;
        self.check(&r.snapshotter)?;
        let m = self.store.snapshot_mounts(&ns, &r.snapshotter, &r.key);
        let mounts = mounts_pb(m.map_err(to_status)?);
        Ok(Response::new(MountsResponse { mounts }))
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let lease = lease(&req);
        let (ns, r) = parts(req)?;
        self.check(&r.snapshotter)?;
        let (sn, name, key, lease) = (&r.snapshotter, &r.name, &r.key, lease.as_deref());
        let committed = self
            .store
            .commit_snapshot(&ns, sn, name, key, r.labels, lease);
        saved(&self.store, committed).await?;
        let (key, name, snapshotter) = (r.key, r.name, r.snapshotter);
        let event = SnapshotCommit {
            key,
            name,
            snapshotter,
        };
        self.events.publish(&ns, "/snapshot/commit", &event);
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let (ns, r) = parts(req)?;
        self.check(&r.snapshotter)?;
        let store = self.store.clone();
        let (nsc, sn, key) = (ns.clone(), r.snapshotter.clone(), r.key.clone());
        let removed = blocking(move || Ok::<_, Status>(store.remove_snapshot(&nsc, &sn, &key)));
        let removed = removed.await?;
        saved(&self.store, removed).await?;
        let (key, snapshotter) = (r.key, r.snapshotter);
        let event = SnapshotRemove { key, snapshotter };
        self.events.publish(&ns, "/snapshot/remove", &event);
        self.gc.schedule();
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let (ns, r) = parts(req)?;
        self.check(&r.snapshotter)?;
        let i = self.store.stat_snapshot(&ns, &r.snapshotter, &r.key);
        let info = Some(info_pb(i.map_err(to_status)?));
        Ok(Response::new(StatSnapshotResponse { info }))
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let (ns, r) = parts(req)?;
        self.check(&r.snapshotter)?;
        let (info, paths) = (required("info", r.info)?, mask(r.update_mask));
        let (sn, name, labels) = (&r.snapshotter, &info.name, &info.labels);
        let updated = self.store.update_snapshot(&ns, sn, name, labels, &paths);
        let updated = saved(&self.store, updated).await?;
        self.gc.schedule();
        let info = Some(info_pb(updated));
        Ok(Response::new(UpdateSnapshotResponse { info }))
    }

    type ListStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<ListSnapshotsResponse, Status>> + Send>,
    >;

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let (ns, r) = parts(req)?;
        self.check(&r.snapshotter)?;
        let filter = parse_filters(&r.filters)?;
        let all = self.store.list_snapshots(&ns, &r.snapshotter);
        let infos = select(all.map_err(to_status)?, &filter, field, info_pb);
        let batches = batches(infos, |info| ListSnapshotsResponse { info });
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let (ns, r) = parts(req)?;
        self.check(&r.snapshotter)?;
        let store = self.store.clone();
        let (sn, key) = (r.snapshotter, r.key);
        let u = blocking(move || store.snapshot_usage(&ns, &sn, &key).map_err(to_status));
        let u = u.await?;
        let (size, inodes) = (u.size, u.inodes);
        Ok(Response::new(UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, req: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        let (_, r) = parts(req)?;
        let sn = r.snapshotter;
        self.check(&sn)?;
        let store = self.store.clone();
        blocking(move || store.cleanup_snapshots(&sn).map_err(to_status)).await?;
        Ok(Response::new(()))
    }
}
