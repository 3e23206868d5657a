//! Exec (record an exec process) and starting it (`runc exec --detach`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use berth_api::containerd::events::{TaskExecAdded, TaskExecStarted};
use berth_api::containerd::task::v2::ExecProcessRequest;
use berth_api::containerd::v1::types::Status as TaskStatus;

use super::create::{read_pid_file, run_with_console};
use super::{Container, Process, Shim, lock};
use crate::error::ShimError;
use crate::stdio::{PreparedIo, StdioPaths};

impl Shim {
    pub(crate) fn exec(&self, req: ExecProcessRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument(
                "exec id must not be empty".into(),
            ));
        }
        let Some(spec) = req.spec else {
            return Err(ShimError::InvalidArgument(
                "exec without a process spec".into(),
            ));
        };
        // The request's terminal flag is the process's, as the Go shim has it: containerd's
        // client asks for a terminal in the request and leaves the spec's flag unset.
        let process = match serde_json::from_slice::<serde_json::Value>(&spec.value) {
            Ok(mut v) if v.is_object() => {
                v["terminal"] = serde_json::Value::Bool(req.terminal);
                serde_json::to_vec(&v).map_err(|e| {
                    ShimError::InvalidArgument(format!("exec spec: re-encoding it: {e}"))
                })?
            }
            _ => {
                return Err(ShimError::InvalidArgument(format!(
                    "exec spec ({}) is not an OCI process JSON object",
                    spec.type_url
                )));
            }
        };
        let status = c.init.status();
        if status != TaskStatus::Running && status != TaskStatus::Paused {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!("id {}", req.exec_id)));
            }
            let stdio = StdioPaths {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                terminal: req.terminal,
            };
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Process::new(req.exec_id.clone(), stdio, process)),
            );
        }
        self.publisher.publish(
            "/tasks/exec-added",
            &TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
            },
        );
        Ok(())
    }

    /// Runs a created exec; the caller holds its lifecycle lock.
    pub(super) async fn start_exec(
        self: &Arc<Self>,
        c: &Arc<Container>,
        p: &Arc<Process>,
    ) -> Result<u32, ShimError> {
        let seq = c.exec_seq.fetch_add(1, Ordering::Relaxed);
        let spec_file = c.bundle.join(format!("exec-{seq}.json"));
        let pid_file = c.bundle.join(format!("exec-{seq}.pid"));
        std::fs::write(&spec_file, &p.spec)
            .map_err(|e| ShimError::io(format!("writing {}", spec_file.display()), e))?;
        let cleanup = || {
            let _ = std::fs::remove_file(&spec_file);
            let _ = std::fs::remove_file(&pid_file);
        };
        let mut prepared = match PreparedIo::new(&p.stdio, c.io_uid, c.io_gid) {
            Ok(p) => p,
            Err(e) => {
                cleanup();
                return Err(e.into());
            }
        };
        let child = std::mem::take(&mut prepared.child);
        let console_path = prepared.console.as_ref().map(|s| s.path().to_path_buf());
        let ran = run_with_console(
            &prepared,
            c.runc
                .exec(&c.id, &spec_file, &pid_file, console_path.as_deref(), child),
        )
        .await;
        let pid = ran.and_then(|master| Ok((master, read_pid_file(&pid_file)?)));
        cleanup();
        let (master, pid) = pid?;
        let exited = self.reaper.subscribe(pid as i32);
        let io = prepared.start(master)?;
        {
            let mut st = lock(&p.state);
            st.pid = pid;
            st.status = TaskStatus::Running;
        }
        *lock(&p.io) = io;
        self.publisher.publish(
            "/tasks/exec-started",
            &TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: p.exec_id.clone(),
                pid,
            },
        );
        self.watch_exit(c.clone(), p.clone(), exited);
        tracing::info!(container = %c.id, exec = %p.exec_id, pid, "exec started");
        Ok(pid)
    }
}
