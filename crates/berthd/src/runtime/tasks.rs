//! The task manager's verbs: each Tasks API request carried to its task's shim and answered in
//! the API's own types. Create starts the shim (or adopts a warm one), creates the task and
//! rolls the shim back if that fails; Delete ends the shim. The Tasks service only reads the
//! namespace and passes requests on: nothing outside `runtime/` holds a shim client.

use berth_api::containerd::services::tasks::v1 as api;
use berth_api::containerd::task::v2 as shim;
use berth_api::containerd::types::Metric;
use berth_api::containerd::v1::types::Process;

use super::*;

/// A shim's answer about one process, as the Tasks API shows it.
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

/// One call on a task's shim `$s` with the usual deadline, its error as the task manager's.
macro_rules! call {
    ($s:expr, $verb:ident, $req:expr) => {
        $s.client
            .$verb(&$s.opts(Some(CALL_TIMEOUT)), &$req)
            .await
            .map_err(TaskError::Shim)
    };
}

impl Runtimes {
    /// The shim of task `id` in `ns`.
    fn task(&self, ns: &str, id: &str) -> Result<Arc<Shim>, TaskError> {
        if id.is_empty() {
            return Err(TaskError::BadRequest("container_id: must be set".into()));
        }
        self.get(ns, id)
            .ok_or_else(|| TaskError::NoTask(format!("task {id:?}: not found")))
    }

    /// Tasks.Create: the container's record and rootfs from the store, its runtime's shim started,
    /// the task created in it (the shim stopped again if that fails).
    pub(crate) async fn create_task(
        &self,
        ns: &str,
        r: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        if r.container_id.is_empty() {
            return Err(TaskError::BadRequest("container_id: must be set".into()));
        }
        if r.checkpoint.is_some() {
            return Err(TaskError::Unsupported(
                "checkpoint: restoring a task from a checkpoint is not supported yet",
            ));
        }
        let store = &self.store;
        let c = store
            .get_container(ns, &r.container_id)
            .map_err(TaskError::Store)?;
        let spec = c
            .spec
            .as_ref()
            .map(|s| s.value.clone())
            .ok_or_else(|| TaskError::NotRunnable("container has no spec".into()))?;
        if serde_json::from_slice::<serde_json::Value>(&spec).is_err() {
            return Err(TaskError::BadRequest(format!(
                "container {:?}: its spec is not JSON",
                c.id
            )));
        }
        let mut rootfs = r.rootfs;
        if rootfs.is_empty() && !c.snapshot_key.is_empty() {
            rootfs = crate::pb::mounts_pb(
                store
                    .snapshot_mounts(ns, &c.snapshotter, &c.snapshot_key)
                    .map_err(TaskError::Store)?,
            );
        }
        let runtime = if r.runtime_path.is_empty() {
            c.runtime_name.clone()
        } else {
            r.runtime_path.clone()
        };
        let options = self.options_for(
            &runtime,
            r.options.clone().or_else(|| {
                c.runtime_options.as_ref().map(|o| prost_types::Any {
                    type_url: o.type_url.clone(),
                    value: o.value.clone(),
                })
            }),
        )?;
        let s = self
            .start_shim(ns, &c.id, &runtime, &spec, options.clone())
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
            Ok(resp) => Ok(api::CreateTaskResponse {
                container_id: c.id,
                pid: resp.pid,
            }),
            Err(e) => {
                self.stop_shim(&s).await;
                Err(TaskError::Shim(e))
            }
        }
    }

    /// Tasks.Start of the init or an exec.
    pub(crate) async fn start_task(
        &self,
        ns: &str,
        r: api::StartRequest,
    ) -> Result<api::StartResponse, TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let (id, exec_id) = (r.container_id, r.exec_id);
        let resp = call!(s, start, shim::StartRequest { id, exec_id })?;
        Ok(api::StartResponse { pid: resp.pid })
    }

    /// Tasks.Delete: the task deleted and its shim ended.
    pub(crate) async fn delete_task_of(
        &self,
        ns: &str,
        r: api::DeleteTaskRequest,
    ) -> Result<api::DeleteResponse, TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let d = self.delete_task(&s).await?;
        Ok(deleted(r.container_id, d))
    }

    /// Tasks.DeleteProcess of an exec.
    pub(crate) async fn delete_process(
        &self,
        ns: &str,
        r: api::DeleteProcessRequest,
    ) -> Result<api::DeleteResponse, TaskError> {
        if r.exec_id.is_empty() {
            return Err(TaskError::BadRequest("exec_id: must be set".into()));
        }
        let s = self.task(ns, &r.container_id)?;
        let (id, exec_id) = (r.container_id, r.exec_id.clone());
        let d = call!(s, delete, shim::DeleteRequest { id, exec_id })?;
        Ok(deleted(r.exec_id, d))
    }

    /// Tasks.Get: one process's state.
    pub(crate) async fn process(
        &self,
        ns: &str,
        r: api::GetRequest,
    ) -> Result<api::GetResponse, TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let (id, exec_id) = (r.container_id.clone(), r.exec_id);
        let st = call!(s, state, shim::StateRequest { id, exec_id })?;
        let process = Some(process(&r.container_id, st));
        Ok(api::GetResponse { process })
    }

    /// Tasks.List: each task's init; a shim that does not answer in time is left out rather than
    /// holding up the list.
    pub(crate) async fn processes(
        &self,
        ns: &str,
        _: api::ListTasksRequest,
    ) -> Result<api::ListTasksResponse, TaskError> {
        let mut tasks = Vec::new();
        for s in self.list(ns) {
            let (id, exec_id) = (s.id.clone(), String::new());
            if let Ok(st) = call!(s, state, shim::StateRequest { id, exec_id }) {
                tasks.push(process(&s.id, st));
            }
        }
        Ok(api::ListTasksResponse { tasks })
    }

    /// Tasks.Kill.
    pub(crate) async fn kill(&self, ns: &str, r: api::KillRequest) -> Result<(), TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let (id, exec_id, signal, all) = (r.container_id, r.exec_id, r.signal, r.all);
        call!(
            s,
            kill,
            shim::KillRequest {
                id,
                exec_id,
                signal,
                all
            }
        )
        .map(drop)
    }

    /// Tasks.Exec: an exec process added (started by Tasks.Start).
    pub(crate) async fn exec(&self, ns: &str, r: api::ExecProcessRequest) -> Result<(), TaskError> {
        if r.exec_id.is_empty() {
            return Err(TaskError::BadRequest("exec_id: must be set".into()));
        }
        let s = self.task(ns, &r.container_id)?;
        let req = shim::ExecProcessRequest {
            id: r.container_id,
            exec_id: r.exec_id,
            terminal: r.terminal,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            spec: r.spec,
        };
        call!(s, exec, req).map(drop)
    }

    /// Tasks.ResizePty.
    pub(crate) async fn resize_pty(
        &self,
        ns: &str,
        r: api::ResizePtyRequest,
    ) -> Result<(), TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let (id, exec_id, width, height) = (r.container_id, r.exec_id, r.width, r.height);
        call!(
            s,
            resize_pty,
            shim::ResizePtyRequest {
                id,
                exec_id,
                width,
                height
            }
        )
        .map(drop)
    }

    /// Tasks.CloseIO.
    pub(crate) async fn close_io(&self, ns: &str, r: api::CloseIoRequest) -> Result<(), TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let (id, exec_id, stdin) = (r.container_id, r.exec_id, r.stdin);
        call!(s, close_io, shim::CloseIoRequest { id, exec_id, stdin }).map(drop)
    }

    /// Tasks.Pause.
    pub(crate) async fn pause(&self, ns: &str, r: api::PauseTaskRequest) -> Result<(), TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let id = r.container_id;
        call!(s, pause, shim::PauseRequest { id }).map(drop)
    }

    /// Tasks.Resume.
    pub(crate) async fn resume(
        &self,
        ns: &str,
        r: api::ResumeTaskRequest,
    ) -> Result<(), TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let id = r.container_id;
        call!(s, resume, shim::ResumeRequest { id }).map(drop)
    }

    /// Tasks.ListPids.
    pub(crate) async fn pids(
        &self,
        ns: &str,
        r: api::ListPidsRequest,
    ) -> Result<api::ListPidsResponse, TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let id = r.container_id;
        let processes = call!(s, pids, shim::PidsRequest { id })?.processes;
        Ok(api::ListPidsResponse { processes })
    }

    /// Tasks.Checkpoint: not there yet.
    pub(crate) async fn checkpoint(
        &self,
        _: &str,
        _: api::CheckpointTaskRequest,
    ) -> Result<api::CheckpointTaskResponse, TaskError> {
        Err(TaskError::Unsupported(
            "checkpoint: not supported yet (the image of a checkpoint is not written)",
        ))
    }

    /// Tasks.Update.
    pub(crate) async fn update(
        &self,
        ns: &str,
        r: api::UpdateTaskRequest,
    ) -> Result<(), TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let (id, resources, annotations) = (r.container_id, r.resources, r.annotations);
        call!(
            s,
            update,
            shim::UpdateTaskRequest {
                id,
                resources,
                annotations
            }
        )
        .map(drop)
    }

    /// Tasks.Metrics of the tasks the filters match (by `id`); a shim that does not answer is
    /// left out.
    pub(crate) async fn metrics(
        &self,
        ns: &str,
        r: api::MetricsRequest,
    ) -> Result<api::MetricsResponse, TaskError> {
        let filter = berth_store::filters::parse_all(&r.filters)
            .map_err(|e| TaskError::BadRequest(format!("filters: {e}")))?;
        let mut metrics = Vec::new();
        for s in self.list(ns) {
            let id = s.id.clone();
            if !filter.matches(&|p: &[String]| match p.first().map(String::as_str) {
                Some("id") => Some(id.clone()),
                _ => None,
            }) {
                continue;
            }
            if let Ok(st) = call!(s, stats, shim::StatsRequest { id: id.clone() }) {
                metrics.push(Metric {
                    timestamp: crate::pb::sys_ts(std::time::SystemTime::now()),
                    id,
                    data: st.stats,
                });
            }
        }
        Ok(api::MetricsResponse { metrics })
    }

    /// Tasks.Wait: as long as the process runs (no deadline).
    pub(crate) async fn wait(
        &self,
        ns: &str,
        r: api::WaitRequest,
    ) -> Result<api::WaitResponse, TaskError> {
        let s = self.task(ns, &r.container_id)?;
        let (id, exec_id) = (r.container_id, r.exec_id);
        let w = s
            .client
            .wait(&s.opts(None), &shim::WaitRequest { id, exec_id })
            .await
            .map_err(TaskError::Shim)?;
        let (exit_status, exited_at) = (w.exit_status, w.exited_at);
        Ok(api::WaitResponse {
            exit_status,
            exited_at,
        })
    }
}

/// A shim's Delete answer as the Tasks API's, for process `id`.
fn deleted(id: String, d: shim::DeleteResponse) -> api::DeleteResponse {
    api::DeleteResponse {
        id,
        pid: d.pid,
        exit_status: d.exit_status,
        exited_at: d.exited_at,
    }
}
