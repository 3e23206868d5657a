//! `containerd.services.tasks.v1.Tasks`: tasks of containers, each run by its own shim. The
//! runtime manager does the work (`runtime/tasks.rs`); this reads the namespace and passes the
//! request on.

use std::sync::Arc;

use berth_api::containerd::services::tasks::v1::{
    CheckpointTaskRequest, CheckpointTaskResponse, CloseIoRequest, CreateTaskRequest,
    CreateTaskResponse, DeleteProcessRequest, DeleteResponse, DeleteTaskRequest,
    ExecProcessRequest, GetRequest, GetResponse, KillRequest, ListPidsRequest, ListPidsResponse,
    ListTasksRequest, ListTasksResponse, MetricsRequest, MetricsResponse, PauseTaskRequest,
    ResizePtyRequest, ResumeTaskRequest, StartRequest, StartResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse, tasks_server,
};
use berth_store::Store;
use tonic::{Request, Response, Status};

use super::namespace;
use crate::errors::task_status;
use crate::runtime::Runtimes;

#[derive(Debug)]
pub(crate) struct Tasks {
    store: Store,
    runtimes: Arc<Runtimes>,
}

impl Tasks {
    pub(crate) fn new(store: Store, runtimes: Arc<Runtimes>) -> Self {
        Tasks { store, runtimes }
    }
}

#[tonic::async_trait]
impl tasks_server::Tasks for Tasks {
    async fn create(
        &self,
        req: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let ns = namespace(&req)?;
        let r = self
            .runtimes
            .create_task(&self.store, &ns, req.into_inner())
            .await
            .map_err(task_status)?;
        Ok(Response::new(r))
    }

    async fn start(&self, req: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        let ns = namespace(&req)?;
        Ok(Response::new(
            self.runtimes
                .start_task(&ns, req.into_inner())
                .await
                .map_err(task_status)?,
        ))
    }

    async fn delete(
        &self,
        req: Request<DeleteTaskRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&req)?;
        let id = req.into_inner().container_id;
        Ok(Response::new(
            self.runtimes
                .delete_task_of(&ns, id)
                .await
                .map_err(task_status)?,
        ))
    }

    async fn delete_process(
        &self,
        req: Request<DeleteProcessRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&req)?;
        Ok(Response::new(
            self.runtimes
                .delete_process(&ns, req.into_inner())
                .await
                .map_err(task_status)?,
        ))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace(&req)?;
        let process = self
            .runtimes
            .process(&ns, req.into_inner())
            .await
            .map_err(task_status)?;
        Ok(Response::new(GetResponse {
            process: Some(process),
        }))
    }

    async fn list(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let ns = namespace(&req)?;
        let tasks = self.runtimes.processes(&ns).await;
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn kill(&self, req: Request<KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        self.runtimes
            .kill(&ns, req.into_inner())
            .await
            .map_err(task_status)?;
        Ok(Response::new(()))
    }

    async fn exec(&self, req: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        self.runtimes
            .exec(&ns, req.into_inner())
            .await
            .map_err(task_status)?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, req: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        self.runtimes
            .resize_pty(&ns, req.into_inner())
            .await
            .map_err(task_status)?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, req: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        self.runtimes
            .close_io(&ns, req.into_inner())
            .await
            .map_err(task_status)?;
        Ok(Response::new(()))
    }

    async fn pause(&self, req: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        self.runtimes
            .pause(&ns, req.into_inner().container_id)
            .await
            .map_err(task_status)?;
        Ok(Response::new(()))
    }

    async fn resume(&self, req: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        self.runtimes
            .resume(&ns, req.into_inner().container_id)
            .await
            .map_err(task_status)?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        req: Request<ListPidsRequest>,
    ) -> Result<Response<ListPidsResponse>, Status> {
        let ns = namespace(&req)?;
        Ok(Response::new(
            self.runtimes
                .pids(&ns, req.into_inner().container_id)
                .await
                .map_err(task_status)?,
        ))
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
        self.runtimes
            .update(&ns, req.into_inner())
            .await
            .map_err(task_status)?;
        Ok(Response::new(()))
    }

    async fn metrics(
        &self,
        req: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        let ns = namespace(&req)?;
        let filter = super::parse_filters(&req.into_inner().filters)?;
        let metrics = self.runtimes.metrics(&ns, &filter).await;
        Ok(Response::new(MetricsResponse { metrics }))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let ns = namespace(&req)?;
        Ok(Response::new(
            self.runtimes
                .wait(&ns, req.into_inner())
                .await
                .map_err(task_status)?,
        ))
    }
}
