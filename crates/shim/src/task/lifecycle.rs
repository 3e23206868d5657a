//! Start, Pause, Resume, Update, Checkpoint, CloseIO, ResizePty.

use std::path::PathBuf;
use std::sync::Arc;

use berth_api::containerd::events::{TaskCheckpointed, TaskPaused, TaskResumed, TaskStart};
use berth_api::containerd::runc::v1::CheckpointOptions;
use berth_api::containerd::task::v2::{CheckpointTaskRequest, UpdateTaskRequest};
use berth_api::containerd::v1::types::Status as TaskStatus;
use prost::Message;

use super::Shim;
use crate::error::ShimError;
use crate::runc::CheckpointOpts;

fn status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Unknown => "unknown",
        TaskStatus::Created => "created",
        TaskStatus::Running => "running",
        TaskStatus::Stopped => "stopped",
        TaskStatus::Paused => "paused",
        TaskStatus::Pausing => "pausing",
    }
}

impl Shim {
    /// Start: the init (`runc start`) or an exec (`runc exec`). Returns the pid.
    pub(crate) async fn start(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let _order = p.lifecycle.lock().await;
        let status = p.status();
        if status != TaskStatus::Created {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot start a {} process",
                status_name(status)
            )));
        }
        if !exec_id.is_empty() {
            return self.start_exec(&c, &p).await;
        }
        c.runc.start(id).await?;
        p.set_status(TaskStatus::Running);
        let pid = p.pid();
        self.publisher.publish(
            "/tasks/start",
            &TaskStart {
                container_id: id.to_string(),
                pid,
            },
        );
        tracing::info!(container = %id, pid, "started");
        Ok(pid)
    }

    pub(crate) async fn pause(&self, id: &str) -> Result<(), ShimError> {
        let c = self.container(id)?;
        let _order = c.init.lifecycle.lock().await;
        let status = c.init.status();
        if status != TaskStatus::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot pause a {} container",
                status_name(status)
            )));
        }
        c.runc.pause(id).await?;
        c.init.set_status(TaskStatus::Paused);
        self.publisher.publish(
            "/tasks/paused",
            &TaskPaused {
                container_id: id.to_string(),
            },
        );
        Ok(())
    }

    pub(crate) async fn resume(&self, id: &str) -> Result<(), ShimError> {
        let c = self.container(id)?;
        let _order = c.init.lifecycle.lock().await;
        let status = c.init.status();
        if status != TaskStatus::Paused {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot resume a {} container",
                status_name(status)
            )));
        }
        c.runc.resume(id).await?;
        c.init.set_status(TaskStatus::Running);
        self.publisher.publish(
            "/tasks/resumed",
            &TaskResumed {
                container_id: id.to_string(),
            },
        );
        Ok(())
    }

    pub(crate) async fn update(&self, req: UpdateTaskRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        if req
            .annotations
            .contains_key(crate::crilog::REOPEN_ANNOTATION)
        {
            c.init.reopen_log().map_err(|source| ShimError::Io {
                context: "reopening the container log".into(),
                source,
            })?;
            if req.resources.is_none() {
                return Ok(());
            }
        }
        let Some(resources) = req.resources else {
            return Err(ShimError::InvalidArgument(
                "update without resources".into(),
            ));
        };
        if serde_json::from_slice::<serde_json::Value>(&resources.value).is_err() {
            return Err(ShimError::InvalidArgument(format!(
                "resources ({}) are not OCI LinuxResources JSON",
                resources.type_url
            )));
        }
        if c.init.status() == TaskStatus::Stopped {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is stopped",
                req.id
            )));
        }
        c.runc.update(&req.id, resources.value).await?;
        Ok(())
    }

    pub(crate) fn close_io(&self, id: &str, exec_id: &str, stdin: bool) -> Result<(), ShimError> {
        let p = self.container(id)?.process(exec_id)?;
        if stdin {
            p.close_stdin();
        }
        Ok(())
    }

    pub(crate) fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimError> {
        let p = self.container(id)?.process(exec_id)?;
        p.resize(width, height)
            .map_err(|e| ShimError::io("resizing the pty", e))
    }

    /// Checkpoint with CRIU through the runtime's `checkpoint` command.
    pub(crate) async fn checkpoint(&self, req: CheckpointTaskRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        let o = match &req.options {
            Some(any) if !any.value.is_empty() || !any.type_url.is_empty() => {
                let name = any.type_url.rsplit('/').next().unwrap_or_default();
                if name != "containerd.runc.v1.CheckpointOptions" {
                    return Err(ShimError::InvalidArgument(format!(
                        "checkpoint options of type {} are not supported",
                        any.type_url
                    )));
                }
                CheckpointOptions::decode(any.value.as_slice()).map_err(|e| {
                    ShimError::InvalidArgument(format!("decoding checkpoint options: {e}"))
                })?
            }
            _ => CheckpointOptions::default(),
        };
        let image = if !o.image_path.is_empty() {
            PathBuf::from(&o.image_path)
        } else if !req.path.is_empty() {
            PathBuf::from(&req.path)
        } else {
            return Err(ShimError::InvalidArgument(
                "checkpoint needs a path for the image".into(),
            ));
        };
        let work = if o.work_path.is_empty() {
            c.bundle.join("criu-work")
        } else {
            PathBuf::from(&o.work_path)
        };
        let _order = c.init.lifecycle.lock().await;
        let status = c.init.status();
        if status != TaskStatus::Running && status != TaskStatus::Paused {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot checkpoint a {} container",
                status_name(status)
            )));
        }
        std::fs::create_dir_all(&image)
            .map_err(|e| ShimError::io(format!("creating {}", image.display()), e))?;
        std::fs::create_dir_all(&work)
            .map_err(|e| ShimError::io(format!("creating {}", work.display()), e))?;
        let opts = CheckpointOpts {
            image_path: image.clone(),
            work_path: work,
            leave_running: !o.exit,
            tcp_established: o.open_tcp,
            ext_unix_sk: o.external_unix_sockets,
            shell_job: o.terminal || c.init.stdio.terminal,
            file_locks: o.file_locks,
            empty_ns: o.empty_namespaces.clone(),
            cgroups_mode: o.cgroups_mode.clone(),
        };
        c.runc.checkpoint(&req.id, &opts).await?;
        self.publisher.publish(
            "/tasks/checkpointed",
            &TaskCheckpointed {
                container_id: req.id.clone(),
                checkpoint: image.display().to_string(),
            },
        );
        Ok(())
    }
}
