//! `containerd.services.tasks.v1.Tasks`: tasks of containers, each run by its own shim through
//! the runtime manager.

use std::sync::Arc;

use berth_api::containerd::services::tasks::v1::{
    CheckpointTaskRequest, CheckpointTaskResponse, CloseIoRequest, CreateTaskRequest,
    CreateTaskResponse, DeleteProcessRequest, DeleteResponse, DeleteTaskRequest,
    ExecProcessRequest, GetRequest, GetResponse, KillRequest, ListPidsRequest, ListPidsResponse,
    ListTasksRequest, ListTasksResponse, MetricsRequest, MetricsResponse, PauseTaskRequest,
    ResizePtyRequest, ResumeTaskRequest, StartRequest, StartResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse, tasks_server,
};
use berth_api::containerd::task::v2 as shim;
use berth_api::containerd::types::Metric;
use berth_api::containerd::v1::types::Process;
use berth_store::Store;
use tonic::{Request, Response, Status};

use super::{mounts_pb, namespace};
use crate::errors::shim_status;
use crate::errors::to_status;
use crate::runtime::{CALL_TIMEOUT, Runtimes, Shim};

#[derive(Debug)]
pub(crate) struct Tasks {
    store: Store,
    runtimes: Arc<Runtimes>,
}

impl Tasks {
    pub(crate) fn new(store: Store, runtimes: Arc<Runtimes>) -> Self {
        Tasks { store, runtimes }
    }

    fn shim(&self, ns: &str, id: &str) -> Result<Arc<Shim>, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("container_id: must be set"));
        }
        self.runtimes
            .get(ns, id)
            .ok_or_else(|| Status::not_found(format!("task {id:?}: not found")))
    }
}

fn process(container_id: &str, s: shim::StateResponse) -> Process {
    // The init process is named by the container id, an exec by its exec id.
    let id = if s.exec_id.is_empty() {
        container_id.to_string()
    } else {
        s.exec_id
    };
    Process {
        container_id: container_id.to_string(),
        id,
        pid: s.pid,
        status: s.status,
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        terminal: s.terminal,
        exit_status: s.exit_status,
        exited_at: s.exited_at,
    }
}

#[tonic::async_trait]
impl tasks_server::Tasks for Tasks {
    async fn create(
        &self,
        req: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id: must be set"));
        }
        if r.checkpoint.is_some() {
            return Err(Status::unimplemented(
                "checkpoint: restoring a task from a checkpoint is not supported yet",
            ));
        }
        let c = self
            .store
            .get_container(&ns, &r.container_id)
            .map_err(to_status)?;
        let spec = c
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .ok_or_else(|| Status::failed_precondition("container has no spec"))?;
        if serde_json::from_slice::<serde_json::Value>(&spec).is_err() {
            return Err(Status::invalid_argument(format!(
                "container {:?}: its spec is not JSON",
                c.id
            )));
        }
        let mut rootfs = r.rootfs;
        if rootfs.is_empty() && !c.snapshot_key.is_empty() {
            rootfs = mounts_pb(
                self.store
                    .snapshot_mounts(&ns, &c.snapshotter, &c.snapshot_key)
                    .map_err(to_status)?,
            );
        }
        let runtime = if r.runtime_path.is_empty() {
            c.runtime_name.clone()
        } else {
            r.runtime_path.clone()
        };
        let options = self.runtimes.options_for(
            &runtime,
            r.options.clone().or_else(|| {
                c.runtime_options.as_ref().map(|o| prost_types::Any {
                    type_url: o.type_url.clone(),
                    value: o.value.clone(),
                })
            }),
        )?;
        let s = self
            .runtimes
            .start_shim(&ns, &c.id, &runtime, &spec, options.clone())
            .await?;
        let created = s
            .client
            .create(
                &s.opts(Some(CALL_TIMEOUT)),
                &shim::CreateTaskRequest {
                    id: c.id.clone(),
                    bundle: s.bundle.display().to_string(),
                    rootfs,
                    terminal: r.terminal,
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    checkpoint: String::new(),
                    parent_checkpoint: String::new(),
                    options,
                },
            )
            .await;
        match created {
            Ok(resp) => Ok(Response::new(CreateTaskResponse {
                container_id: c.id,
                pid: resp.pid,
            })),
            Err(e) => {
                self.runtimes.stop_shim(&s).await;
                Err(shim_status(e))
            }
        }
    }

    async fn start(&self, req: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let s = self.shim(&ns, &r.container_id)?;
        let resp = s
            .client
            .start(
                &s.opts(Some(CALL_TIMEOUT)),
                &shim::StartRequest {
                    id: r.container_id,
                    exec_id: r.exec_id,
                },
            )
            .await
            .map_err(shim_status)?;
        Ok(Response::new(StartResponse { pid: resp.pid }))
    }

    async fn delete(
        &self,
        req: Request<DeleteTaskRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let s = self.shim(&ns, &id)?;
        let r = self.runtimes.delete_task(&s).await?;
        Ok(Response::new(DeleteResponse {
            id,
            pid: r.pid,
            exit_status: r.exit_status,
            exited_at: r.exited_at,
        }))
    }

    async fn delete_process(
        &self,
        req: Request<DeleteProcessRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec_id: must be set"));
        }
        let s = self.shim(&ns, &r.container_id)?;
        let d = s
            .client
            .delete(
                &s.opts(Some(CALL_TIMEOUT)),
                &shim::DeleteRequest {
                    id: r.container_id,
                    exec_id: r.exec_id.clone(),
                },
            )
            .await
            .map_err(shim_status)?;
        Ok(Response::new(DeleteResponse {
            id: r.exec_id,
            pid: d.pid,
            exit_status: d.exit_status,
            exited_at: d.exited_at,
        }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let s = self.shim(&ns, &r.container_id)?;
        let st = s
            .client
            .state(
                &s.opts(Some(CALL_TIMEOUT)),
                &shim::StateRequest {
                    id: r.container_id.clone(),
                    exec_id: r.exec_id,
                },
            )
            .await
            .map_err(shim_status)?;
        Ok(Response::new(GetResponse {
            process: Some(process(&r.container_id, st)),
        }))
    }

    async fn list(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let ns = namespace(&req)?;
        let mut tasks = Vec::new();
        for s in self.runtimes.list(&ns) {
            // A shim that does not answer in time is left out rather than holding up the list.
            if let Ok(st) = s
                .client
                .state(
                    &s.opts(Some(CALL_TIMEOUT)),
                    &shim::StateRequest {
                        id: s.id.clone(),
                        exec_id: String::new(),
                    },
                )
                .await
            {
                tasks.push(process(&s.id, st));
            }
        }
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn kill(&self, req: Request<KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let s = self.shim(&ns, &r.container_id)?;
        s.client
            .kill(
                &s.opts(Some(CALL_TIMEOUT)),
                &shim::KillRequest {
                    id: r.container_id,
                    exec_id: r.exec_id,
                    signal: r.signal,
                    all: r.all,
                },
            )
            .await
            .map_err(shim_status)?;
        Ok(Response::new(()))
    }

    async fn exec(&self, req: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        if r.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec_id: must be set"));
        }
        let s = self.shim(&ns, &r.container_id)?;
        s.client
            .exec(
                &s.opts(Some(CALL_TIMEOUT)),
                &shim::ExecProcessRequest {
                    id: r.container_id,
                    exec_id: r.exec_id,
                    terminal: r.terminal,
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    spec: r.spec,
                },
            )
            .await
            .map_err(shim_status)?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, req: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let s = self.shim(&ns, &r.container_id)?;
        s.client
            .resize_pty(
                &s.opts(Some(CALL_TIMEOUT)),
                &shim::ResizePtyRequest {
                    id: r.container_id,
                    exec_id: r.exec_id,
                    width: r.width,
                    height: r.height,
                },
            )
            .await
            .map_err(shim_status)?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, req: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let s = self.shim(&ns, &r.container_id)?;
        s.client
            .close_io(
                &s.opts(Some(CALL_TIMEOUT)),
                &shim::CloseIoRequest {
                    id: r.container_id,
                    exec_id: r.exec_id,
                    stdin: r.stdin,
                },
            )
            .await
            .map_err(shim_status)?;
        Ok(Response::new(()))
    }

    async fn pause(&self, req: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let s = self.shim(&ns, &id)?;
        s.client
            .pause(&s.opts(Some(CALL_TIMEOUT)), &shim::PauseRequest { id })
            .await
            .map_err(shim_status)?;
        Ok(Response::new(()))
    }

    async fn resume(&self, req: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let s = self.shim(&ns, &id)?;
        s.client
            .resume(&s.opts(Some(CALL_TIMEOUT)), &shim::ResumeRequest { id })
            .await
            .map_err(shim_status)?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        req: Request<ListPidsRequest>,
    ) -> Result<Response<ListPidsResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        let s = self.shim(&ns, &id)?;
        let p = s
            .client
            .pids(&s.opts(Some(CALL_TIMEOUT)), &shim::PidsRequest { id })
            .await
            .map_err(shim_status)?;
        Ok(Response::new(ListPidsResponse {
            processes: p.processes,
        }))
    }

    async fn checkpoint(
        &self,
        _req: Request<CheckpointTaskRequest>,
    ) -> Result<Response<CheckpointTaskResponse>, Status> {
        Err(Status::unimplemented(
            "checkpoint: not supported yet (the image of a checkpoint is not written)",
        ))
    }

    async fn update(&self, req: Request<UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let s = self.shim(&ns, &r.container_id)?;
        s.client
            .update(
                &s.opts(Some(CALL_TIMEOUT)),
                &shim::UpdateTaskRequest {
                    id: r.container_id,
                    resources: r.resources,
                    annotations: r.annotations,
                },
            )
            .await
            .map_err(shim_status)?;
        Ok(Response::new(()))
    }

    async fn metrics(
        &self,
        req: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = super::parse_filters(&req.into_inner().filters)?;
        let mut metrics = Vec::new();
        for s in self.runtimes.list(&ns) {
            let id = s.id.clone();
            if !filter.matches(&|p: &[String]| match p.first().map(String::as_str) {
                Some("id") => Some(id.clone()),
                _ => None,
            }) {
                continue;
            }
            if let Ok(st) = s
                .client
                .stats(
                    &s.opts(Some(CALL_TIMEOUT)),
                    &shim::StatsRequest { id: id.clone() },
                )
                .await
            {
                metrics.push(Metric {
                    timestamp: super::sys_ts(std::time::SystemTime::now()),
                    id,
                    data: st.stats,
                });
            }
        }
        Ok(Response::new(MetricsResponse { metrics }))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let s = self.shim(&ns, &r.container_id)?;
        // No deadline: a wait lasts as long as the process.
        let w = s
            .client
            .wait(
                &s.opts(None),
                &shim::WaitRequest {
                    id: r.container_id,
                    exec_id: r.exec_id,
                },
            )
            .await
            .map_err(shim_status)?;
        Ok(Response::new(WaitResponse {
            exit_status: w.exit_status,
            exited_at: w.exited_at,
        }))
    }
}
