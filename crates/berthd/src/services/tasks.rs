//! `containerd.services.tasks.v1.Tasks`: tasks of containers, each run by its own shim. The
//! runtime manager does the work (`runtime/tasks.rs`, one verb a call, named in the table
//! below); this reads the namespace, passes the request on and maps the manager's error.

use std::sync::Arc;

use berth_api::containerd::services::tasks::v1::{
    CheckpointTaskRequest, CheckpointTaskResponse, CloseIoRequest, CreateTaskRequest,
    CreateTaskResponse, DeleteProcessRequest, DeleteResponse, DeleteTaskRequest,
    ExecProcessRequest, GetRequest, GetResponse, KillRequest, ListPidsRequest, ListPidsResponse,
    ListTasksRequest, ListTasksResponse, MetricsRequest, MetricsResponse, PauseTaskRequest,
    ResizePtyRequest, ResumeTaskRequest, StartRequest, StartResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse, tasks_server,
};
use tonic::{Request, Response, Status};

use super::namespace;
use crate::errors::task_status;
use crate::runtime::Runtimes;

#[derive(Debug)]
pub(crate) struct Tasks {
    runtimes: Arc<Runtimes>,
}

impl Tasks {
    pub(crate) fn new(runtimes: Arc<Runtimes>) -> Self {
        Tasks { runtimes }
    }
}

/// The Tasks service as a table: each RPC, its request and answer, and the task manager's verb.
macro_rules! verbs {
    ($($rpc:ident($req:ty) -> $resp:ty = $verb:ident;)*) => {
        #[tonic::async_trait]
        impl tasks_server::Tasks for Tasks {
            $(async fn $rpc(&self, req: Request<$req>) -> Result<Response<$resp>, Status> {
                let ns = namespace(&req)?;
                let answer = self.runtimes.$verb(&ns, req.into_inner()).await;
                answer.map(Response::new).map_err(task_status)
            })*
        }
    };
}

verbs! {
    create(CreateTaskRequest) -> CreateTaskResponse = create_task;
    start(StartRequest) -> StartResponse = start_task;
    delete(DeleteTaskRequest) -> DeleteResponse = delete_task_of;
    delete_process(DeleteProcessRequest) -> DeleteResponse = delete_process;
    get(GetRequest) -> GetResponse = process;
    list(ListTasksRequest) -> ListTasksResponse = processes;
    kill(KillRequest) -> () = kill;
    exec(ExecProcessRequest) -> () = exec;
    resize_pty(ResizePtyRequest) -> () = resize_pty;
    close_io(CloseIoRequest) -> () = close_io;
    pause(PauseTaskRequest) -> () = pause;
    resume(ResumeTaskRequest) -> () = resume;
    list_pids(ListPidsRequest) -> ListPidsResponse = pids;
    checkpoint(CheckpointTaskRequest) -> CheckpointTaskResponse = checkpoint;
    update(UpdateTaskRequest) -> () = update;
    metrics(MetricsRequest) -> MetricsResponse = metrics;
    wait(WaitRequest) -> WaitResponse = wait;
}
