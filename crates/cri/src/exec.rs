//! ExecSync: a process in a running container, its output collected through FIFOs, with a
//! time limit after which it is killed (the answer is then DeadlineExceeded, which the kubelet
//! reads as a probe timeout, as with containerd).

use std::path::Path;
use std::time::Duration;

use berth_api::containerd::services::containers::v1 as ctrd;
use berth_api::containerd::services::tasks::v1 as tasks;
use berth_api::runtime::v1 as cri;
use serde_json::Value;
use tonic::Status;

use crate::state::Inner;

/// Output kept per stream; the rest is read and dropped (the kubelet caps at 16 MiB too).
const MAX_OUTPUT: usize = 16 << 20;

/// Reads a FIFO until `done` fires, then what is left in it, keeping at most [`MAX_OUTPUT`].
/// Opened read-write, so the open never waits and no EOF comes before the shim's end opens;
/// the shim writes all of a process's output before it reports the exit, which fires `done`.
async fn collect(
    path: std::path::PathBuf,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Vec<u8>> {
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 << 10];
    let mut take = |rx: &tokio::net::unix::pipe::Receiver, out: &mut Vec<u8>| loop {
        match rx.try_read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    };
    loop {
        tokio::select! {
            r = rx.readable() => {
                r?;
                if take(&rx, &mut out)? {
                    return Ok(out);
                }
            }
            _ = done.wait_for(|d| *d) => {
                take(&rx, &mut out)?;
                return Ok(out);
            }
        }
    }
}

/// Deletes exec `exec_id` of container `id` (the shim forgets it) in the background: the
/// caller has its exit code and need not wait for the round trip before answering.
pub(crate) fn delete_exec_later(api: &crate::api::Api, id: &str, exec_id: &str) {
    let (api, req) = (
        api.clone(),
        tasks::DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        },
    );
    tokio::spawn(async move {
        let _ = api.tasks().delete_process(api.req(req)).await;
    });
}

/// Removes an exec's FIFO directory off the request's path (the answer need not wait for the
/// file system). What a crash leaves is swept at the CRI's next start.
pub(crate) fn remove_exec_dir_later(dir: std::path::PathBuf) {
    tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// SIGKILLs exec `exec_id` of container `id` and waits (up to 10 s) for its end.
pub(crate) async fn kill_exec(api: &crate::api::Api, id: &str, exec_id: &str) {
    let t = api.tasks();
    let _ = t
        .kill(api.req(tasks::KillRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal: libc::SIGKILL as u32,
            all: false,
        }))
        .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        t.wait(api.req(tasks::WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        })),
    )
    .await;
}

/// A streaming request's refusal as the kubelet's streaming server codes it.
fn stream_status(e: berth_stream::StreamError) -> Status {
    match e {
        berth_stream::StreamError::TooManyRequests => Status::resource_exhausted(e.to_string()),
        berth_stream::StreamError::Bind { .. } => Status::internal(e.to_string()),
        e => Status::invalid_argument(e.to_string()),
    }
}

impl Inner {
    /// Exec: the streaming server's URL for an exec in a running container.
    pub(crate) fn exec_url(&self, r: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
        let c = self.running_container(&r.container_id)?;
        let (container_id, cmd, tty) = (c.id, r.cmd, r.tty);
        let (stdin, stdout, stderr) = (r.stdin, r.stdout, r.stderr);
        let exec = berth_stream::ExecRequest {
            container_id,
            cmd,
            tty,
            stdin,
            stdout,
            stderr,
        };
        let url = self.stream_server()?.get_exec(exec);
        let url = url.map_err(stream_status)?;
        Ok(cri::ExecResponse { url })
    }

    /// Attach: the streaming server's URL for the stdio of a running container.
    pub(crate) fn attach_url(&self, r: cri::AttachRequest) -> Result<cri::AttachResponse, Status> {
        let c = self.running_container(&r.container_id)?;
        let (container_id, tty) = (c.id, r.tty);
        let (stdin, stdout, stderr) = (r.stdin, r.stdout, r.stderr);
        let attach = berth_stream::AttachRequest {
            container_id,
            tty,
            stdin,
            stdout,
            stderr,
        };
        let url = self.stream_server()?.get_attach(attach);
        let url = url.map_err(stream_status)?;
        Ok(cri::AttachResponse { url })
    }

    /// PortForward: the streaming server's URL for ports of a ready sandbox's network.
    pub(crate) fn port_forward_url(
        &self,
        r: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, Status> {
        let sb = self.ready_sandbox(&r.pod_sandbox_id)?;
        let (pod_sandbox_id, ports) = (sb.id, r.port);
        let url = self
            .stream_server()?
            .get_port_forward(berth_stream::PortForwardRequest {
                pod_sandbox_id,
                ports,
            })
            .map_err(stream_status)?;
        Ok(cri::PortForwardResponse { url })
    }

    /// Container `id`, which must be running (exec and attach reach its processes).
    pub(crate) fn running_container(&self, id: &str) -> Result<crate::meta::Container, Status> {
        let c = self.meta.find_container(id)?;
        if c.state() != cri::ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!(
                "container {}: is {}, not running",
                c.id,
                c.state().as_str_name()
            )));
        }
        Ok(c)
    }

    /// The process part of a container's spec, for an exec.
    pub(crate) async fn exec_process(
        &self,
        id: &str,
        cmd: &[String],
        tty: bool,
    ) -> Result<Value, Status> {
        let rec = self
            .api
            .containers()
            .get(
                self.api
                    .req(ctrd::GetContainerRequest { id: id.to_string() }),
            )
            .await?
            .into_inner()
            .container
            .unwrap_or_default();
        let spec: Value = rec
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| Status::internal(format!("container {id}: its spec is unreadable")))?;
        let mut p = spec.get("process").cloned().unwrap_or_default();
        p["args"] = serde_json::json!(cmd);
        p["terminal"] = serde_json::json!(tty);
        Ok(p)
    }

    pub(crate) async fn exec_sync(
        &self,
        req: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, Status> {
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd: must not be empty"));
        }
        let c = self.running_container(&req.container_id)?;
        let process = self.exec_process(&c.id, &req.cmd, false).await?;
        let exec_id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.dirs.state.join("exec").join(&exec_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Status::internal(format!("exec directory: {e}")))?;
        let r = self
            .exec_in(&c.id, &exec_id, &dir, process, req.timeout)
            .await;
        remove_exec_dir_later(dir);
        r
    }

    async fn exec_in(
        &self,
        id: &str,
        exec_id: &str,
        dir: &Path,
        process: Value,
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, Status> {
        let (out, err) = (dir.join("stdout"), dir.join("stderr"));
        for p in [&out, &err] {
            crate::container::make_fifo(p)
                .map_err(|e| Status::internal(format!("exec FIFO {}: {e}", p.display())))?;
        }
        // Our read ends first, so the shim's opens and writes never wait for us.
        let (done, done_rx) = tokio::sync::watch::channel(false);
        let stdout = tokio::spawn(collect(out.clone(), done_rx.clone()));
        let stderr = tokio::spawn(collect(err.clone(), done_rx));
        let t = self.api.tasks();
        let exec = t
            .exec(self.api.req(tasks::ExecProcessRequest {
                container_id: id.to_string(),
                stdin: String::new(),
                stdout: out.to_string_lossy().into_owned(),
                stderr: err.to_string_lossy().into_owned(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&process).expect("JSON"),
                }),
                exec_id: exec_id.to_string(),
            }))
            .await;
        if let Err(e) = exec {
            stdout.abort();
            stderr.abort();
            return Err(e);
        }
        let w = t;
        let wait_req = self.api.req(tasks::WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        let started = t
            .start(self.api.req(tasks::StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
        let result = match started {
            Err(e) => Err(e),
            Ok(_) => {
                let wait = w.wait(wait_req);
                let limited = if timeout > 0 {
                    tokio::time::timeout(Duration::from_secs(timeout as u64), wait)
                        .await
                        .ok()
                } else {
                    Some(wait.await)
                };
                match limited {
                    Some(Ok(r)) => Ok(r.into_inner().exit_status as i32),
                    Some(Err(e)) => Err(e),
                    None => {
                        // Timed out: kill it, wait for it, and say so.
                        kill_exec(&self.api, id, exec_id).await;
                        Err(Status::deadline_exceeded(format!(
                            "command timed out: timeout {timeout}s exceeded"
                        )))
                    }
                }
            }
        };
        delete_exec_later(&self.api, id, exec_id);
        let code = match result {
            Ok(c) => c,
            Err(e) => {
                stdout.abort();
                stderr.abort();
                return Err(e);
            }
        };
        let _ = done.send(true);
        let grab = |h: tokio::task::JoinHandle<std::io::Result<Vec<u8>>>| async move {
            match tokio::time::timeout(Duration::from_secs(5), h).await {
                Ok(Ok(Ok(v))) => v,
                _ => Vec::new(),
            }
        };
        Ok(cri::ExecSyncResponse {
            stdout: grab(stdout).await,
            stderr: grab(stderr).await,
            exit_code: code,
        })
    }
}
