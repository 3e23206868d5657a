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

use super::{blocking, lease, mounts_pb, namespace, parse_filters, ts};
use crate::errors::to_status;
use crate::events::Exchange;
use crate::gc::Collector;

const LIST_BATCH: usize = 100;

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

#[tonic::async_trait]
impl snapshots_server::Snapshots for Snapshots {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let r = req.into_inner();
        self.check(&r.snapshotter)?;
        let store = self.store.clone();
        let (sn, key, parent) = (r.snapshotter.clone(), r.key.clone(), r.parent.clone());
        let nsc = ns.clone();
        let mounts = blocking(move || {
            store
                .prepare_snapshot(
                    &nsc,
                    &sn,
                    NewSnapshot {
                        key: &key,
                        parent: &parent,
                        kind: SnapshotKind::Active,
                        labels: r.labels,
                        lease: lease.as_deref(),
                    },
                )
                .map_err(to_status)
        })
        .await?;
        self.store.flush().await.map_err(to_status)?;
        self.events.publish(
            &ns,
            "/snapshot/prepare",
            &SnapshotPrepare {
                key: r.key,
                parent: r.parent,
                snapshotter: r.snapshotter,
            },
        );
        Ok(Response::new(PrepareSnapshotResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let r = req.into_inner();
        self.check(&r.snapshotter)?;
        let store = self.store.clone();
        let mounts = blocking(move || {
            store
                .prepare_snapshot(
                    &ns,
                    &r.snapshotter,
                    NewSnapshot {
                        key: &r.key,
                        parent: &r.parent,
                        kind: SnapshotKind::View,
                        labels: r.labels,
                        lease: lease.as_deref(),
                    },
                )
                .map_err(to_status)
        })
        .await?;
        self.store.flush().await.map_err(to_status)?;
        Ok(Response::new(ViewSnapshotResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.check(&r.snapshotter)?;
        let m = self
            .store
            .snapshot_mounts(&ns, &r.snapshotter, &r.key)
            .map_err(to_status)?;
        Ok(Response::new(MountsResponse {
            mounts: mounts_pb(m),
        }))
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let r = req.into_inner();
        self.check(&r.snapshotter)?;
        self.store
            .commit_snapshot(
                &ns,
                &r.snapshotter,
                &r.name,
                &r.key,
                r.labels,
                lease.as_deref(),
            )
            .map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        self.events.publish(
            &ns,
            "/snapshot/commit",
            &SnapshotCommit {
                key: r.key,
                name: r.name,
                snapshotter: r.snapshotter,
            },
        );
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.check(&r.snapshotter)?;
        let store = self.store.clone();
        let (nsc, sn, key) = (ns.clone(), r.snapshotter.clone(), r.key.clone());
        blocking(move || store.remove_snapshot(&nsc, &sn, &key).map_err(to_status)).await?;
        self.store.flush().await.map_err(to_status)?;
        self.events.publish(
            &ns,
            "/snapshot/remove",
            &SnapshotRemove {
                key: r.key,
                snapshotter: r.snapshotter,
            },
        );
        self.gc.schedule();
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.check(&r.snapshotter)?;
        let i = self
            .store
            .stat_snapshot(&ns, &r.snapshotter, &r.key)
            .map_err(to_status)?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(info_pb(i)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.check(&r.snapshotter)?;
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("info: required"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let i = self
            .store
            .update_snapshot(&ns, &r.snapshotter, &info.name, &info.labels, &paths)
            .map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        self.gc.schedule();
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(info_pb(i)),
        }))
    }

    type ListStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<ListSnapshotsResponse, Status>> + Send>,
    >;

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.check(&r.snapshotter)?;
        let filter = parse_filters(&r.filters)?;
        let infos: Vec<Info> = self
            .store
            .list_snapshots(&ns, &r.snapshotter)
            .map_err(to_status)?
            .into_iter()
            .filter(|i| {
                filter.matches(&|p: &[String]| match p.first().map(String::as_str)? {
                    "name" => Some(i.name.clone()),
                    "parent" => Some(i.parent.clone()).filter(|s| !s.is_empty()),
                    "kind" => Some(kind_pb(i.kind).as_str_name().to_lowercase()),
                    "labels" => label_field(&i.labels, p),
                    _ => None,
                })
            })
            .map(info_pb)
            .collect();
        let batches: Vec<Result<ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.check(&r.snapshotter)?;
        let store = self.store.clone();
        let u = blocking(move || {
            store
                .snapshot_usage(&ns, &r.snapshotter, &r.key)
                .map_err(to_status)
        })
        .await?;
        Ok(Response::new(UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, req: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        namespace(&req)?;
        let sn = req.into_inner().snapshotter;
        self.check(&sn)?;
        let store = self.store.clone();
        blocking(move || store.cleanup_snapshots(&sn).map_err(to_status)).await?;
        Ok(Response::new(()))
    }
}
