//! The ttrpc face of the shim: `containerd.task.v2.Task` over [`Shim`], and `containerd.task.v3.Task`
//! as the same implementation (v3's messages are v2's, field for field; they are re-encoded).

use std::sync::Arc;

use berth_api::containerd::task::{v2, v3};
use berth_ttrpc::{Context, Status};
use prost::Message;

use crate::task::Shim;

/// `containerd.task.v2.Task`.
#[derive(Debug, Clone)]
pub(crate) struct TaskV2(pub(crate) Arc<Shim>);

/// `containerd.task.v3.Task`.
#[derive(Debug, Clone)]
pub(crate) struct TaskV3(pub(crate) TaskV2);

impl v2::task_ttrpc::Task for TaskV2 {
    async fn state(&self, _: Context, r: v2::StateRequest) -> Result<v2::StateResponse, Status> {
        Ok(self.0.state(&r.id, &r.exec_id)?)
    }

    async fn create(
        &self,
        ctx: Context,
        r: v2::CreateTaskRequest,
    ) -> Result<v2::CreateTaskResponse, Status> {
        if self.0.is_warm() {
            // containerd sends the namespace as `containerd-namespace-ttrpc`, berthd as
            // `containerd-namespace`.
            let ns = ctx
                .metadata
                .get("containerd-namespace-ttrpc")
                .or_else(|| ctx.metadata.get("containerd-namespace"));
            self.0.adopt(ns, &r.bundle)?;
        }
        let pid = self.0.create(r).await?;
        Ok(v2::CreateTaskResponse { pid })
    }

    async fn start(&self, _: Context, r: v2::StartRequest) -> Result<v2::StartResponse, Status> {
        let pid = self.0.start(&r.id, &r.exec_id).await?;
        Ok(v2::StartResponse { pid })
    }

    async fn delete(&self, _: Context, r: v2::DeleteRequest) -> Result<v2::DeleteResponse, Status> {
        let (pid, exit) = self.0.delete(&r.id, &r.exec_id).await?;
        Ok(v2::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(crate::sys::timestamp(exit.at)),
        })
    }

    async fn pids(&self, _: Context, r: v2::PidsRequest) -> Result<v2::PidsResponse, Status> {
        Ok(v2::PidsResponse {
            processes: self.0.pids(&r.id).await?,
        })
    }

    async fn pause(&self, _: Context, r: v2::PauseRequest) -> Result<(), Status> {
        Ok(self.0.pause(&r.id).await?)
    }

    async fn resume(&self, _: Context, r: v2::ResumeRequest) -> Result<(), Status> {
        Ok(self.0.resume(&r.id).await?)
    }

    async fn checkpoint(&self, _: Context, r: v2::CheckpointTaskRequest) -> Result<(), Status> {
        Ok(self.0.checkpoint(r).await?)
    }

    async fn kill(&self, _: Context, r: v2::KillRequest) -> Result<(), Status> {
        Ok(self.0.kill(r).await?)
    }

    async fn exec(&self, _: Context, r: v2::ExecProcessRequest) -> Result<(), Status> {
        Ok(self.0.exec(r)?)
    }

    async fn resize_pty(&self, _: Context, r: v2::ResizePtyRequest) -> Result<(), Status> {
        Ok(self.0.resize_pty(&r.id, &r.exec_id, r.width, r.height)?)
    }

    async fn close_io(&self, _: Context, r: v2::CloseIoRequest) -> Result<(), Status> {
        Ok(self.0.close_io(&r.id, &r.exec_id, r.stdin)?)
    }

    async fn update(&self, _: Context, r: v2::UpdateTaskRequest) -> Result<(), Status> {
        Ok(self.0.update(r).await?)
    }

    async fn wait(&self, _: Context, r: v2::WaitRequest) -> Result<v2::WaitResponse, Status> {
        Ok(self.0.wait(&r.id, &r.exec_id).await?)
    }

    async fn stats(&self, _: Context, r: v2::StatsRequest) -> Result<v2::StatsResponse, Status> {
        Ok(v2::StatsResponse {
            stats: Some(self.0.stats(&r.id)?),
        })
    }

    async fn connect(
        &self,
        _: Context,
        r: v2::ConnectRequest,
    ) -> Result<v2::ConnectResponse, Status> {
        Ok(self.0.connect(&r.id))
    }

    async fn shutdown(&self, _: Context, r: v2::ShutdownRequest) -> Result<(), Status> {
        self.0.shutdown(r.now);
        Ok(())
    }
}

/// Re-encodes a message as its twin in the other API version.
fn twin<A: Message, B: Message + Default>(m: &A) -> Result<B, Status> {
    B::decode(m.encode_to_vec().as_slice())
        .map_err(|e| Status::internal(format!("converting between task API versions: {e}")))
}

macro_rules! v3_via_v2 {
    ($($method:ident: $req:ident => $resp:ty, $resp3:ty;)*) => {
        impl v3::task_ttrpc::Task for TaskV3 {
            $(
                async fn $method(&self, ctx: Context, r: v3::$req) -> Result<$resp3, Status> {
                    let r: v2::$req = twin(&r)?;
                    let resp: $resp = v2::task_ttrpc::Task::$method(&self.0, ctx, r).await?;
                    twin(&resp)
                }
            )*
        }
    };
}

v3_via_v2! {
    state: StateRequest => v2::StateResponse, v3::StateResponse;
    create: CreateTaskRequest => v2::CreateTaskResponse, v3::CreateTaskResponse;
    start: StartRequest => v2::StartResponse, v3::StartResponse;
    delete: DeleteRequest => v2::DeleteResponse, v3::DeleteResponse;
    pids: PidsRequest => v2::PidsResponse, v3::PidsResponse;
    pause: PauseRequest => (), ();
    resume: ResumeRequest => (), ();
    checkpoint: CheckpointTaskRequest => (), ();
    kill: KillRequest => (), ();
    exec: ExecProcessRequest => (), ();
    resize_pty: ResizePtyRequest => (), ();
    close_io: CloseIoRequest => (), ();
    update: UpdateTaskRequest => (), ();
    wait: WaitRequest => v2::WaitResponse, v3::WaitResponse;
    stats: StatsRequest => v2::StatsResponse, v3::StatsResponse;
    connect: ConnectRequest => v2::ConnectResponse, v3::ConnectResponse;
    shutdown: ShutdownRequest => (), ();
}
