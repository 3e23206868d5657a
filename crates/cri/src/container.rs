//! CRI containers: CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ContainerStatus, ListContainers, UpdateContainerResources and ReopenContainerLog. A CRI
//! container is a containerd container (same id) whose task joins its pod's namespaces; its
//! output goes, in the CRI log format, straight from the shim to the log file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_api::containerd::services::containers::v1 as ctrd;
use berth_api::containerd::services::tasks::v1 as tasks;
use berth_api::runtime::v1 as cri;
use serde_json::Value;
use tonic::Status;

use crate::image_ref;
use crate::meta::{Container, ContainerState, extensions};
use crate::must;
use crate::resources::{self, HostLimits};
use crate::sandbox::SPEC_TYPE;
use crate::spec::{self, ContainerInput, PodFiles};
use crate::state::Inner;
use crate::user::UserSpec;

/// The task Update annotation that makes Berth's shim reopen a container's CRI log file.
pub(crate) const REOPEN_LOG_ANNOTATION: &str = "io.berth.cri.reopen-log";

/// The signal name of a CRI stop signal (`None`: the runtime's default).
fn stop_signal_name(s: i32) -> Option<String> {
    let sig = cri::Signal::try_from(s).ok()?;
    if sig == cri::Signal::RuntimeDefault {
        return None;
    }
    sig.as_str_name()
        .strip_prefix("SIGNAL_")
        .map(str::to_string)
}

impl Inner {
    /// ContainerStatus: the container's status, and with `verbose` what crictl inspect shows.
    pub(crate) fn container_status(
        &self,
        r: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, Status> {
        let c = self.meta.find_container(&r.container_id)?;
        let info = crate::verbose_info(r.verbose, "info", || {
            serde_json::json!({
                "sandboxID": c.st.sandbox_id,
                "pid": c.st.pid,
                "runtimeType": c.st.runtime_type,
            })
        });
        let status = Some(status(&c));
        Ok(cri::ContainerStatusResponse { status, info })
    }

    pub(crate) async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<String, Status> {
        let config = must("config", req.config)?;
        let md = must("config.metadata", config.metadata.clone())?;
        if md.name.is_empty() {
            return Err(Status::invalid_argument(
                "config.metadata.name: must be set",
            ));
        }
        let image_ref = image_ref(config.image.as_ref());
        if image_ref.is_empty() {
            return Err(Status::invalid_argument("config.image.image: must be set"));
        }
        let sb = self.meta.find_sandbox(&req.pod_sandbox_id).map_err(|e| {
            if e.code() == tonic::Code::InvalidArgument {
                Status::invalid_argument("pod_sandbox_id: must be set")
            } else {
                e
            }
        })?;
        if !sb.st.ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {}: is not ready",
                sb.id
            )));
        }
        let pod = sb.metadata();
        let name = format!(
            "{}_{}_{}_{}_{}",
            md.name, pod.name, pod.namespace, pod.uid, md.attempt
        );
        let id = crate::new_id();
        let c = self
            .create_reserved(
                &name,
                &id,
                "container",
                async |lease| {
                    self.make_container(&id, &name, &sb, &config, &image_ref, lease)
                        .await
                },
                async || {
                    let _ = self
                        .api
                        .containers()
                        .delete(
                            self.api
                                .req(ctrd::DeleteContainerRequest { id: id.clone() }),
                        )
                        .await;
                    self.remove_snapshot(&id).await;
                    self.meta.with(|ix| ix.containers.remove(&id));
                },
            )
            .await?;
        self.publish_container(&c, cri::ContainerEventType::ContainerCreatedEvent);
        Ok(id)
    }

    async fn make_container(
        &self,
        id: &str,
        name: &str,
        sb: &crate::meta::Sandbox,
        config: &cri::ContainerConfig,
        image_ref: &str,
        lease: &str,
    ) -> Result<Container, Status> {
        let record = crate::image::get_record(&self.api, &self.images, image_ref)
            .await?
            .ok_or_else(|| Status::not_found(format!("image {image_ref:?}: not found")))?;
        let target = record.target.clone().unwrap_or_default();
        let info = self.images.resolve(&self.api, &target).await?;
        let sc = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
            return Err(Status::invalid_argument(
                "linux.security_context.run_as_group: needs run_as_user or run_as_username",
            ));
        }

        let mounts = self
            .api
            .prepare_snapshot(&self.cfg.snapshotter, id, &info.chain_id, lease)
            .await?;

        // The user: the CRI's, else the image's, resolved with the image's own files.
        let mut us = UserSpec::from_image(
            info.config
                .get("User")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        if let Some(u) = &sc.run_as_user {
            us = UserSpec {
                uid: Some(u32::try_from(u.value).map_err(|_| {
                    Status::invalid_argument(format!(
                        "linux.security_context.run_as_user: {} is not a valid uid",
                        u.value
                    ))
                })?),
                ..Default::default()
            };
        } else if !sc.run_as_username.is_empty() {
            us = UserSpec {
                username: Some(sc.run_as_username.clone()),
                ..Default::default()
            };
        }
        if let Some(g) = &sc.run_as_group {
            us.gid = Some(u32::try_from(g.value).map_err(|_| {
                Status::invalid_argument(format!(
                    "linux.security_context.run_as_group: {} is not a valid gid",
                    g.value
                ))
            })?);
            us.groupname = None;
        }
        let read = |p: &'static str| {
            let host = self.host.clone();
            let mounts = mounts.clone();
            async move {
                host.read_rootfs_file(mounts, p)
                    .await
                    .map(|o| o.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .map_err(|e| Status::internal(format!("reading the image's {p}: {e}")))
            }
        };
        let passwd = read("/etc/passwd").await?;
        let group = read("/etc/group").await?;
        let user = us.resolve(passwd.as_deref(), group.as_deref(), &sc.supplemental_groups)?;

        let target_pid = {
            let ns = sc.namespace_options.clone().unwrap_or_default();
            if ns.pid == cri::NamespaceMode::Target as i32 {
                self.meta
                    .container(&ns.target_id)
                    .filter(|t| {
                        t.state() == cri::ContainerState::ContainerRunning
                            && t.st.sandbox_id == sb.id
                    })
                    .map(|t| t.st.pid)
            } else {
                None
            }
        };
        let dir = self.sandbox_dir(&sb.id);
        let shm = (!sb.st.shm.is_empty()).then(|| PathBuf::from(&sb.st.shm));
        let cgroup_parent = self.pod_cgroup(&sb.config, &sb.id);
        let spec = spec::container_spec(&ContainerInput {
            id,
            sandbox_id: &sb.id,
            sandbox: &sb.config,
            config,
            image: &info.config,
            image_name: image_ref,
            user: &user,
            files: PodFiles {
                hostname: &dir.join("hostname"),
                hosts: &dir.join("hosts"),
                resolv: &dir.join("resolv.conf"),
                shm: shm.as_deref(),
            },
            sandbox_pid: sb.st.pid,
            target_pid,
            netns: &sb.st.netns,
            cgroup_parent: &cgroup_parent,
            oom_floor: self.oom_floor,
            host: HostLimits::detect(&self.cfg, &format!("{cgroup_parent}/{id}")),
        })?;

        let log_path = if !sb.config.log_directory.is_empty() && !config.log_path.is_empty() {
            Path::new(&sb.config.log_directory)
                .join(&config.log_path)
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        };
        let stop_signal = stop_signal_name(config.stop_signal)
            .or_else(|| {
                info.config
                    .get("StopSignal")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "SIGTERM".into());
        let repo_digest = berth_image::ImageRef::parse(&record.name)
            .map(|r| format!("{}@{}", r.repository(), target.digest))
            .unwrap_or_else(|_| info.id.clone());
        let st = ContainerState {
            name: name.to_string(),
            sandbox_id: sb.id.clone(),
            image_id: info.id.clone(),
            image_ref: if record.name.starts_with("sha256:") {
                info.id.clone()
            } else {
                repo_digest
            },
            created_at: crate::now_ns(),
            log_path,
            uid: i64::from(user.uid),
            gid: i64::from(user.gid),
            groups: user.groups.iter().map(|g| i64::from(*g)).collect(),
            stop_signal,
            runtime_type: sb.st.runtime_type.clone(),
            ..Default::default()
        };
        let rec = ctrd::Container {
            id: id.to_string(),
            labels: spec::record_labels(&config.labels, "container"),
            image: record.name.clone(),
            runtime: Some(ctrd::container::Runtime {
                name: sb.st.runtime_type.clone(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE.into(),
                value: serde_json::to_vec(&spec).expect("JSON"),
            }),
            snapshotter: self.cfg.snapshotter.clone(),
            snapshot_key: id.to_string(),
            extensions: extensions(config, &st),
            sandbox: sb.id.clone(),
            ..Default::default()
        };
        self.api
            .containers()
            .create(self.api.req_lease(
                ctrd::CreateContainerRequest {
                    container: Some(rec),
                },
                lease,
            )?)
            .await?;
        let c = Container {
            id: id.to_string(),
            config: config.clone(),
            st,
        };
        self.meta
            .with(|ix| ix.containers.insert(id.to_string(), c.clone()));
        Ok(c)
    }

    pub(crate) async fn start_container(&self, id: &str) -> Result<(), Status> {
        let c = self.meta.find_container(id)?;
        let _g = self.meta.lock(&c.id).await;
        let mut c = self
            .meta
            .container(&c.id)
            .ok_or_else(|| Status::not_found(format!("container {id:?}: not found")))?;
        if c.state() != cri::ContainerState::ContainerCreated {
            return Err(Status::failed_precondition(format!(
                "container {}: is {}, not created",
                c.id,
                c.state().as_str_name()
            )));
        }
        if !self
            .meta
            .sandbox(&c.st.sandbox_id)
            .is_some_and(|s| s.st.ready)
        {
            return Err(Status::failed_precondition(format!(
                "container {}: its pod sandbox is not ready",
                c.id
            )));
        }
        let (stdout, stderr) = if c.st.log_path.is_empty() {
            // No log: the output goes through FIFOs the CRI reads, for attachers.
            let (out, err) = self.output_fifos(&c.id);
            for p in [&out, &err] {
                make_fifo(p)
                    .map_err(|e| Status::internal(format!("output FIFO {}: {e}", p.display())))?;
            }
            self.outputs
                .follow(self, &c.id, c.config.tty, (out.clone(), err.clone()));
            let s = |p: &Path| p.to_string_lossy().into_owned();
            (s(&out), if c.config.tty { String::new() } else { s(&err) })
        } else {
            let p = Path::new(&c.st.log_path);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Status::internal(format!("creating the log directory {}: {e}", dir.display()))
                })?;
            }
            let uri = format!(
                "cri-log://{}?max-line={}",
                c.st.log_path, self.cfg.max_container_log_line_size
            );
            (uri.clone(), if c.config.tty { String::new() } else { uri })
        };
        let stdin = if c.config.stdin {
            let fifo = self.stdin_fifo(&c.id);
            make_fifo(&fifo)
                .map_err(|e| Status::internal(format!("stdin FIFO {}: {e}", fifo.display())))?;
            fifo.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        let started = async {
            let created = self
                .api
                .tasks()
                .create(self.api.req(tasks::CreateTaskRequest {
                    container_id: c.id.clone(),
                    stdin,
                    stdout,
                    stderr,
                    terminal: c.config.tty,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            self.api
                .tasks()
                .start(self.api.req(tasks::StartRequest {
                    container_id: c.id.clone(),
                    exec_id: String::new(),
                }))
                .await?;
            Ok::<u32, Status>(created.pid)
        }
        .await;
        match started {
            Ok(pid) => {
                c.st.pid = pid;
                c.st.started_at = crate::now_ns();
                self.meta.save_container(&self.api, &c).await?;
                self.publish_container(&c, cri::ContainerEventType::ContainerStartedEvent);
                Ok(())
            }
            Err(e) => {
                self.delete_task(&c.id).await;
                let now = crate::now_ns();
                c.st.started_at = now;
                c.st.finished_at = now;
                c.st.exit_code = 128;
                c.st.reason = "StartError".into();
                c.st.message = e.message().to_string();
                if let Err(se) = self.meta.save_container(&self.api, &c).await {
                    tracing::error!(id = %c.id, error = %se, "recording a failed start");
                }
                Err(e)
            }
        }
    }

    /// The FIFO a container with `stdin` reads its stdin from (attach writes into it).
    pub(crate) fn stdin_fifo(&self, id: &str) -> PathBuf {
        self.dirs.state.join("containers").join(id).join("stdin")
    }

    /// The FIFOs a container without a log path writes its stdout and stderr to.
    pub(crate) fn output_fifos(&self, id: &str) -> (PathBuf, PathBuf) {
        let d = self.dirs.state.join("containers").join(id);
        (d.join("stdout"), d.join("stderr"))
    }

    pub(crate) async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let c = match self.meta.find_container(id) {
            Ok(c) => c,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(s),
        };
        if c.state() != cri::ContainerState::ContainerRunning {
            return Ok(());
        }
        let signal = berth_runtime::parse_signal(&c.st.stop_signal).unwrap_or(libc::SIGTERM) as u32;
        let grace = Duration::from_secs(timeout.max(0) as u64);
        self.stop_task(&c.id, signal, grace).await
    }

    pub(crate) async fn remove_container(&self, id: &str) -> Result<(), Status> {
        let c = match self.meta.find_container(id) {
            Ok(c) => c,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(s),
        };
        if c.state() == cri::ContainerState::ContainerRunning {
            self.stop_task(&c.id, libc::SIGKILL as u32, Duration::ZERO)
                .await?;
        }
        let _g = self.meta.lock(&c.id).await;
        self.delete_task(&c.id).await;
        match self
            .api
            .containers()
            .delete(
                self.api
                    .req(ctrd::DeleteContainerRequest { id: c.id.clone() }),
            )
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s),
        }
        self.remove_snapshot(&c.id).await;
        let _ = std::fs::remove_dir_all(self.dirs.state.join("containers").join(&c.id));
        self.outputs.forget(&c.id);
        self.meta.with(|ix| ix.containers.remove(&c.id));
        self.meta.release(&c.st.name, &c.id);
        self.cpu_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&c.id);
        self.publish_container(&c, cri::ContainerEventType::ContainerDeletedEvent);
        drop(_g);
        self.meta.forget_lock(&c.id);
        Ok(())
    }

    pub(crate) fn list_containers(&self, f: Option<&cri::ContainerFilter>) -> Vec<cri::Container> {
        let all: Vec<Container> = self
            .meta
            .with(|ix| ix.containers.values().cloned().collect());
        let mut out: Vec<cri::Container> = all
            .into_iter()
            .filter(|c| match f {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || c.id.starts_with(&f.id))
                        && (f.pod_sandbox_id.is_empty()
                            || c.st.sandbox_id.starts_with(&f.pod_sandbox_id))
                        && f.state.as_ref().is_none_or(|v| v.state == c.state() as i32)
                        && f.label_selector
                            .iter()
                            .all(|(k, v)| c.config.labels.get(k) == Some(v))
                }
            })
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.st.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: c.config.image.clone(),
                image_ref: c.st.image_ref.clone(),
                state: c.state() as i32,
                created_at: c.st.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.st.image_id.clone(),
            })
            .collect();
        out.sort_by_key(|c| c.created_at);
        out
    }

    pub(crate) async fn update_container(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<(), Status> {
        let c = self.meta.find_container(&req.container_id)?;
        let _g = self.meta.lock(&c.id).await;
        let mut c = self
            .meta
            .container(&c.id)
            .ok_or_else(|| Status::not_found("container: not found"))?;
        let Some(new) = req.linux else {
            return Ok(());
        };
        if c.state() == cri::ContainerState::ContainerExited {
            return Err(Status::failed_precondition(format!(
                "container {}: has exited",
                c.id
            )));
        }
        // The stored spec carries the new limits too, for a later start.
        let rec = self
            .api
            .containers()
            .get(self.api.req(ctrd::GetContainerRequest { id: c.id.clone() }))
            .await?
            .into_inner()
            .container
            .unwrap_or_default();
        let mut spec: Value = rec
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| {
                Status::internal(format!("container {}: its spec is unreadable", c.id))
            })?;
        let cgroups_path = spec["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or("/")
            .to_string();
        let patch =
            resources::to_spec(&new, &HostLimits::detect(&self.cfg, &cgroups_path), "linux")?;
        let res = &mut spec["linux"]["resources"];
        if let Some(o) = patch.as_object() {
            for (k, v) in o {
                res[k] = v.clone();
            }
        }
        if new.oom_score_adj != 0 {
            spec["process"]["oomScoreAdj"] =
                serde_json::json!(spec::clamp_oom(new.oom_score_adj, self.oom_floor));
        }
        if c.state() == cri::ContainerState::ContainerRunning {
            self.api
                .tasks()
                .update(
                    self.api.req(tasks::UpdateTaskRequest {
                        container_id: c.id.clone(),
                        resources: Some(prost_types::Any {
                            type_url:
                                "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                                    .into(),
                            value: serde_json::to_vec(&patch).expect("JSON"),
                        }),
                        annotations: req.annotations.clone(),
                    }),
                )
                .await?;
        }
        self.api
            .containers()
            .update(self.api.req(ctrd::UpdateContainerRequest {
                container: Some(ctrd::Container {
                    id: c.id.clone(),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE.into(),
                        value: serde_json::to_vec(&spec).expect("JSON"),
                    }),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["spec".into()],
                }),
            }))
            .await?;
        c.st.resources = prost::Message::encode_to_vec(&new);
        self.meta.save_container(&self.api, &c).await
    }

    pub(crate) async fn reopen_log(&self, id: &str) -> Result<(), Status> {
        let c = self.meta.find_container(id)?;
        if c.state() != cri::ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!(
                "container {}: is not running",
                c.id
            )));
        }
        if c.st.log_path.is_empty() {
            return Ok(());
        }
        self.api
            .tasks()
            .update(self.api.req(tasks::UpdateTaskRequest {
                container_id: c.id.clone(),
                resources: None,
                annotations: HashMap::from([(
                    REOPEN_LOG_ANNOTATION.to_string(),
                    "true".to_string(),
                )]),
            }))
            .await?;
        Ok(())
    }
}

/// Makes a FIFO at `p` (and its directory); one already there is kept.
pub(crate) fn make_fifo(p: &Path) -> std::io::Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("NUL in path"))?;
    // SAFETY: a valid NUL-terminated path; mkfifo retains nothing.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Ok(())
}

/// A container's CRI status.
pub(crate) fn status(c: &Container) -> cri::ContainerStatus {
    let mounts = c
        .config
        .mounts
        .iter()
        .map(|m| cri::Mount {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            selinux_relabel: m.selinux_relabel,
            propagation: m.propagation,
            ..Default::default()
        })
        .collect();
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: c.config.metadata.clone(),
        state: c.state() as i32,
        created_at: c.st.created_at,
        started_at: c.st.started_at,
        finished_at: c.st.finished_at,
        exit_code: c.st.exit_code,
        image: c.config.image.clone().map(|mut i| {
            i.image = c.st.image_id.clone();
            i
        }),
        image_ref: c.st.image_ref.clone(),
        reason: c.st.reason.clone(),
        message: c.st.message.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts,
        log_path: c.st.log_path.clone(),
        resources: c.resources().map(|r| cri::ContainerResources {
            linux: Some(r),
            windows: None,
        }),
        image_id: c.st.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: c.st.uid,
                gid: c.st.gid,
                supplemental_groups: c.st.groups.clone(),
            }),
        }),
        stop_signal: c.config.stop_signal,
    }
}

#[cfg(test)]
mod tests;
