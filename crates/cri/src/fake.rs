//! A fake of the daemon's services and of the [`Host`], for unit tests of the CRI without a
//! daemon or root: containers and leases are kept in memory; every other call is Unimplemented,
//! so a test sees at once which call it did not expect.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use berth_api::containerd::services::containers::v1 as ctr;
use berth_api::containerd::services::content::v1 as content;
use berth_api::containerd::services::diff::v1 as diff;
use berth_api::containerd::services::events::v1 as events;
use berth_api::containerd::services::images::v1 as images;
use berth_api::containerd::services::leases::v1 as leases;
use berth_api::containerd::services::snapshots::v1 as snaps;
use berth_api::containerd::services::tasks::v1 as tasks;
use berth_api::containerd::types::Mount;
use tonic::{Request, Response, Status};

use crate::api::{BoxStream, Services};
use crate::{BoxFuture, Host, PullAuth};

/// The daemon, as far as a test needs it.
#[derive(Debug, Default)]
pub(crate) struct Fake {
    /// Container records by id.
    pub(crate) containers: Mutex<BTreeMap<String, ctr::Container>>,
    /// Leases that exist.
    pub(crate) leases: Mutex<Vec<String>>,
    /// Every lease ever created.
    pub(crate) leases_made: Mutex<Vec<String>>,
    /// Tasks by container id.
    pub(crate) tasks: Mutex<BTreeMap<String, FakeTask>>,
    /// Every Kill: (id, signal, all).
    pub(crate) kills: Mutex<Vec<(String, u32, bool)>>,
    /// Every snapshot removed.
    pub(crate) snapshots_removed: Mutex<Vec<String>>,
}

/// A task of the fake: running until a signal it does not ignore.
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeTask {
    /// Stopped (with `exit`) or running.
    pub(crate) stopped: bool,
    /// Its exit status once stopped.
    pub(crate) exit: u32,
    /// SIGTERM does nothing to it.
    pub(crate) ignores_term: bool,
}

impl Fake {
    /// The fake as the CRI's services.
    pub(crate) fn services(self: &Arc<Self>) -> Services {
        Services {
            containers: self.clone(),
            tasks: self.clone(),
            images: self.clone(),
            snapshots: self.clone(),
            content: self.clone(),
            diff: self.clone(),
            leases: self.clone(),
            events: self.clone(),
        }
    }
}

/// One service of the fake: the calls it answers, then the ones it refuses.
macro_rules! fake {
    ($trait:path { $($answered:tt)* } $($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl $trait for Fake {
            $($answered)*
            $(
                async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(concat!("fake: ", stringify!($name))))
                }
            )*
        }
    };
}

fake! {
    ctr::containers_server::Containers {
        type ListStreamStream = BoxStream<ctr::ListContainerMessage>;

        async fn create(
            &self,
            req: Request<ctr::CreateContainerRequest>,
        ) -> Result<Response<ctr::CreateContainerResponse>, Status> {
            let c = req
                .into_inner()
                .container
                .ok_or_else(|| Status::invalid_argument("container"))?;
            let mut all = self.containers.lock().unwrap();
            if all.contains_key(&c.id) {
                return Err(Status::already_exists(c.id));
            }
            all.insert(c.id.clone(), c.clone());
            Ok(Response::new(ctr::CreateContainerResponse { container: Some(c) }))
        }

        async fn get(
            &self,
            req: Request<ctr::GetContainerRequest>,
        ) -> Result<Response<ctr::GetContainerResponse>, Status> {
            let id = req.into_inner().id;
            let c = self.containers.lock().unwrap().get(&id).cloned();
            let c = c.ok_or_else(|| Status::not_found(id))?;
            Ok(Response::new(ctr::GetContainerResponse { container: Some(c) }))
        }

        async fn list(
            &self,
            req: Request<ctr::ListContainersRequest>,
        ) -> Result<Response<ctr::ListContainersResponse>, Status> {
            let containers = self.list_containers(&req.into_inner().filters);
            Ok(Response::new(ctr::ListContainersResponse { containers }))
        }

        async fn update(
            &self,
            req: Request<ctr::UpdateContainerRequest>,
        ) -> Result<Response<ctr::UpdateContainerResponse>, Status> {
            let r = req.into_inner();
            let c = r.container.ok_or_else(|| Status::invalid_argument("container"))?;
            let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
            let c = self.update_container(c, &paths)?;
            Ok(Response::new(ctr::UpdateContainerResponse { container: Some(c) }))
        }

        async fn delete(
            &self,
            req: Request<ctr::DeleteContainerRequest>,
        ) -> Result<Response<()>, Status> {
            let id = req.into_inner().id;
            match self.containers.lock().unwrap().remove(&id) {
                Some(_) => Ok(Response::new(())),
                None => Err(Status::not_found(id)),
            }
        }
    }
    list_stream(ctr::ListContainersRequest) -> Self::ListStreamStream;
}

impl Fake {
    /// Containers.List; the only filter known is `labels."<key>"` (the label is set).
    fn list_containers(&self, filters: &[String]) -> Vec<ctr::Container> {
        let keys: Vec<&str> = filters
            .iter()
            .filter_map(|f| f.strip_prefix("labels.\"")?.strip_suffix('"'))
            .collect();
        assert_eq!(keys.len(), filters.len(), "fake: filters {filters:?}");
        self.containers
            .lock()
            .unwrap()
            .values()
            .filter(|c| keys.iter().all(|k| c.labels.contains_key(*k)))
            .cloned()
            .collect()
    }

    /// Containers.Update with `extensions.<key>` paths (what the CRI sends).
    fn update_container(
        &self,
        c: ctr::Container,
        paths: &[String],
    ) -> Result<ctr::Container, Status> {
        let mut all = self.containers.lock().unwrap();
        let have = all
            .get_mut(&c.id)
            .ok_or_else(|| Status::not_found(c.id.clone()))?;
        for p in paths {
            let key = p
                .strip_prefix("extensions.")
                .ok_or_else(|| Status::unimplemented(format!("fake: update of {p}")))?;
            match c.extensions.get(key) {
                Some(v) => have.extensions.insert(key.to_string(), v.clone()),
                None => have.extensions.remove(key),
            };
        }
        Ok(have.clone())
    }
}

fake! {
    leases::leases_server::Leases {
        async fn create(
            &self,
            req: Request<leases::CreateRequest>,
        ) -> Result<Response<leases::CreateResponse>, Status> {
            let id = req.into_inner().id;
            self.leases.lock().unwrap().push(id.clone());
            self.leases_made.lock().unwrap().push(id.clone());
            Ok(Response::new(leases::CreateResponse {
                lease: Some(leases::Lease {
                    id,
                    ..Default::default()
                }),
            }))
        }

        async fn delete(&self, req: Request<leases::DeleteRequest>) -> Result<Response<()>, Status> {
            let id = req.into_inner().id;
            let mut all = self.leases.lock().unwrap();
            let before = all.len();
            all.retain(|l| *l != id);
            if all.len() == before {
                return Err(Status::not_found(id));
            }
            Ok(Response::new(()))
        }
    }
    list(leases::ListRequest) -> leases::ListResponse;
    add_resource(leases::AddResourceRequest) -> ();
    delete_resource(leases::DeleteResourceRequest) -> ();
    list_resources(leases::ListResourcesRequest) -> leases::ListResourcesResponse;
}

fake! {
    tasks::tasks_server::Tasks {
        async fn get(
            &self,
            req: Request<tasks::GetRequest>,
        ) -> Result<Response<tasks::GetResponse>, Status> {
            let id = req.into_inner().container_id;
            let t = self.tasks.lock().unwrap().get(&id).cloned();
            let t = t.ok_or_else(|| Status::not_found(id.clone()))?;
            let status = if t.stopped {
                berth_api::containerd::v1::types::Status::Stopped
            } else {
                berth_api::containerd::v1::types::Status::Running
            };
            Ok(Response::new(tasks::GetResponse {
                process: Some(berth_api::containerd::v1::types::Process {
                    container_id: id.clone(),
                    id,
                    status: status as i32,
                    exit_status: t.exit,
                    ..Default::default()
                }),
            }))
        }

        async fn kill(&self, req: Request<tasks::KillRequest>) -> Result<Response<()>, Status> {
            let r = req.into_inner();
            self.kills
                .lock()
                .unwrap()
                .push((r.container_id.clone(), r.signal, r.all));
            let mut all = self.tasks.lock().unwrap();
            let t = all
                .get_mut(&r.container_id)
                .ok_or_else(|| Status::not_found(r.container_id.clone()))?;
            let ignored = t.ignores_term && r.signal == libc::SIGTERM as u32;
            if !t.stopped && !ignored {
                t.stopped = true;
                t.exit = 128 + r.signal;
            }
            Ok(Response::new(()))
        }

        async fn delete(
            &self,
            req: Request<tasks::DeleteTaskRequest>,
        ) -> Result<Response<tasks::DeleteResponse>, Status> {
            let id = req.into_inner().container_id;
            let t = self.tasks.lock().unwrap().remove(&id);
            let t = t.ok_or_else(|| Status::not_found(id.clone()))?;
            Ok(Response::new(tasks::DeleteResponse {
                id,
                exit_status: t.exit,
                ..Default::default()
            }))
        }
    }
    create(tasks::CreateTaskRequest) -> tasks::CreateTaskResponse;
    start(tasks::StartRequest) -> tasks::StartResponse;
    delete_process(tasks::DeleteProcessRequest) -> tasks::DeleteResponse;
    list(tasks::ListTasksRequest) -> tasks::ListTasksResponse;
    exec(tasks::ExecProcessRequest) -> ();
    resize_pty(tasks::ResizePtyRequest) -> ();
    close_io(tasks::CloseIoRequest) -> ();
    pause(tasks::PauseTaskRequest) -> ();
    resume(tasks::ResumeTaskRequest) -> ();
    list_pids(tasks::ListPidsRequest) -> tasks::ListPidsResponse;
    checkpoint(tasks::CheckpointTaskRequest) -> tasks::CheckpointTaskResponse;
    update(tasks::UpdateTaskRequest) -> ();
    metrics(tasks::MetricsRequest) -> tasks::MetricsResponse;
    wait(tasks::WaitRequest) -> tasks::WaitResponse;
}

fake! {
    images::images_server::Images {}
    get(images::GetImageRequest) -> images::GetImageResponse;
    list(images::ListImagesRequest) -> images::ListImagesResponse;
    create(images::CreateImageRequest) -> images::CreateImageResponse;
    update(images::UpdateImageRequest) -> images::UpdateImageResponse;
    delete(images::DeleteImageRequest) -> ();
}

fake! {
    snaps::snapshots_server::Snapshots {
        type ListStream = BoxStream<snaps::ListSnapshotsResponse>;

        async fn remove(
            &self,
            req: Request<snaps::RemoveSnapshotRequest>,
        ) -> Result<Response<()>, Status> {
            self.snapshots_removed
                .lock()
                .unwrap()
                .push(req.into_inner().key);
            Ok(Response::new(()))
        }
    }
    prepare(snaps::PrepareSnapshotRequest) -> snaps::PrepareSnapshotResponse;
    view(snaps::ViewSnapshotRequest) -> snaps::ViewSnapshotResponse;
    mounts(snaps::MountsRequest) -> snaps::MountsResponse;
    commit(snaps::CommitSnapshotRequest) -> ();
    stat(snaps::StatSnapshotRequest) -> snaps::StatSnapshotResponse;
    update(snaps::UpdateSnapshotRequest) -> snaps::UpdateSnapshotResponse;
    list(snaps::ListSnapshotsRequest) -> Self::ListStream;
    usage(snaps::UsageRequest) -> snaps::UsageResponse;
    cleanup(snaps::CleanupRequest) -> ();
}

fake! {
    content::content_server::Content {
        type ListStream = BoxStream<content::ListContentResponse>;
        type ReadStream = BoxStream<content::ReadContentResponse>;
        type WriteStream = BoxStream<content::WriteContentResponse>;
    }
    info(content::InfoRequest) -> content::InfoResponse;
    update(content::UpdateRequest) -> content::UpdateResponse;
    list(content::ListContentRequest) -> Self::ListStream;
    delete(content::DeleteContentRequest) -> ();
    read(content::ReadContentRequest) -> Self::ReadStream;
    status(content::StatusRequest) -> content::StatusResponse;
    list_statuses(content::ListStatusesRequest) -> content::ListStatusesResponse;
    write(tonic::Streaming<content::WriteContentRequest>) -> Self::WriteStream;
    abort(content::AbortRequest) -> ();
}

fake! {
    diff::diff_server::Diff {}
    apply(diff::ApplyRequest) -> diff::ApplyResponse;
    diff(diff::DiffRequest) -> diff::DiffResponse;
}

fake! {
    events::events_server::Events {
        type SubscribeStream = BoxStream<events::Envelope>;
    }
    publish(events::PublishRequest) -> ();
    forward(events::ForwardRequest) -> ();
    subscribe(events::SubscribeRequest) -> Self::SubscribeStream;
}

/// A host that does nothing a test did not ask for.
#[derive(Debug)]
pub(crate) struct NoHost;

impl Host for NoHost {
    fn pull<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
        _: Option<PullAuth>,
    ) -> BoxFuture<'a, Result<images::Image, Status>> {
        Box::pin(async { Err(Status::unimplemented("fake: pull")) })
    }

    fn read_rootfs_file<'a>(
        &'a self,
        _: Vec<Mount>,
        _: &'a str,
    ) -> BoxFuture<'a, std::io::Result<Option<Vec<u8>>>> {
        Box::pin(async { Ok(None) })
    }

    fn write_blob<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a [u8],
        _: std::collections::HashMap<String, String>,
    ) -> BoxFuture<'a, Result<String, Status>> {
        Box::pin(async { Err(Status::unimplemented("fake: write_blob")) })
    }
}

/// A CRI over `fake`, its directories in a temp dir (kept as long as the returned guard).
pub(crate) fn cri(fake: &std::sync::Arc<Fake>) -> (tempfile::TempDir, crate::state::Inner) {
    let t = tempfile::tempdir().unwrap();
    let dirs = crate::Dirs {
        root: t.path().join("root"),
        state: t.path().join("state"),
        image_fs: t.path().join("image-fs"),
    };
    let inner = crate::state::Inner::new(
        crate::CriConfig::default(),
        dirs,
        fake.services(),
        std::sync::Arc::new(NoHost),
    );
    (t, inner)
}
