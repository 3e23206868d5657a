//! `berthctl containers ls|info|rm|label` and `berthctl tasks ls|kill|pause|resume|ps|metrics|
//! exec|rm`, printing what ctr prints.

use anyhow::Context;
use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_api::containerd::services::containers::v1::{
    Container, DeleteContainerRequest, GetContainerRequest, ListContainersRequest,
    UpdateContainerRequest,
};
use berth_api::containerd::services::snapshots::v1::RemoveSnapshotRequest;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::tasks::v1::tasks_client::TasksClient;
use berth_api::containerd::services::tasks::v1::{
    DeleteTaskRequest, ExecProcessRequest, KillRequest, ListPidsRequest, ListTasksRequest,
    MetricsRequest, PauseTaskRequest, ResumeTaskRequest, StartRequest, WaitRequest,
};

use super::ListArgs;
use super::{format_labels, labels_mask, parse_labels};
use crate::client::Conn;
use crate::table::{Table, quiet_or};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ContainersAction {
    /// List containers.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show a container as JSON.
    Info {
        /// The container.
        id: String,
    },
    /// Delete containers (and their snapshots). A container whose task exists is refused;
    /// `--force` kills and deletes the task first.
    #[command(alias = "del", alias = "delete", alias = "remove")]
    Rm {
        /// Kill (SIGKILL) and delete each container's task first, as `nerdctl rm -f`.
        #[arg(short, long)]
        force: bool,
        /// The containers.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Set (`key=value`) or remove (`key`) labels.
    Label {
        /// The container.
        id: String,
        /// Labels: `key=value` sets one, `key` alone removes it.
        labels: Vec<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TasksAction {
    /// List tasks.
    #[command(alias = "list")]
    Ls {
        /// Print only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Signal a task (default SIGTERM).
    Kill {
        /// The task's container.
        id: String,
        /// Signal number or name (`KILL`, `SIGTERM`, `9`).
        #[arg(short, long, default_value = "SIGTERM")]
        signal: String,
        /// Every process of the container.
        #[arg(long)]
        all: bool,
        /// An exec'd process instead of the init.
        #[arg(long)]
        exec_id: Option<String>,
    },
    /// Freeze a task.
    Pause {
        /// The task's container.
        id: String,
    },
    /// Thaw a task.
    Resume {
        /// The task's container.
        id: String,
    },
    /// A task's processes.
    Ps {
        /// The task's container.
        id: String,
    },
    /// A task's cgroup metrics (raw, as the shim reports them).
    Metrics {
        /// The task's container.
        id: String,
    },
    /// Run another process in a task; waits for it and exits with its status.
    Exec {
        /// The task's container.
        id: String,
        /// An id for the new process, unique among the task's processes (as ctr's).
        #[arg(long)]
        exec_id: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
        /// Directory for the stdio FIFOs, which the shim must see too (default: the temporary
        /// directory); a directory of their own is made in it and removed afterwards.
        #[arg(long)]
        fifo_dir: Option<std::path::PathBuf>,
    },
    /// Delete a stopped task (`-f`: kill it first).
    #[command(alias = "del", alias = "delete", alias = "remove")]
    Rm {
        /// The task's container.
        id: String,
        #[arg(short, long)]
        force: bool,
    },
}

const STATUS: [&str; 6] = [
    "UNKNOWN", "CREATED", "RUNNING", "STOPPED", "PAUSED", "PAUSING",
];

fn signal_number(s: &str) -> anyhow::Result<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    let n = match name.as_str() {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        _ => anyhow::bail!("unknown signal {s:?}"),
    };
    Ok(n as u32)
}

async fn get(conn: &Conn, id: &str) -> anyhow::Result<Container> {
    ContainersClient::new(conn.channel.clone())
        .get(conn.req(GetContainerRequest { id: id.into() }))
        .await?
        .into_inner()
        .container
        .context("no container in the answer")
}

pub(crate) async fn containers(conn: &Conn, action: ContainersAction) -> anyhow::Result<()> {
    let mut c = ContainersClient::new(conn.channel.clone());
    match action {
        ContainersAction::Ls(ListArgs { quiet, filters }) => {
            let list = c
                .list(conn.req(ListContainersRequest { filters }))
                .await?
                .into_inner()
                .containers;
            let t = Table::new(&["CONTAINER", "IMAGE", "RUNTIME"], 4);
            let Some(mut t) = quiet_or(quiet, &list, |x| &x.id, t) else {
                return Ok(());
            };
            for x in list {
                let image = if x.image.is_empty() {
                    "-".into()
                } else {
                    x.image
                };
                t.row(vec![
                    x.id,
                    image,
                    x.runtime.map(|r| r.name).unwrap_or_default(),
                ]);
            }
            print!("{}", t.render());
        }
        ContainersAction::Info { id } => {
            let x = get(conn, &id).await?;
            let spec: serde_json::Value = x
                .spec
                .as_ref()
                .and_then(|s| serde_json::from_slice(&s.value).ok())
                .unwrap_or(serde_json::Value::Null);
            let v = serde_json::json!({
                "ID": x.id, "Labels": x.labels, "Image": x.image,
                "Runtime": {"Name": x.runtime.as_ref().map(|r| r.name.clone())},
                "SnapshotKey": x.snapshot_key, "Snapshotter": x.snapshotter,
                "Spec": spec,
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ContainersAction::Rm { force, ids } => {
            let mut failed = false;
            for id in ids {
                let r = async {
                    let x = get(conn, &id).await?;
                    if force {
                        kill_and_delete_task(conn, &id).await?;
                    }
                    c.clone()
                        .delete(conn.req(DeleteContainerRequest { id: id.clone() }))
                        .await?;
                    if !x.snapshot_key.is_empty() {
                        let _ = SnapshotsClient::new(conn.channel.clone())
                            .remove(conn.req(RemoveSnapshotRequest {
                                snapshotter: x.snapshotter,
                                key: x.snapshot_key,
                            }))
                            .await;
                    }
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = r {
                    let e = crate::describe(&e);
                    if e.contains(&format!("{id:?}")) {
                        eprintln!("berthctl: {e}");
                    } else {
                        eprintln!("berthctl: {id}: {e}");
                    }
                    failed = true;
                }
            }
            anyhow::ensure!(!failed, "some containers were not removed");
        }
        ContainersAction::Label { id, labels } => {
            let labels = parse_labels(&labels)?;
            let update_mask = labels_mask(&labels);
            let x = c
                .update(conn.req(UpdateContainerRequest {
                    container: Some(Container {
                        id,
                        labels,
                        ..Default::default()
                    }),
                    update_mask,
                }))
                .await?
                .into_inner()
                .container
                .context("no container in the answer")?;
            println!("{}", format_labels(&x.labels));
        }
    }
    Ok(())
}

pub(crate) async fn tasks(conn: &Conn, action: TasksAction) -> anyhow::Result<()> {
    let mut t = TasksClient::new(conn.channel.clone());
    match action {
        TasksAction::Ls { quiet } => {
            let list = t
                .list(conn.req(ListTasksRequest::default()))
                .await?
                .into_inner()
                .tasks;
            let tbl = Table::new(&["TASK", "PID", "STATUS"], 4);
            let Some(mut tbl) = quiet_or(quiet, &list, |p| &p.id, tbl) else {
                return Ok(());
            };
            for p in list {
                let st = STATUS.get(p.status as usize).copied().unwrap_or("UNKNOWN");
                tbl.row(vec![p.id, p.pid.to_string(), st.to_string()]);
            }
            print!("{}", tbl.render());
        }
        TasksAction::Kill {
            id,
            signal,
            all,
            exec_id,
        } => {
            t.kill(conn.req(KillRequest {
                container_id: id,
                exec_id: exec_id.unwrap_or_default(),
                signal: signal_number(&signal)?,
                all,
            }))
            .await?;
        }
        TasksAction::Pause { id } => {
            t.pause(conn.req(PauseTaskRequest { container_id: id }))
                .await?;
        }
        TasksAction::Resume { id } => {
            t.resume(conn.req(ResumeTaskRequest { container_id: id }))
                .await?;
        }
        TasksAction::Ps { id } => {
            let ps = t
                .list_pids(conn.req(ListPidsRequest { container_id: id }))
                .await?
                .into_inner()
                .processes;
            let mut tbl = Table::new(&["PID", "INFO"], 4);
            for p in ps {
                tbl.row(vec![p.pid.to_string(), "-".into()]);
            }
            print!("{}", tbl.render());
        }
        TasksAction::Metrics { id } => {
            let m = t
                .metrics(conn.req(MetricsRequest {
                    filters: vec![format!("id=={id}")],
                }))
                .await?
                .into_inner()
                .metrics;
            let m = m
                .into_iter()
                .next()
                .with_context(|| format!("task {id:?}: no metrics"))?;
            let data = m.data.unwrap_or_default();
            println!(
                "ID    {}\nTYPE  {}\nBYTES {}",
                m.id,
                data.type_url,
                data.value.len()
            );
        }
        TasksAction::Exec {
            id,
            exec_id,
            args,
            fifo_dir,
        } => {
            let x = get(conn, &id).await?;
            let spec: serde_json::Value = x
                .spec
                .as_ref()
                .and_then(|s| serde_json::from_slice(&s.value).ok())
                .context("the container's spec is not JSON")?;
            let mut process = spec
                .get("process")
                .cloned()
                .context("spec without a process")?;
            process["args"] = serde_json::json!(args);
            process["terminal"] = serde_json::json!(false);
            let dir = fifo_dir
                .unwrap_or_else(std::env::temp_dir)
                .join(format!("berthctl-{id}-{exec_id}-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let out = dir.join("stdout");
            let err = dir.join("stderr");
            for p in [&out, &err] {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
                // SAFETY: a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
            }
            let copy = |p: std::path::PathBuf, mut to: Box<dyn std::io::Write + Send>| {
                std::thread::spawn(move || {
                    use std::io::Read;
                    if let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).open(&p) {
                        let mut buf = [0u8; 8192];
                        while let Ok(n) = f.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            let _ = to.flush();
                        }
                    }
                })
            };
            copy(out.clone(), Box::new(std::io::stdout()));
            copy(err.clone(), Box::new(std::io::stderr()));
            t.exec(conn.req(ExecProcessRequest {
                container_id: id.clone(),
                stdin: String::new(),
                stdout: out.display().to_string(),
                stderr: err.display().to_string(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&process)?,
                }),
                exec_id: exec_id.clone(),
            }))
            .await?;
            let mut w = t.clone();
            let wreq = conn.req(WaitRequest {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
            });
            let wait = tokio::spawn(async move { w.wait(wreq).await });
            t.start(conn.req(StartRequest {
                container_id: id.clone(),
                exec_id: exec_id.clone(),
            }))
            .await?;
            let status = wait.await??.into_inner().exit_status;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = t
                .delete_process(conn.req(
                    berth_api::containerd::services::tasks::v1::DeleteProcessRequest {
                        container_id: id,
                        exec_id,
                    },
                ))
                .await;
            let _ = std::fs::remove_dir_all(&dir);
            std::process::exit(status as i32);
        }
        TasksAction::Rm { id, force } => {
            if force {
                kill_task(conn, &id).await;
            }
            let r = t
                .delete(conn.req(DeleteTaskRequest { container_id: id }))
                .await?
                .into_inner();
            println!("{} exited with {}", r.id, r.exit_status);
        }
    }
    Ok(())
}

/// SIGKILLs every process of task `id` and waits for its exit (errors ignored: a task that
/// is not there or already stopped is fine).
async fn kill_task(conn: &Conn, id: &str) {
    let mut t = TasksClient::new(conn.channel.clone());
    let _ = t
        .kill(conn.req(KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: true,
        }))
        .await;
    let _ = t
        .wait(conn.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        }))
        .await;
}

/// Kills and deletes container `id`'s task, if it has one.
async fn kill_and_delete_task(conn: &Conn, id: &str) -> anyhow::Result<()> {
    kill_task(conn, id).await;
    match TasksClient::new(conn.channel.clone())
        .delete(conn.req(DeleteTaskRequest {
            container_id: id.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(anyhow::anyhow!("deleting its task: {}", s.message())),
    }
}
