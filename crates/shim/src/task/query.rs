//! State, Wait, Pids, Stats, Connect, Shutdown.

use berth_api::containerd::runc::v1::ProcessDetails;
use berth_api::containerd::task::v2::{ConnectResponse, StateResponse, WaitResponse};
use berth_api::containerd::v1::types::ProcessInfo;
use prost::{Message, Name};

use super::Shim;
use crate::error::ShimError;
use crate::sys::timestamp;

fn any<M: Message + Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

impl Shim {
    pub(crate) fn state(&self, id: &str, exec_id: &str) -> Result<StateResponse, ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        let exit = p.exit();
        // As the Go shim: both ids are the process's own id (the container id for the init).
        let pid_id = if exec_id.is_empty() { id } else { exec_id };
        Ok(StateResponse {
            id: pid_id.to_string(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid(),
            status: p.status() as i32,
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| timestamp(e.at)),
            exec_id: pid_id.to_string(),
        })
    }

    pub(crate) async fn wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse, ShimError> {
        let p = self.container(id)?.process(exec_id)?;
        let exit = p.wait().await;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)),
        })
    }

    pub(crate) async fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>, ShimError> {
        let c = self.container(id)?;
        let pids = c.runc.ps(id).await?;
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                info: c
                    .exec_by_pid(pid)
                    .map(|exec_id| any(&ProcessDetails { exec_id })),
            })
            .collect())
    }

    /// The container's metrics: `io.containerd.cgroups.v1.Metrics`, or on a cgroup v2-only
    /// host `io.containerd.cgroups.v2.Metrics`.
    pub(crate) fn stats(&self, id: &str) -> Result<prost_types::Any, ShimError> {
        let c = self.container(id)?;
        let Some(cg) = &c.cgroups else {
            return Err(ShimError::NotFound(format!(
                "cgroup of {id} does not exist"
            )));
        };
        if cg.gone() {
            return Err(ShimError::NotFound(format!(
                "cgroup of {id} does not exist"
            )));
        }
        match cg.v2_only() {
            Some(dir) => Ok(any(&crate::stats_v2::metrics(dir))),
            None => Ok(any(&cg.metrics())),
        }
    }

    pub(crate) fn connect(&self, id: &str) -> ConnectResponse {
        ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.container(id).map_or(0, |c| c.init.pid()),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Shutdown: exits once no container is left (or at once with `now`). The socket goes
    /// before the answer (as with containerd's Go shim), so that when the caller has it, a task
    /// of the same id can get a shim at once.
    pub(crate) fn shutdown(&self, now: bool) {
        if now || self.container_count() == 0 {
            tracing::info!(now, "shutting down");
            self.release_socket();
            self.request_shutdown();
        }
    }
}
