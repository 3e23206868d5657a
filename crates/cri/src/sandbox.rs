//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and
//! ListPodSandbox. A sandbox is the pause container (a containerd container and task whose id
//! is the sandbox id) plus its network namespace, /dev/shm and pod files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use berth_api::containerd::services::containers::v1 as ctrd;
use berth_api::containerd::services::leases::v1 as leases;
use berth_api::containerd::services::snapshots::v1 as snaps;
use berth_api::containerd::services::tasks::v1 as tasks;
use berth_api::runtime::v1 as cri;
use tonic::Status;

use crate::meta::{Sandbox, SandboxState, extensions};
use crate::must;
use crate::resources::HostLimits;
use crate::spec::{self, SandboxInput};
use crate::state::Inner;
use crate::user::UserSpec;

/// The OCI spec's type in a container record, as containerd names it.
pub(crate) const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

impl Inner {
    /// The sandbox `id` names, which must be ready (its pause process running).
    pub(crate) fn ready_sandbox(&self, id: &str) -> Result<Sandbox, Status> {
        let sb = self.meta.find_sandbox(id)?;
        if !sb.st.ready {
            let msg = format!("pod sandbox {}: is not ready", sb.id);
            return Err(Status::failed_precondition(msg));
        }
        Ok(sb)
    }

    /// PodSandboxStatus: the sandbox's status, and with `verbose` what crictl inspectp shows.
    pub(crate) fn pod_sandbox_status(
        &self,
        r: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, Status> {
        let sb = self.meta.find_sandbox(&r.pod_sandbox_id)?;
        let info = crate::verbose_info(r.verbose, "info", || {
            serde_json::json!({
                "pid": sb.st.pid,
                "netNamespacePath": sb.st.netns,
                "runtimeHandler": sb.st.runtime_handler,
                "runtimeType": sb.st.runtime_type,
                "image": sb.st.image,
            })
        });
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status(&sb)),
            info,
            containers_statuses: vec![],
            timestamp: crate::now_ns(),
        })
    }

    pub(crate) fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.dirs.root.join("sandboxes").join(id)
    }
    fn shm_dir(&self, id: &str) -> PathBuf {
        self.dirs.state.join("sandboxes").join(id).join("shm")
    }
    fn netns_path(&self, id: &str) -> PathBuf {
        self.dirs.state.join("netns").join(id)
    }

    /// The pod's cgroup, parent of its pause's and its containers' (cgroupfs driver): the
    /// kubelet's `cgroup_parent`, else one of ours under `cri.cgroup_parent`.
    pub(crate) fn pod_cgroup(&self, config: &cri::PodSandboxConfig, id: &str) -> String {
        config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("{}/{id}", self.cfg.cgroup_parent.trim_end_matches('/')))
    }

    /// Removes the pod cgroup Berth made (a kubelet's is the kubelet's to remove).
    fn remove_pod_cgroup(&self, config: &cri::PodSandboxConfig, id: &str) {
        if config
            .linux
            .as_ref()
            .is_some_and(|l| !l.cgroup_parent.is_empty())
        {
            return;
        }
        let path = self.pod_cgroup(config, id);
        let paths = berth_runtime::cgroups::Layout::detect().and_then(|l| l.resolve(&path, ""));
        let dirs: Vec<PathBuf> = match paths {
            Ok(berth_runtime::cgroups::CgroupPaths::V1 { paths }) => paths.into_values().collect(),
            Ok(berth_runtime::cgroups::CgroupPaths::V2 { path }) => vec![path],
            Err(_) => vec![],
        };
        for d in dirs {
            if let Err(e) = std::fs::remove_dir(&d)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %d.display(), error = %e, "removing a pod cgroup");
            }
        }
    }

    /// The shim runtime of a handler (`""`: the default).
    pub(crate) fn runtime_of(&self, handler: &str) -> Result<(String, String), Status> {
        let name = if handler.is_empty() {
            &self.cfg.default_runtime_name
        } else {
            handler
        };
        self.cfg
            .runtimes
            .get(name)
            .map(|r| (name.to_string(), r.runtime_type.clone()))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "runtime_handler: no runtime for {name:?} is configured"
                ))
            })
    }

    /// A lease that keeps what a call makes from the collector until the records hold it.
    pub(crate) async fn lease(&self) -> Result<String, Status> {
        let id = format!("cri-{}", uuid::Uuid::new_v4().simple());
        let expire = std::time::SystemTime::now() + Duration::from_secs(3600);
        let expire = berth_runtime::time::rfc3339_secs(expire);
        self.api
            .leases()
            .create(self.api.req(leases::CreateRequest {
                id: id.clone(),
                labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
            }))
            .await?;
        Ok(id)
    }

    pub(crate) async fn drop_lease(&self, id: &str) {
        let _ = self
            .api
            .leases()
            .delete(self.api.req(leases::DeleteRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await;
    }

    pub(crate) async fn run_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<String, Status> {
        let config = must("config", req.config)?;
        let md = must("config.metadata", config.metadata.clone())?;
        for (v, f) in [
            (&md.name, "name"),
            (&md.uid, "uid"),
            (&md.namespace, "namespace"),
        ] {
            if v.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "config.metadata.{f}: must be set"
                )));
            }
        }
        let (handler, runtime) = self.runtime_of(&req.runtime_handler)?;
        let name = format!("{}_{}_{}_{}", md.name, md.namespace, md.uid, md.attempt);
        let id = crate::new_id();
        let sb = self
            .create_reserved(
                &name,
                &id,
                "pod sandbox",
                async |lease| {
                    self.make_sandbox(&id, &name, &config, &handler, &runtime, lease)
                        .await
                },
                async || {
                    self.teardown_sandbox(&id).await;
                    self.meta.with(|ix| ix.sandboxes.remove(&id));
                },
            )
            .await?;
        self.publish_sandbox(&sb, cri::ContainerEventType::ContainerCreatedEvent);
        self.publish_sandbox(&sb, cri::ContainerEventType::ContainerStartedEvent);
        Ok(id)
    }

    /// Makes a new `what` named `name` with id `id`: the name reserved for the id, the id locked,
    /// `make` run under a lease that ends with it. If anything fails, `undo` takes back what
    /// `make` left and the name is free again.
    pub(crate) async fn create_reserved<T>(
        &self,
        name: &str,
        id: &str,
        what: &str,
        make: impl AsyncFnOnce(&str) -> Result<T, Status>,
        undo: impl AsyncFnOnce(),
    ) -> Result<T, Status> {
        self.meta.reserve(name, id, what)?;
        let _g = self.meta.lock(id).await;
        let lease = match self.lease().await {
            Ok(l) => l,
            Err(e) => {
                self.meta.release(name, id);
                return Err(e);
            }
        };
        let r = make(&lease).await;
        self.drop_lease(&lease).await;
        if let Err(e) = &r {
            tracing::warn!(id = %id, error = %e.message(), "creating the {what} failed; undoing it");
            undo().await;
            self.meta.release(name, id);
        }
        r
    }

    async fn make_sandbox(
        &self,
        id: &str,
        name: &str,
        config: &cri::PodSandboxConfig,
        handler: &str,
        runtime: &str,
        lease: &str,
    ) -> Result<Sandbox, Status> {
        let (image_name, image) = self.sandbox_image().await?;
        let sc = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let modes = spec::ns_modes(
            sc.namespace_options.as_ref(),
            "config.linux.security_context",
        )?;
        let host_net = modes.network == cri::NamespaceMode::Node;
        let host_ipc = modes.ipc == cri::NamespaceMode::Node;

        // Pod files: hostname, hosts, resolv.conf.
        let dir = self.sandbox_dir(id);
        let io =
            |e: std::io::Error, what: &str| Status::internal(format!("sandbox {id}: {what}: {e}"));
        std::fs::create_dir_all(&dir).map_err(|e| io(e, "creating its directory"))?;
        let hostname = if config.hostname.is_empty() || host_net {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string()
        } else {
            config.hostname.clone()
        };
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
            .map_err(|e| io(e, "hostname"))?;
        let hosts = if host_net {
            std::fs::read("/etc/hosts").unwrap_or_default()
        } else {
            spec::DEFAULT_HOSTS.as_bytes().to_vec()
        };
        std::fs::write(dir.join("hosts"), hosts).map_err(|e| io(e, "hosts"))?;
        let resolv = match spec::resolv_conf(config.dns_config.as_ref()) {
            Some(s) => s.into_bytes(),
            None => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        };
        std::fs::write(dir.join("resolv.conf"), resolv).map_err(|e| io(e, "resolv.conf"))?;

        let mut st = SandboxState {
            name: name.to_string(),
            created_at: crate::now_ns(),
            runtime_handler: handler.to_string(),
            runtime_type: runtime.to_string(),
            image: image_name.clone(),
            ..Default::default()
        };
        if !host_ipc {
            let shm = self.shm_dir(id);
            crate::netns::mount_shm(&shm).map_err(|e| io(e, "mounting /dev/shm"))?;
            st.shm = shm.to_string_lossy().into_owned();
        }
        if !host_net {
            let ns = self.netns_path(id);
            crate::netns::create(&ns).map_err(|e| io(e, "creating the network namespace"))?;
            st.netns = ns.to_string_lossy().into_owned();
            // The pod's network, when a CNI network is configured (else loopback only).
            if self.cni.load().is_ok() {
                let a = cni_attachment(id, &st.netns, config);
                let result = self.cni.setup(&a).await.map_err(|e| {
                    Status::internal(format!("failed to setup network for sandbox {id:?}: {e}"))
                })?;
                st.ips = crate::cni::result_ips(&result, &a.ifname);
            }
        }

        let user = UserSpec::from_image(
            image
                .config
                .get("User")
                .and_then(|u| u.as_str())
                .unwrap_or(""),
        )
        .resolve(None, None, &[])
        .unwrap_or_default();
        let shm = (!st.shm.is_empty()).then(|| PathBuf::from(&st.shm));
        let cgroup_parent = self.pod_cgroup(config, id);
        let spec = spec::sandbox_spec(&SandboxInput {
            id,
            config,
            image: &image.config,
            user: &user,
            resolv: &dir.join("resolv.conf"),
            shm: shm.as_deref(),
            netns: &st.netns,
            cgroup_parent: &cgroup_parent,
            oom_floor: self.oom_floor,
            host: HostLimits::detect(&self.cfg, &format!("{cgroup_parent}/{id}")),
        })?;

        self.api
            .prepare_snapshot(&self.cfg.snapshotter, id, &image.chain_id, lease)
            .await?;
        let record = ctrd::Container {
            id: id.to_string(),
            labels: spec::record_labels(&config.labels, "sandbox"),
            image: image_name,
            runtime: Some(ctrd::container::Runtime {
                name: runtime.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE.into(),
                value: serde_json::to_vec(&spec).expect("JSON"),
            }),
            snapshotter: self.cfg.snapshotter.clone(),
            snapshot_key: id.to_string(),
            extensions: extensions(config, &st),
            ..Default::default()
        };
        self.api
            .containers()
            .create(self.api.req_lease(
                ctrd::CreateContainerRequest {
                    container: Some(record),
                },
                lease,
            )?)
            .await?;
        let mut sb = Sandbox {
            id: id.to_string(),
            config: config.clone(),
            st,
        };
        self.meta
            .with(|ix| ix.sandboxes.insert(id.to_string(), sb.clone()));

        let created = self
            .api
            .tasks()
            .create(self.api.req(tasks::CreateTaskRequest {
                container_id: id.to_string(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        self.api
            .tasks()
            .start(self.api.req(tasks::StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await?;
        sb.st.pid = created.pid;
        sb.st.ready = true;
        self.meta.save_sandbox(&self.api, &sb).await?;
        Ok(sb)
    }

    /// Removes whatever a sandbox has (task, record, snapshot, namespaces, files); each step
    /// tolerates what is already gone, so it undoes a half-made sandbox too.
    async fn teardown_sandbox(&self, id: &str) {
        let _ = self.kill(id, libc::SIGKILL as u32, true).await;
        self.delete_task(id).await;
        if self.cni.cached_ids().iter().any(|c| c == id) {
            let ns = self.netns_path(id);
            if let Err(e) = self.cni.teardown(id, &ns.to_string_lossy(), "eth0").await {
                tracing::warn!(id = %id, error = %e, "tearing down a failed sandbox's network");
            }
        }
        self.release_sandbox_mounts(id);
        let r = self
            .api
            .containers()
            .delete(
                self.api
                    .req(ctrd::DeleteContainerRequest { id: id.to_string() }),
            )
            .await;
        if let Err(s) = r
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(id = %id, error = %s, "removing a sandbox's record");
        }
        self.remove_snapshot(id).await;
        if let Some(sb) = self.meta.sandbox(id) {
            self.remove_pod_cgroup(&sb.config, id);
        }
        let _ = std::fs::remove_dir_all(self.sandbox_dir(id));
        let _ = std::fs::remove_dir_all(self.dirs.state.join("sandboxes").join(id));
    }

    /// Unmounts the pod's /dev/shm and removes its network namespace.
    fn release_sandbox_mounts(&self, id: &str) {
        for p in [self.shm_dir(id), self.netns_path(id)] {
            if let Err(e) = crate::netns::remove(&p) {
                tracing::warn!(id = %id, path = %p.display(), error = %e, "releasing a sandbox mount");
            }
        }
    }

    pub(crate) async fn remove_snapshot(&self, key: &str) {
        let r = self
            .api
            .snapshots()
            .remove(self.api.req(snaps::RemoveSnapshotRequest {
                snapshotter: self.cfg.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await;
        if let Err(s) = r
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!(key = %key, error = %s, "removing a snapshot");
        }
    }

    pub(crate) async fn stop_sandbox(&self, id: &str) -> Result<(), Status> {
        let Some(sb) = self.meta.sandbox_if_any(id)? else {
            return Ok(());
        };
        // Its containers first, at once (as containerd: no grace period).
        let members = self.meta.members(&sb.id);
        for c in members {
            self.stop_container(&c, 0).await?;
        }
        self.stop_task(&sb.id, libc::SIGKILL as u32, Duration::ZERO)
            .await?;
        let _g = self.meta.lock(&sb.id).await;
        // The network first (its plugins need the namespace), from the cached result; a
        // failure fails the stop, so the kubelet retries it.
        if !sb.st.netns.is_empty() {
            self.cni
                .teardown(&sb.id, &sb.st.netns, "eth0")
                .await
                .map_err(|e| {
                    Status::internal(format!(
                        "failed to destroy network for sandbox {:?}: {e}",
                        sb.id
                    ))
                })?;
        }
        self.release_sandbox_mounts(&sb.id);
        if let Some(mut cur) = self.meta.sandbox(&sb.id)
            && (cur.st.ready || !cur.st.netns.is_empty() || !cur.st.shm.is_empty())
        {
            cur.st.ready = false;
            cur.st.pid = 0;
            self.meta.save_sandbox(&self.api, &cur).await?;
            self.publish_sandbox(&cur, cri::ContainerEventType::ContainerStoppedEvent);
        }
        Ok(())
    }

    pub(crate) async fn remove_sandbox(&self, id: &str) -> Result<(), Status> {
        let Some(sb) = self.meta.sandbox_if_any(id)? else {
            return Ok(());
        };
        if sb.st.ready {
            self.stop_sandbox(&sb.id).await?;
        }
        let members = self.meta.members(&sb.id);
        for c in members {
            self.remove_container(&c).await?;
        }
        let _g = self.meta.lock(&sb.id).await;
        self.teardown_sandbox(&sb.id).await;
        self.meta.with(|ix| ix.sandboxes.remove(&sb.id));
        self.meta.release(&sb.st.name, &sb.id);
        self.publish_sandbox(&sb, cri::ContainerEventType::ContainerDeletedEvent);
        drop(_g);
        self.meta.forget_lock(&sb.id);
        Ok(())
    }

    pub(crate) fn list_sandboxes(
        &self,
        filter: Option<&cri::PodSandboxFilter>,
    ) -> Vec<cri::PodSandbox> {
        let all: Vec<Sandbox> = self
            .meta
            .with(|ix| ix.sandboxes.values().cloned().collect());
        let mut out: Vec<cri::PodSandbox> = all
            .into_iter()
            .filter(|s| match filter {
                None => true,
                Some(f) => {
                    (f.id.is_empty() || s.id.starts_with(&f.id))
                        && f.state.as_ref().is_none_or(|v| v.state == s.state() as i32)
                        && f.label_selector
                            .iter()
                            .all(|(k, v)| s.config.labels.get(k) == Some(v))
                }
            })
            .map(|s| cri::PodSandbox {
                id: s.id.clone(),
                metadata: Some(s.metadata()),
                state: s.state() as i32,
                created_at: s.st.created_at,
                labels: s.config.labels.clone(),
                annotations: s.config.annotations.clone(),
                runtime_handler: s.st.runtime_handler.clone(),
            })
            .collect();
        out.sort_by_key(|s| s.created_at);
        out
    }
}

/// A sandbox's CRI status.
pub(crate) fn status(sb: &Sandbox) -> cri::PodSandboxStatus {
    let sc = sb
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    cri::PodSandboxStatus {
        id: sb.id.clone(),
        metadata: Some(sb.metadata()),
        state: sb.state() as i32,
        created_at: sb.st.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: sb.st.ips.first().cloned().unwrap_or_default(),
            additional_ips: sb
                .st
                .ips
                .iter()
                .skip(1)
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(sc.namespace_options.unwrap_or_default()),
            }),
        }),
        labels: sb.config.labels.clone(),
        annotations: sb.config.annotations.clone(),
        runtime_handler: sb.st.runtime_handler.clone(),
    }
}

/// The CNI call for a pod: CNI_ARGS as the kubelet's network plugins expect them, and the
/// capability arguments from its config (port mappings, DNS).
fn cni_attachment(id: &str, netns: &str, config: &cri::PodSandboxConfig) -> crate::cni::Attachment {
    let md = config.metadata.clone().unwrap_or_default();
    let mut caps = serde_json::Map::new();
    let ports: Vec<serde_json::Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let proto = match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            serde_json::json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": proto,
                "hostIP": p.host_ip,
            })
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".into(), serde_json::Value::Array(ports));
    }
    if let Some(dns) = &config.dns_config {
        caps.insert(
            "dns".into(),
            serde_json::json!({
                "servers": dns.servers,
                "searches": dns.searches,
                "options": dns.options,
            }),
        );
    }
    crate::cni::Attachment {
        id: id.to_string(),
        netns: netns.to_string(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), md.namespace),
            ("K8S_POD_NAME".into(), md.name),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
            ("K8S_POD_UID".into(), md.uid),
        ],
        caps,
    }
}

#[cfg(test)]
mod tests;
