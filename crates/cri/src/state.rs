//! The CRI's shared state and the task plumbing every verb uses: start-up (subscribe, restore,
//! load, reconcile), the sandbox image, exits, kills and task deletion.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::containerd::events::{TaskExit, TaskOom};
use berth_api::containerd::services::events::v1::SubscribeRequest;
use berth_api::containerd::services::tasks::v1 as tasks;
use berth_api::containerd::v1::types::Status as TaskStatus;
use berth_api::runtime::v1 as cri;
use prost::Message;
use tokio::sync::{broadcast, watch};
use tonic::Status;

use crate::api::{Api, NAMESPACE};
use crate::image::{ImageInfo, InfoCache};
use crate::meta::Meta;
use crate::{CriConfig, Dirs, Host};

/// How long StopContainer waits for a SIGKILLed task before giving up.
const KILL_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: CriConfig,
    pub(crate) dirs: Dirs,
    pub(crate) api: Api,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) meta: Meta,
    pub(crate) images: InfoCache,
    /// Container and pod lifecycle events, for GetContainerEvents.
    pub(crate) events: broadcast::Sender<cri::ContainerEventResponse>,
    /// Ids of objects whose task exit was recorded.
    pub(crate) exits: broadcast::Sender<String>,
    ready: watch::Sender<bool>,
    /// The lowest `oom_score_adj` the daemon may give (its own), with `restrict_oom_score_adj`.
    pub(crate) oom_floor: Option<i64>,
    sandbox_image: tokio::sync::Mutex<Option<(String, ImageInfo)>>,
    /// The last CPU sample per container, for usage_nano_cores: (time ns, usage ns).
    pub(crate) cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
    /// Containers whose task was OOM-killed (until their exit is recorded).
    pub(crate) ooms: Mutex<HashSet<String>>,
    /// Pod networks.
    pub(crate) cni: crate::cni::Cni,
    /// The streaming server, once started (or why it could not be).
    pub(crate) stream: std::sync::OnceLock<Result<berth_stream::Server, String>>,
    /// Output of running containers without a log path, for attachers (`streaming.rs`).
    pub(crate) outputs: crate::streaming::Outputs,
}

fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

impl Inner {
    /// GetContainerEvents: the CRI's container events from now on; a subscriber that falls
    /// behind loses events, as with containerd, and is told how many.
    pub(crate) fn event_stream(&self) -> crate::BoxStream<cri::ContainerEventResponse> {
        use tokio_stream::StreamExt as _;
        use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
        let rx = self.events.subscribe();
        let s = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| match r {
            Ok(ev) => Some(Ok(ev)),
            Err(BroadcastStreamRecvError::Lagged(n)) => Some(Err(Status::resource_exhausted(
                format!("{n} events were dropped"),
            ))),
        });
        Box::pin(s)
    }

    /// A subscription to the exits and OOM kills of the CRI namespace's tasks.
    async fn task_events(
        &self,
    ) -> Result<
        tonic::Response<crate::BoxStream<berth_api::containerd::services::events::v1::Envelope>>,
        Status,
    > {
        let filters =
            ["exit", "oom"].map(|t| format!("topic==\"/tasks/{t}\",namespace=={NAMESPACE}"));
        let filters = filters.to_vec();
        self.api
            .events()
            .subscribe(self.api.req(SubscribeRequest { filters }))
            .await
    }

    pub(crate) fn new(
        cfg: CriConfig,
        dirs: Dirs,
        services: crate::api::Services,
        host: Arc<dyn Host>,
    ) -> Inner {
        let api = Api::new(services);
        let oom_floor = cfg.restrict_oom_score_adj.then(own_oom_score_adj);
        let cni = crate::cni::Cni::new(cfg.cni.clone(), dirs.state.join("cni"));
        Inner {
            cni,
            cfg,
            dirs,
            api,
            host,
            meta: Meta::default(),
            images: InfoCache::default(),
            events: broadcast::channel(1024).0,
            exits: broadcast::channel(1024).0,
            ready: watch::channel(false).0,
            oom_floor,
            sandbox_image: tokio::sync::Mutex::new(None),
            cpu_samples: Mutex::default(),
            ooms: Mutex::default(),
            stream: std::sync::OnceLock::new(),
            outputs: crate::streaming::Outputs::default(),
        }
    }

    /// Starts the streaming server on `[cri] stream_server_address:port`.
    async fn start_streaming(self: &Arc<Self>) {
        let ip: std::net::IpAddr = self
            .cfg
            .stream_server_address
            .parse()
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let config = berth_stream::Config {
            addr: std::net::SocketAddr::new(ip, self.cfg.stream_server_port),
            max_sessions: self.cfg.stream_max_sessions,
            ..Default::default()
        };
        let runtime = Arc::new(crate::streaming::StreamRuntime(Arc::downgrade(self)));
        let server = berth_stream::Server::start_shared(config, runtime)
            .await
            .map_err(|e| e.to_string());
        match &server {
            Ok(s) => tracing::info!(address = %s.local_addr(), "CRI streaming server serving"),
            Err(e) => tracing::error!(error = %e, "CRI streaming server not started"),
        }
        let _ = self.stream.set(server);
    }

    /// The streaming server, or Unavailable with the reason.
    pub(crate) fn stream_server(&self) -> Result<&berth_stream::Server, Status> {
        match self.stream.get() {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(Status::unavailable(format!(
                "the streaming server is not running: {e}"
            ))),
            None => Err(Status::unavailable("the streaming server is starting")),
        }
    }

    /// Waits until the records are loaded.
    pub(crate) async fn ready(&self) -> Result<(), Status> {
        let mut rx = self.ready.subscribe();
        let wait = rx.wait_for(|r| *r);
        match tokio::time::timeout(Duration::from_secs(60), wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Status::unavailable("the CRI is still starting")),
        }
    }

    pub(crate) async fn start<F>(self: Arc<Self>, restore: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // Exec FIFO directories of a daemon that ended mid-exec: their reader is gone.
        let _ = std::fs::remove_dir_all(self.dirs.state.join("exec"));
        // The daemon is serving by now, or about to: retry until it answers. The `k8s.io`
        // namespace is made by the first write into it, as containerd's metadata store does.
        let mut delay = Duration::from_millis(10);
        let events = loop {
            let sub = self.task_events().await;
            if let Ok(s) = sub {
                break s.into_inner();
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        };
        self.start_streaming().await;
        restore.await;
        match self.meta.load(&self.api).await {
            Ok((s, c)) => tracing::info!(sandboxes = s, containers = c, "CRI records loaded"),
            Err(e) => tracing::error!(error = %e, "loading CRI records"),
        }
        let me = self.clone();
        tokio::spawn(async move { me.follow(events).await });
        self.reconcile().await;
        self.ready.send_replace(true);
    }

    /// Records task exits (and OOM kills) as they come; resubscribes if the stream breaks.
    async fn follow(
        self: Arc<Self>,
        mut stream: crate::api::BoxStream<berth_api::containerd::services::events::v1::Envelope>,
    ) {
        loop {
            match tokio_stream::StreamExt::next(&mut stream).await.transpose() {
                Ok(Some(env)) => {
                    let Some(ev) = env.event else { continue };
                    if env.topic == "/tasks/exit" {
                        if let Ok(e) = TaskExit::decode(&ev.value[..])
                            && e.id == e.container_id
                        {
                            let code = e.exit_status as i32;
                            let at = e
                                .exited_at
                                .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                                .unwrap_or_else(crate::now_ns);
                            let me = self.clone();
                            tokio::spawn(
                                async move { me.record_exit(&e.container_id, code, at).await },
                            );
                        }
                    } else if env.topic == "/tasks/oom"
                        && let Ok(e) = TaskOom::decode(&ev.value[..])
                    {
                        self.ooms
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(e.container_id);
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("the task event stream ended; subscribing again");
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let sub = self.task_events().await;
                        if let Ok(s) = sub {
                            stream = s.into_inner();
                            break;
                        }
                    }
                    // Exits may have gone by while the stream was down.
                    self.reconcile().await;
                }
            }
        }
    }

    /// Brings running records in line with their tasks: a task that stopped, or is gone, is
    /// an exit.
    pub(crate) async fn reconcile(&self) {
        let running: Vec<String> = self.meta.with(|ix| {
            ix.sandboxes
                .values()
                .filter(|s| s.st.ready)
                .map(|s| s.id.clone())
                .chain(
                    ix.containers
                        .values()
                        .filter(|c| c.st.started_at > 0 && c.st.finished_at == 0)
                        .map(|c| c.id.clone()),
                )
                .collect()
        });
        for id in running {
            match self.task_state(&id).await {
                Ok(Some((TaskStatus::Stopped, code, at))) => self.record_exit(&id, code, at).await,
                Ok(Some(_)) => {
                    if self.meta.sandbox(&id).is_some() {
                        self.recover_sandbox_mounts(&id).await;
                    }
                    // A restarted daemon reads the output FIFOs of containers without a log again.
                    if let Some(c) = self.meta.container(&id)
                        && c.st.log_path.is_empty()
                    {
                        self.outputs
                            .follow(self, &id, c.config.tty, self.output_fifos(&id));
                    }
                }
                Ok(None) => self.record_exit(&id, 255, crate::now_ns()).await,
                Err(e) => tracing::warn!(id = %id, error = %e, "asking for a task's state"),
            }
        }
    }

    /// A running pod's bind mounts under the state directory may be missing though the pod
    /// lives: a daemon restarted in another mount namespace (by hand in a private one, or by a
    /// service manager's PrivateMounts) does not see those its predecessor made. Its network
    /// namespace and /dev/shm are then bound again from its pause process, which holds both, so
    /// that new containers join them and StopPodSandbox can tear the network down.
    pub(crate) async fn recover_sandbox_mounts(&self, id: &str) {
        use crate::netns::{NSFS_MAGIC, TMPFS_MAGIC, bind, is_fs};
        let Some(sb) = self.meta.sandbox(id) else {
            return;
        };
        let missing: Vec<(PathBuf, &str)> = [
            (&sb.st.netns, NSFS_MAGIC, "ns/net"),
            (&sb.st.shm, TMPFS_MAGIC, "root/dev/shm"),
        ]
        .into_iter()
        .filter(|(p, magic, _)| !p.is_empty() && !is_fs(Path::new(p), *magic))
        .map(|(p, _, from)| (PathBuf::from(p), from))
        .collect();
        if missing.is_empty() {
            return;
        }
        // The pid is the pause's while the shim says its task runs; asked again after the
        // mounts, so a pause that died meanwhile does not leave another process's bound.
        let Some(pid) = self.running_pid(id).await else {
            return;
        };
        let mut bound = Vec::new();
        for (target, from) in &missing {
            let src = PathBuf::from(format!("/proc/{pid}/{from}"));
            let r = if from.starts_with("ns/") {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(target)
                    .and_then(|_| bind(&src, target))
            } else {
                // The pause's /dev/shm is a mount of another mount namespace, which cannot be
                // bound from here (EINVAL): a new one, which containers made from now on share
                // (but not those running), rather than none.
                std::fs::create_dir_all(target).and_then(|()| {
                    bind(&src, target).or_else(|_| {
                        tracing::warn!(
                            sandbox = %id,
                            "the pod's /dev/shm cannot be recovered: new containers get a new one"
                        );
                        crate::netns::mount_shm(target)
                    })
                })
            };
            match r {
                Ok(()) => bound.push(target.clone()),
                Err(e) => tracing::warn!(
                    sandbox = %id, path = %target.display(), error = %e,
                    "binding a pod's mount again from its pause"
                ),
            }
        }
        if self.running_pid(id).await != Some(pid) {
            for p in &bound {
                let _ = crate::netns::remove(p);
            }
            return;
        }
        for p in &bound {
            tracing::warn!(
                sandbox = %id, path = %p.display(), pid,
                "a pod's mount was missing (another mount namespace?): bound again from its pause"
            );
        }
    }

    /// The pid of task `id` while it runs.
    async fn running_pid(&self, id: &str) -> Option<u32> {
        let p = self.task_process(id).await.ok()??;
        (p.status == TaskStatus::Running as i32 && p.pid > 0).then_some(p.pid)
    }

    /// The task's status, exit code and exit time; `None` if there is no task.
    pub(crate) async fn task_state(
        &self,
        id: &str,
    ) -> Result<Option<(TaskStatus, i32, i64)>, Status> {
        Ok(self.task_process(id).await?.map(|p| {
            let at = p
                .exited_at
                .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                .filter(|t| *t > 0)
                .unwrap_or_else(crate::now_ns);
            (
                TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown),
                p.exit_status as i32,
                at,
            )
        }))
    }

    /// Task `id`'s init process as the shim reports it; `None` if there is no task.
    async fn task_process(
        &self,
        id: &str,
    ) -> Result<Option<berth_api::containerd::v1::types::Process>, Status> {
        match self
            .api
            .tasks()
            .get(self.api.req(tasks::GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(Some(r.into_inner().process.unwrap_or_default())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// Records the exit of a container's or a pause's task (once), deletes the task (and so
    /// its shim), and wakes whoever waits.
    pub(crate) async fn record_exit(&self, id: &str, code: i32, at: i64) {
        let _g = self.meta.lock(id).await;
        if let Some(mut c) = self.meta.container(id) {
            if c.st.finished_at == 0 && c.st.started_at > 0 {
                let oom = self
                    .ooms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                c.st.finished_at = at.max(c.st.started_at);
                c.st.exit_code = code;
                c.st.pid = 0;
                c.st.reason = if oom {
                    "OOMKilled".into()
                } else if code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                };
                if let Err(e) = self.meta.save_container(&self.api, &c).await {
                    tracing::error!(id = %id, error = %e, "recording a container's exit");
                }
                self.publish_container(&c, cri::ContainerEventType::ContainerStoppedEvent);
            }
        } else if let Some(mut sb) = self.meta.sandbox(id) {
            if sb.st.ready {
                sb.st.ready = false;
                sb.st.pid = 0;
                if let Err(e) = self.meta.save_sandbox(&self.api, &sb).await {
                    tracing::error!(id = %id, error = %e, "recording a pause exit");
                }
            }
        } else {
            return;
        }
        self.delete_task(id).await;
        let _ = self.exits.send(id.to_string());
    }

    /// Deletes a task (whatever its state); a missing one is fine.
    pub(crate) async fn delete_task(&self, id: &str) {
        let r = self
            .api
            .tasks()
            .delete(self.api.req(tasks::DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await;
        if let Err(s) = r
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(id = %id, error = %s, "deleting a task");
        }
    }

    /// Sends `signal` to the task (every process with `all`); a missing task is fine.
    pub(crate) async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), Status> {
        match self
            .api
            .tasks()
            .kill(self.api.req(tasks::KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal,
                all,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(s),
        }
    }

    /// Whether the object's exit has been recorded (or it has no task at all).
    fn exited(&self, id: &str) -> bool {
        self.meta.with(|ix| {
            if let Some(c) = ix.containers.get(id) {
                c.st.finished_at > 0 || c.st.started_at == 0
            } else if let Some(s) = ix.sandboxes.get(id) {
                !s.st.ready
            } else {
                true
            }
        })
    }

    /// Waits up to `timeout` for the exit of `id`'s task to be recorded; true if it was.
    pub(crate) async fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        let mut rx = self.exits.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.exited(id) {
                return true;
            }
            // The exit event may be late or lost: the task's own state says too.
            if let Ok(st) = self.task_state(id).await {
                match st {
                    Some((TaskStatus::Stopped, code, at)) => {
                        self.record_exit(id, code, at).await;
                        return true;
                    }
                    None => {
                        self.record_exit(id, 255, crate::now_ns()).await;
                        return true;
                    }
                    _ => {}
                }
            }
            let step = tokio::time::Instant::now() + Duration::from_millis(500);
            match tokio::time::timeout_at(deadline.min(step), rx.recv()).await {
                Ok(_) => {}
                Err(_) if tokio::time::Instant::now() >= deadline => return self.exited(id),
                Err(_) => {}
            }
        }
    }

    /// Sends `signal`, waits `grace` for the exit, then SIGKILLs every process and waits again.
    pub(crate) async fn stop_task(
        &self,
        id: &str,
        signal: u32,
        grace: Duration,
    ) -> Result<(), Status> {
        if self.exited(id) {
            return Ok(());
        }
        if !grace.is_zero() && signal != libc::SIGKILL as u32 {
            self.kill(id, signal, false).await?;
            if self.wait_exit(id, grace).await {
                return Ok(());
            }
        }
        self.kill(id, libc::SIGKILL as u32, true).await?;
        if self.wait_exit(id, KILL_WAIT).await {
            Ok(())
        } else {
            Err(Status::deadline_exceeded(format!(
                "task {id}: still running {KILL_WAIT:?} after SIGKILL"
            )))
        }
    }

    pub(crate) fn publish_container(
        &self,
        c: &crate::meta::Container,
        kind: cri::ContainerEventType,
    ) {
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: c.id.clone(),
            container_event_type: kind as i32,
            created_at: crate::now_ns(),
            pod_sandbox_status: self
                .meta
                .sandbox(&c.st.sandbox_id)
                .map(|s| crate::sandbox::status(&s)),
            containers_statuses: vec![crate::container::status(c)],
        });
    }

    pub(crate) fn publish_sandbox(&self, sb: &crate::meta::Sandbox, kind: cri::ContainerEventType) {
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: sb.id.clone(),
            container_event_type: kind as i32,
            created_at: crate::now_ns(),
            pod_sandbox_status: Some(crate::sandbox::status(sb)),
            containers_statuses: vec![],
        });
    }

    /// The sandbox image's name and what it resolves to: present, else pulled, else made from
    /// Berth's own pause (once; later calls reuse it).
    pub(crate) async fn sandbox_image(&self) -> Result<(String, ImageInfo), Status> {
        let mut g = self.sandbox_image.lock().await;
        if let Some((name, info)) = g.as_ref()
            && crate::image::get_record(&self.api, &self.images, name)
                .await?
                .is_some()
        {
            return Ok((name.clone(), info.clone()));
        }
        let configured = !self.cfg.sandbox_image.is_empty();
        let name = if configured {
            berth_image::ImageRef::parse(&self.cfg.sandbox_image)
                .map_err(|e| Status::invalid_argument(format!("cri.sandbox_image: {e}")))?
                .to_string()
        } else {
            crate::pause::builtin_name()
        };
        let info = match crate::image::get_record(&self.api, &self.images, &name).await? {
            Some(img) => {
                let t = img.target.unwrap_or_default();
                crate::image::add_cri_records(&self.api, &self.images, &name, &t, true).await?
            }
            None => {
                let pulled = if configured {
                    match self
                        .host
                        .pull(NAMESPACE, &name, &self.cfg.snapshotter, None)
                        .await
                    {
                        Ok(img) => Some(img),
                        Err(e) => {
                            tracing::warn!(image = %name, error = %e.message(),
                                "cannot pull the sandbox image; making Berth's pause under its name");
                            None
                        }
                    }
                } else {
                    None
                };
                match pulled {
                    Some(img) => {
                        let t = img.target.unwrap_or_default();
                        crate::image::add_cri_records(&self.api, &self.images, &name, &t, true)
                            .await?
                    }
                    None => {
                        crate::pause::make_image(
                            &self.api,
                            &*self.host,
                            &self.images,
                            &name,
                            &self.cfg.snapshotter,
                        )
                        .await?
                    }
                }
            }
        };
        *g = Some((name.clone(), info.clone()));
        Ok((name, info))
    }
}
