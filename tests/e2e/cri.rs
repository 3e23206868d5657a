//! The Kubernetes CRI served by berthd (`runtime.v1`), driven over gRPC as the kubelet drives
//! it, and by crictl where one is installed: pods and containers with real processes, exec,
//! logs, stats, restart of the daemon, bad input, images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_api::runtime::v1 as cri;
use berth_e2e::{Daemon, Registry, busybox_oci_archive, ok, wait_for};
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www:/var/www:/bin/sh\nu:x:1000:1000::/:/bin/sh\n";
const GROUP: &[u8] = b"root:x:0:\nwww-data:x:33:\nextra:x:50000:u\n";

struct Cri {
    d: Daemon,
    /// This daemon's cgroup parent for pods (tests run side by side).
    cgroup: String,
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    logs: tempfile::TempDir,
}

impl Cri {
    async fn start() -> Cri {
        Cri::start_with("").await
    }

    /// With more berthd configuration (tables after `[cri]`'s keys).
    async fn start_with(extra: &str) -> Cri {
        // Our shim (and berth-runc beside it) from the build, on berthd's PATH.
        berth_e2e::bin("containerd-shim-berth-v2");
        let path = format!(
            "{}:{}",
            berth_e2e::bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let cgroup = format!(
            "berth-e2e-{}",
            std::process::id() as u64 * 1000
                + u64::from(SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        );
        let config = format!("[cri]\ncgroup_parent = \"/{cgroup}\"\n{extra}");
        let d = Daemon::start_for_tasks_with(&config, &[("PATH", &path)]);
        let ch = d.channel().await;
        let mut c = Cri {
            cgroup,
            rt: RuntimeServiceClient::new(ch.clone()),
            img: ImageServiceClient::new(ch),
            d,
            logs: tempfile::tempdir().expect("log dir"),
        };
        c.import_busybox();
        c
    }

    /// Imports `busybox` (with /etc/passwd and /etc/group) into the k8s.io namespace.
    fn import_busybox(&mut self) {
        let archive = self.d.dir.path().join("busybox.tar");
        busybox_oci_archive(
            &archive,
            "docker.io/library/busybox:latest",
            &[("etc/passwd", PASSWD), ("etc/group", GROUP)],
        );
        ok(self.d.berthctl(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            &archive.display().to_string(),
        ]));
    }

    async fn reconnect(&mut self) {
        let ch = self.d.channel().await;
        self.rt = RuntimeServiceClient::new(ch.clone());
        self.img = ImageServiceClient::new(ch);
    }

    fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "e2e".into(),
                attempt: 0,
            }),
            hostname: format!("{name}-host"),
            log_directory: self.logs.path().join(name).display().to_string(),
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.0.0.10".into()],
                searches: vec!["e2e.svc".into()],
                options: vec!["ndots:5".into()],
            }),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                // A negative score must be raised, not refused (no CAP_SYS_RESOURCE here).
                resources: None,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn run_pod(&mut self, name: &str) -> (String, cri::PodSandboxConfig) {
        let config = self.pod_config(name);
        let id = self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    /// Container `name` running `script` in pod `(id, config, ..)`, once it runs.
    async fn running<T>(
        &mut self,
        pod: &(String, cri::PodSandboxConfig, T),
        name: &str,
        script: &str,
    ) -> String {
        let id = self
            .create_start(&pod.0, &pod.1, Cri::container_config(name, script))
            .await;
        self.wait_state(&id, cri::ContainerState::ContainerRunning)
            .await;
        id
    }

    /// Pod `name` with a container `srv` running `script`, once it runs: (pod id, its
    /// config, container id).
    async fn pod_running(
        &mut self,
        name: &str,
        script: &str,
    ) -> (String, cri::PodSandboxConfig, String) {
        let (pod, pc) = self.run_pod(name).await;
        let id = self
            .create_start(&pod, &pc, Cri::container_config("srv", script))
            .await;
        self.wait_state(&id, cri::ContainerState::ContainerRunning)
            .await;
        (pod, pc, id)
    }

    fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            labels: HashMap::from([("c".to_string(), name.to_string())]),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    cpu_shares: 512,
                    oom_score_adj: -500,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext::default()),
            }),
            ..Default::default()
        }
    }

    async fn create_start(
        &mut self,
        pod: &str,
        pc: &cri::PodSandboxConfig,
        cc: cri::ContainerConfig,
    ) -> String {
        let id = self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(cc),
                sandbox_config: Some(pc.clone()),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .expect("StartContainer");
        id
    }

    async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status")
    }

    async fn wait_state(&mut self, id: &str, want: cri::ContainerState) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(id).await;
            if s.state == want as i32 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} never got to {want:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops and removes `containers`, then stops and removes the pod, as a kubelet does when
    /// a pod goes.
    async fn teardown(&mut self, pod: &str, containers: &[&str]) {
        for id in containers {
            self.rt
                .stop_container(cri::StopContainerRequest {
                    container_id: id.to_string(),
                    timeout: 1,
                })
                .await
                .unwrap();
            self.rt
                .remove_container(cri::RemoveContainerRequest {
                    container_id: id.to_string(),
                })
                .await
                .unwrap();
        }
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .unwrap();
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_string(),
            })
            .await
            .unwrap();
    }

    /// Waits up to 20 s for [`Cri::leftovers`] to be empty; fails listing them.
    fn assert_no_leftovers(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "left behind: {left:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Mounts, network namespaces and shims of CRI objects still on the host.
    fn leftovers(&self) -> Vec<String> {
        let state = self.d.dir.path().join("state");
        let mut out: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&*state.to_string_lossy()))
            .map(|l| format!("mount: {l}"))
            .collect();
        for sub in [
            "io.berth.cri/netns",
            "io.berth.cri/sandboxes",
            "io.berth.cri/exec",
        ] {
            for e in std::fs::read_dir(state.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(format!("file: {}", e.path().display()));
            }
        }
        out.extend(self.d.leftover_pids().iter().map(|p| format!("pid: {p}")));
        let ctrs = ok(self.d.ctr(&["-n", "k8s.io", "containers", "ls", "-q"]));
        out.extend(
            ctrs.lines()
                .filter(|l| !l.is_empty())
                .map(|l| format!("container: {l}")),
        );
        for cg in ["memory", "pids", "cpu"] {
            let p = Path::new("/sys/fs/cgroup").join(cg).join(&self.cgroup);
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    out.push(format!("cgroup: {}", e.path().display()));
                }
            }
        }
        out
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // The daemon and what its pods left go first: a cgroup with processes stays.
        self.d.finish();
        // Pod cgroups and kubepods/burstable, which a kubelet would make and remove, are left
        // by the runtime: removed with the test's parent, deepest first (the killed processes
        // of a failed test may take a moment to leave them).
        let dir = Path::new("/sys/fs/cgroup/memory").join(&self.cgroup);
        for _ in 0..50 {
            berth_e2e::remove_cgroup(&self.cgroup);
            if !dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Log lines of a CRI log file: (stream, tag, text).
fn log_lines(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap_or_default();
            assert!(
                ts.ends_with('Z') && ts.len() == 30,
                "timestamp {ts:?} in {l:?}"
            );
            (
                f.next().unwrap_or_default().into(),
                f.next().unwrap_or_default().into(),
                f.next().unwrap_or_default().into(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_pod_and_container_lifecycle() {
    let mut c = Cri::start().await;
    let v =
        c.rt.version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("berth", "v1")
    );
    let st =
        c.rt.status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    let conds = st.status.unwrap().conditions;
    assert!(conds.iter().any(|x| x.r#type == "RuntimeReady" && x.status));
    assert!(
        conds
            .iter()
            .any(|x| x.r#type == "NetworkReady" && !x.status && !x.reason.is_empty())
    );

    let (pod, pc) = c.run_pod("web").await;
    let ps =
        c.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ps.status.unwrap().state,
        cri::PodSandboxState::SandboxReady as i32
    );
    let info: serde_json::Value = serde_json::from_str(&ps.info["info"]).unwrap();
    let pause_pid = info["pid"].as_u64().unwrap();
    // The pause process: oom_score_adj raised to the daemon's (not -998), in its own pid ns.
    let adj: i64 = std::fs::read_to_string(format!("/proc/{pause_pid}/oom_score_adj"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(adj >= 0, "pause oom_score_adj {adj}");

    let script = "echo hello; echo oops >&2; printf 'no newline'; trap 'echo bye; exit 3' TERM; while true; do sleep 0.1; done";
    let id = c
        .create_start(&pod, &pc, Cri::container_config("app", script))
        .await;
    let s = c
        .wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;
    assert_eq!(s.image_id, s.image.as_ref().unwrap().image);
    assert!(
        s.image_ref.starts_with("docker.io/library/busybox@sha256:"),
        "{}",
        s.image_ref
    );
    assert_eq!(
        s.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
        64 << 20
    );

    // ExecSync: the pod's hostname, DNS, users; a failing command; a timeout.
    let r = c.exec(&id, &["hostname"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "web-host");
    let r = c.exec(&id, &["cat", "/etc/resolv.conf"], 10).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "search e2e.svc\nnameserver 10.0.0.10\noptions ndots:5\n"
    );
    let r = c
        .exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 4"], 10)
        .await
        .unwrap();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 4)
    );
    let t0 = Instant::now();
    let e = c.exec(&id, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // The container's cgroup got the limits; the process its score (raised if negative).
    let r = c
        .exec(&id, &["cat", "/proc/self/oom_score_adj"], 10)
        .await
        .unwrap();
    let adj: i64 = String::from_utf8_lossy(&r.stdout).trim().parse().unwrap();
    assert!(adj >= 0);

    // Logs: CRI format, both streams (the unterminated line waits for its end).
    let log = PathBuf::from(&pc.log_directory).join("app.log");
    wait_for("the log", || log_lines(&log).len() >= 2);
    let lines = log_lines(&log);
    assert!(
        lines.contains(&("stdout".into(), "F".into(), "hello".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "F".into(), "oops".into())),
        "{lines:?}"
    );

    // Stats and lists with filters.
    let stats =
        c.rt.container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    let list =
        c.rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: HashMap::from([("c".to_string(), "app".to_string())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    let none =
        c.rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(none.is_empty());
    let pstats =
        c.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(pstats.linux.unwrap().containers.len(), 1);

    // Reopen: after a rename, lines go to a new file at the path.
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    c.rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(log.exists(), "reopened log file");

    // Update the memory limit of the running container.
    c.rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let r = c
        .exec(
            &id,
            &["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"],
            10,
        )
        .await;
    if let Ok(r) = r
        && r.exit_code == 0
    {
        assert_eq!(
            String::from_utf8_lossy(&r.stdout).trim(),
            (96u64 << 20).to_string()
        );
    }

    // Stop: SIGTERM (the image's default), the trap runs and exits 3 within the grace period.
    c.rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    let s = c
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    // The unfinished line got its end after the reopen, in the new file.
    let lines = log_lines(&log);
    assert!(
        lines.contains(&("stdout".into(), "F".into(), "no newlinebye".into())),
        "{lines:?}"
    );
    assert!(s.finished_at >= s.started_at);
    // Idempotent stop and remove; removing twice, and stopping a pod twice, answer OK.
    c.rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    c.rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    c.rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let ps =
        c.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ps.status.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    c.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_security_context_and_namespaces() {
    let mut c = Cri::start().await;
    let (pod, pc) = c.run_pod("sec").await;
    let mut cc = Cri::container_config("u", "sleep 1000");
    let sc = cc
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.run_as_username = "u".into();
    sc.supplemental_groups = vec![1234];
    sc.readonly_rootfs = true;
    sc.no_new_privs = true;
    sc.capabilities = Some(cri::Capability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        drop_capabilities: vec!["CHOWN".into()],
        ..Default::default()
    });
    sc.namespace_options = Some(cri::NamespaceOption {
        pid: cri::NamespaceMode::Container as i32,
        ..Default::default()
    });
    let id = c.create_start(&pod, &pc, cc).await;
    c.wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;
    let r = c.exec(&id, &["id"], 10).await.unwrap();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(
        out.contains("uid=1000") && out.contains("gid=1000"),
        "{out}"
    );
    assert!(
        out.contains("50000") && out.contains("1234"),
        "groups from /etc/group and the context: {out}"
    );
    let r = c.exec(&id, &["sh", "-c", "echo x > /x"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0, "read-only rootfs");
    let r = c
        .exec(&id, &["cat", "/proc/self/status"], 10)
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&r.stdout).into_owned();
    let caps = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    let bnd = u64::from_str_radix(caps.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert!(bnd & (1 << 21) != 0, "CAP_SYS_ADMIN added: {caps}");
    assert!(bnd & 1 == 0, "CAP_CHOWN dropped: {caps}");
    assert!(status.lines().any(|l| l.starts_with("NoNewPrivs:\t1")));
    // Its own pid namespace: it is pid 1 there, and the pause process is not visible.
    let r = c.exec(&id, &["cat", "/proc/1/cmdline"], 10).await.unwrap();
    assert!(
        String::from_utf8_lossy(&r.stdout).starts_with("sleep"),
        "{:?}",
        r.stdout
    );
    // Masked paths (the defaults).
    let r = c.exec(&id, &["cat", "/proc/kcore"], 10).await.unwrap();
    assert!(r.stdout.is_empty());
    // No seccomp profile unless asked for (as the kubelet's default, Unconfined).
    assert!(
        status.lines().any(|l| l == "Seccomp:\t0"),
        "unconfined by default: {status}"
    );
    let r = c
        .exec(&id, &["busybox", "unshare", "-U", "true"], 10)
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "unshare allowed unconfined: {r:?}");

    // A second container sharing the pod's pid namespace sees pause as pid 1.
    let mut cc = Cri::container_config("shared", "sleep 1000");
    cc.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    });
    let id2 = c.create_start(&pod, &pc, cc).await;
    c.wait_state(&id2, cri::ContainerState::ContainerRunning)
        .await;
    let r = c.exec(&id2, &["cat", "/proc/1/cmdline"], 10).await.unwrap();
    assert!(
        String::from_utf8_lossy(&r.stdout).starts_with("/pause"),
        "{:?}",
        r.stdout
    );
    // RuntimeDefault: containerd's default profile, filtering (mode 2); a syscall it leaves
    // out (`unshare` without CAP_SYS_ADMIN) is refused.
    let r = c
        .exec(&id2, &["cat", "/proc/self/status"], 10)
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "runtime default is a filter: {status}"
    );
    let r = c
        .exec(&id2, &["busybox", "unshare", "-U", "true"], 10)
        .await
        .unwrap();
    assert_ne!(r.exit_code, 0, "unshare refused by the default profile");
    // The pod's network namespace has loopback up, and nothing else.
    let r = c.exec(&id2, &["cat", "/proc/net/dev"], 10).await.unwrap();
    let dev = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(dev.contains("lo:") && dev.lines().count() == 3, "{dev}");

    c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    c.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_bad_input_is_refused_and_leaves_nothing() {
    let mut c = Cri::start().await;
    let code =
        |r: Result<tonic::Response<cri::RunPodSandboxResponse>, tonic::Status>| r.unwrap_err();
    let e = code(
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest::default())
            .await,
    );
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("config"), "{e:?}");
    let mut pc = c.pod_config("bad");
    pc.metadata.as_mut().unwrap().uid.clear();
    let e = code(
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pc),
            runtime_handler: String::new(),
        })
        .await,
    );
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("uid"), "{e:?}");
    let e = code(
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(c.pod_config("x")),
            runtime_handler: "nope".into(),
        })
        .await,
    );
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("runtime_handler"), "{e:?}");
    // A sysctl the kernel does not have: the pause task fails to start, and all is undone.
    let mut pc = c.pod_config("sysctl");
    pc.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.no.such.sysctl".to_string(), "1".to_string())]);
    assert!(
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pc),
            runtime_handler: String::new()
        })
        .await
        .is_err()
    );
    // The shim exits just after it answers Shutdown: wait for it.
    c.assert_no_leftovers();

    let (pod, pc) = c.run_pod("dup").await;
    let e = code(
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pc.clone()),
            runtime_handler: String::new(),
        })
        .await,
    );
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert!(e.message().contains(&pod), "names the holder: {e:?}");

    let create = |cc: cri::ContainerConfig, pod: &str| cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(cc),
        sandbox_config: None,
    };
    let e =
        c.rt.create_container(create(Cri::container_config("a", "true"), "no-such-pod"))
            .await
            .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let mut cc = Cri::container_config("a", "true");
    cc.image.as_mut().unwrap().image = "no/such:image".into();
    let e = c.rt.create_container(create(cc, &pod)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let mut cc = Cri::container_config("a", "true");
    cc.metadata = None;
    assert_eq!(
        c.rt.create_container(create(cc, &pod))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    let mut cc = Cri::container_config("a", "true");
    cc.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .run_as_username = "nobody-here".into();
    let e = c.rt.create_container(create(cc, &pod)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut cc = Cri::container_config("a", "true");
    cc.mounts = vec![cri::Mount {
        container_path: "relative".into(),
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    assert_eq!(
        c.rt.create_container(create(cc, &pod))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    // The same name twice.
    let id =
        c.rt.create_container(create(Cri::container_config("a", "true"), &pod))
            .await
            .unwrap()
            .into_inner()
            .container_id;
    let e =
        c.rt.create_container(create(Cri::container_config("a", "true"), &pod))
            .await
            .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert!(e.message().contains(&id), "{e:?}");
    // Only the pod and the one container exist: nothing of the failed calls.
    let ctrs = ok(c.d.ctr(&["-n", "k8s.io", "containers", "ls", "-q"]));
    let mut got: Vec<&str> = ctrs.lines().collect();
    got.sort();
    let mut want = vec![pod.as_str(), id.as_str()];
    want.sort();
    assert_eq!(got, want);
    let snaps = ok(c.d.ctr(&["-n", "k8s.io", "snapshots", "ls"]));
    assert_eq!(
        snaps.lines().filter(|l| l.contains("Active")).count(),
        2,
        "{snaps}"
    );
    // Unknown objects: status NotFound, stop/remove OK.
    let e =
        c.rt.container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    c.rt.stop_container(cri::StopContainerRequest {
        container_id: "nope".into(),
        timeout: 1,
    })
    .await
    .unwrap();
    c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    let e =
        c.rt.exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::FailedPrecondition,
        "exec in a created container: {e:?}"
    );
    c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
    c.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_state_survives_kill_9_of_the_daemon() {
    let mut c = Cri::start().await;
    let n: usize = berth_e2e::env_count("BERTH_CRI_PODS", 20);
    let mut pods = Vec::new();
    for i in 0..n {
        let (pod, pc) = c.run_pod(&format!("p{i}")).await;
        let id = c
            .create_start(
                &pod,
                &pc,
                Cri::container_config(
                    "tick",
                    "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
                ),
            )
            .await;
        pods.push((pod, pc, id));
    }
    // One container exits while the daemon is down.
    let (pod0, pc0, _) = pods[0].clone();
    let quitter = c
        .create_start(
            &pod0,
            &pc0,
            Cri::container_config("quit", "sleep 1; exit 5"),
        )
        .await;
    let before =
        c.rt.list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
            .len();
    c.d.kill9();
    // An exec's FIFO directory as a daemon killed mid-exec leaves it: swept at the next start.
    let stale = c.d.dir.path().join("state/io.berth.cri/exec/stale");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("stdout"), b"").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.d.restart();
    c.reconnect().await;
    let list =
        c.rt.list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
    assert_eq!(list.len(), before);
    assert!(!stale.exists(), "{} survived the restart", stale.display());
    let s = c
        .wait_state(&quitter, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 5);
    for (pod, pc, id) in &pods {
        let s = c.status(id).await;
        assert_eq!(
            s.state,
            cri::ContainerState::ContainerRunning as i32,
            "{id}"
        );
        let ps =
            c.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            ps.status.unwrap().state,
            cri::PodSandboxState::SandboxReady as i32
        );
        let log = PathBuf::from(&pc.log_directory).join("tick.log");
        let n0 = log_lines(&log).len();
        wait_for("the log to go on", || log_lines(&log).len() > n0);
    }
    // The same names are still reserved.
    let e =
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pods[1].1.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    for (pod, _, _) in &pods {
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    c.assert_no_leftovers();
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_images_pull_status_list_remove() {
    let mut c = Cri::start().await;
    let reg = Registry::start();
    let archive = c.d.dir.path().join("img.tar");
    busybox_oci_archive(&archive, "x", &[("etc/hello", b"hi")]);
    let reference = reg.push(&archive, "e2e/hello:1");
    let r = c
        .img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage")
        .into_inner();
    assert!(r.image_ref.starts_with("sha256:"));
    let st = c
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: r.image_ref.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let img = st.image.expect("found by id");
    assert_eq!(img.repo_tags, vec![reference.clone()]);
    assert_eq!(img.repo_digests.len(), 1);
    assert!(img.size > 0);
    // By digest reference too.
    let by_digest = c
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: img.repo_digests[0].clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_digest.image.unwrap().id, img.id);
    let all = c
        .img
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(all.iter().any(|i| i.id == img.id));
    let fs = c
        .img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.unwrap().value > 0);
    c.img
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let st = c
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: r.image_ref.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.image.is_none(), "every name of the image is gone");
    // A missing image: status is empty, remove is OK, pull is NotFound.
    c.img
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let e = c
        .img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: format!("{}/e2e/none:1", reg.host),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = c
        .img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "not a reference".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

/// The directory with critest and crictl (cri-tools v1.26.1) built by
/// hack/cri/build-critest.sh from a local cri-tools repository (cached in target/cri-tools),
/// once per test process; None when no repository is available here.
fn cri_tools() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/cri/build-critest.sh");
        let out = std::process::Command::new(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("running hack/cri/build-critest.sh");
        match out.status.code() {
            Some(0) => Some(PathBuf::from(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            )),
            Some(3) => None,
            _ => panic!("hack/cri/build-critest.sh failed: {:?}", out.status),
        }
    })
    .clone()
}

/// A cri-tools binary: `$NAME` (upper case) from the environment, on PATH, or built here.
fn cri_tool(name: &str) -> Option<PathBuf> {
    std::env::var_os(name.to_uppercase())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .or_else(|| cri_tools().map(|d| d.join(name)))
}

/// `crictl ARGS` against `c`'s daemon, which must succeed: its stdout, trimmed.
fn run_crictl(crictl: &Path, c: &Cri, args: &[&str]) -> String {
    let sock = format!("unix://{}", c.d.sock.display());
    let out = std::process::Command::new(crictl)
        .args(["--runtime-endpoint", &sock, "--image-endpoint", &sock])
        .args(["--timeout", "60s"])
        .args(args)
        .output()
        .expect("running crictl");
    assert!(
        out.status.success(),
        "crictl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// crictl (`$CRICTL`, on PATH, or built by hack/cri/build-critest.sh): the commands a person
/// runs.
#[tokio::test(flavor = "multi_thread")]
async fn crictl_drives_berthd() {
    let Some(crictl) = cri_tool("crictl") else {
        eprintln!(
            "SKIP: no crictl and no cri-tools repository to build it from (set CRICTL or \
             CRI_TOOLS_GIT); the gRPC tests above cover the same calls"
        );
        return;
    };
    let c = Cri::start().await;
    let run = |args: &[&str]| run_crictl(&crictl, &c, args);
    let dir = c.d.dir.path();
    let pod_json = dir.join("pod.json");
    let ctr_json = dir.join("ctr.json");
    let logs = c.logs.path().join("crictl");
    std::fs::write(&pod_json, serde_json::json!({"metadata": {"name": "cp", "namespace": "e2e", "uid": "cp-uid"}, "log_directory": logs, "linux": {}}).to_string()).unwrap();
    std::fs::write(&ctr_json, serde_json::json!({"metadata": {"name": "cc"}, "image": {"image": "busybox"}, "command": ["sh", "-c", "echo from-crictl; sleep 1000"], "log_path": "cc.log", "linux": {}}).to_string()).unwrap();
    assert!(run(&["version"]).contains("RuntimeName:  berth"));
    assert!(run(&["info"]).contains("RuntimeReady"));
    let pod = run(&["runp", pod_json.to_str().unwrap()]);
    let id = run(&[
        "create",
        &pod,
        ctr_json.to_str().unwrap(),
        pod_json.to_str().unwrap(),
    ]);
    run(&["start", &id]);
    assert!(run(&["ps"]).contains(&id[..13]));
    assert!(run(&["inspect", &id]).contains("CONTAINER_RUNNING"));
    assert!(run(&["inspectp", &pod]).contains("SANDBOX_READY"));
    assert_eq!(run(&["exec", "-s", &id, "echo", "hi"]), "hi");
    wait_for("crictl logs", || {
        run(&["logs", &id]).contains("from-crictl")
    });
    assert!(run(&["stats", "-a"]).contains(&id[..13]));
    run(&["stop", &id]);
    run(&["rm", &id]);
    run(&["stopp", &pod]);
    run(&["rmp", &pod]);
    assert!(run(&["images"]).contains("busybox"));
    assert!(run(&["inspecti", "busybox"]).contains("repoTags"));
    assert!(run(&["imagefsinfo"]).contains("usedBytes"));
    let reg = Registry::start();
    let archive = dir.join("img.tar");
    busybox_oci_archive(&archive, "x", &[("etc/x", b"x")]);
    let reference = reg.push(&archive, "e2e/crictl:1");
    run(&["pull", &reference]);
    assert!(run(&["images"]).contains("e2e/crictl"));
    run(&["rmi", &reference]);
    assert!(!run(&["images"]).contains("e2e/crictl"));
    c.assert_no_leftovers();
}

/// critest v1.26.1, Kubernetes' CRI conformance suite, against berthd through
/// hack/cri/critest.sh (local stand-ins of every test image under their original names,
/// a private berthd with a CNI bridge network, host side effects undone). Every spec must pass,
/// exec, attach and port-forward through the streaming server and pod networking through CNI
/// included; the only failure allowed is the one no runtime here can pass
/// (hack/cri/known-failures.txt).
///
/// And the script's clean-up touches nothing it did not start: from the moment critest's run
/// has ended (the summary is printed; the run's mount namespace is gone, and the kernel hands
/// its number to the next new one) until the script exits, this test keeps starting processes
/// in new mount namespaces of its own, and every one of them must still be running afterwards.
/// (A clean-up that chose processes by the number of the run's mount namespace killed such a
/// bystander: a test's berthd, once.)
#[test]
fn critest_conformance() {
    use std::io::{BufRead, Read};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (Some(critest), Some(crictl)) = (cri_tool("critest"), cri_tool("crictl")) else {
        eprintln!(
            "SKIP: no critest and no cri-tools repository to build it from (set CRITEST and \
             CRICTL, or CRI_TOOLS_GIT)"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = tempfile::tempdir().unwrap();
    let _host_network = HOST_NETWORK.blocking_lock();
    // Benchmarks are not tests.
    let skip = "Benchmark";
    let mut script = std::process::Command::new(root.join("hack/cri/critest.sh"))
        .arg("berth")
        .arg(format!("--ginkgo.skip={skip}"))
        .env("CRITEST", &critest)
        .env("CRICTL", &crictl)
        .env("BERTHD", berth_e2e::bin("berthd"))
        .env("CRI_OUT", out_dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running hack/cri/critest.sh");
    let mut err = script.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = err.read_to_string(&mut v);
        v
    });
    // Bystanders: `sleep` in a new mount namespace each, one every 20 ms from the summary line
    // until the script has exited.
    let (ended, exited) = (
        std::sync::Arc::new(AtomicBool::new(false)),
        std::sync::Arc::new(AtomicBool::new(false)),
    );
    let spawner = {
        let (ended, exited) = (ended.clone(), exited.clone());
        std::thread::spawn(move || {
            let mut kids = Vec::new();
            while !ended.load(Ordering::SeqCst) && !exited.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            while !exited.load(Ordering::SeqCst) && kids.len() < 1000 {
                kids.push(
                    std::process::Command::new("unshare")
                        .args(["--mount", "--propagation", "private", "sleep", "600"])
                        .stdin(std::process::Stdio::null())
                        .spawn()
                        .expect("unshare"),
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            kids
        })
    };
    let mut stdout = String::new();
    for line in std::io::BufReader::new(script.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if line.starts_with("critest: ") {
            ended.store(true, Ordering::SeqCst);
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let status = script.wait().unwrap();
    exited.store(true, Ordering::SeqCst);
    let mut bystanders = spawner.join().unwrap();
    let hit: Vec<String> = bystanders
        .iter_mut()
        .filter_map(|k| {
            k.try_wait()
                .unwrap()
                .map(|st| format!("pid {}: {st}", k.id()))
        })
        .collect();
    for k in &mut bystanders {
        let _ = k.kill();
        let _ = k.wait();
    }
    let summary = std::fs::read_to_string(out_dir.path().join("summary.txt")).unwrap_or_default();
    eprintln!("{}", stderr.join().unwrap());
    eprintln!("{summary}");
    assert!(
        hit.is_empty(),
        "critest.sh's clean-up ended {} of {} processes it did not start: {hit:?}",
        hit.len(),
        bystanders.len()
    );
    assert!(
        status.success(),
        "critest: unexpected failures (critest.log kept in {}):\n{stdout}\n{summary}",
        out_dir.keep().display(),
    );
    assert!(
        !bystanders.is_empty(),
        "no bystander was started: the summary line never came"
    );
    let passed: u32 = summary
        .split_whitespace()
        .zip(summary.split_whitespace().skip(1))
        .find(|(_, w)| w.trim_end_matches(',') == "passed")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    // Containerd 1.6 passes 79 here (critest v1.26.1).
    assert!(
        passed >= 79,
        "fewer specs passed than containerd 1.6 passes: {summary}"
    );
}

/// Held by each test that changes the host's network settings (a CNI bridge turns on
/// net.ipv4.ip_forward, and each test restores the value it found): two at once would each
/// restore what the other set.
static HOST_NETWORK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A CNI network on a bridge of its own (Debian's bridge + host-local plugins, IPs of
/// `10.<net>.<n>.0/24`), for one test at a time ([`HOST_NETWORK`]). Dropping it undoes what
/// the network did to the host, whatever the test left: the bridge, the masquerade rules of
/// its name, and net.ipv4.ip_forward (the bridge plugin's isGateway turns it on).
struct BridgeNet {
    dir: tempfile::TempDir,
    name: String,
    bridge: String,
    prefix: String,
    ip_forward: String,
    _lock: tokio::sync::MutexGuard<'static, ()>,
}

impl BridgeNet {
    /// `None` (after saying so) where the CNI plugins are missing and this is not CI.
    async fn new(net: u8, masquerade: bool) -> Option<BridgeNet> {
        if !Path::new("/usr/lib/cni/bridge").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs containernetworking-plugins"
            );
            eprintln!(
                "SKIP: no CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)"
            );
            return None;
        }
        let lock = HOST_NETWORK.lock().await;
        let n = std::process::id() % 200 + 20;
        let b = BridgeNet {
            dir: tempfile::tempdir().unwrap(),
            name: format!("e2e-{net}-{n}"),
            bridge: format!("bcri{net}x{n}"),
            prefix: format!("10.{net}.{n}."),
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            _lock: lock,
        };
        std::fs::create_dir_all(b.conf_dir()).unwrap();
        std::fs::write(
            b.conf_dir().join("10-e2e.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": b.name,
                "plugins": [{
                    "type": "bridge", "bridge": b.bridge, "isGateway": true,
                    "ipMasq": masquerade,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{}0/24", b.prefix)}]],
                             "dataDir": b.dir.path().join("ipam")}
                }]
            })
            .to_string(),
        )
        .unwrap();
        Some(b)
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// berthd's `[cri.cni]` table for this network.
    fn berthd_config(&self) -> String {
        format!(
            "[cri.cni]\nconf_dir = \"{}\"\nbin_dir = \"/usr/lib/cni\"\n",
            self.conf_dir().display()
        )
    }

    /// Whether host-local holds `ip` for a pod.
    fn reserved(&self, ip: &str) -> bool {
        self.dir
            .path()
            .join("ipam")
            .join(&self.name)
            .join(ip)
            .exists()
    }

    /// What pods of this network hold on the host: IP reservations, veths on the bridge, nat
    /// rules naming the network.
    fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.path().join("ipam").join(&self.name))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with(&self.prefix))
            .map(|f| format!("reserved IP: {f}"))
            .collect();
        let links = std::process::Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        out.extend(
            String::from_utf8_lossy(&links.stdout)
                .lines()
                .map(|l| format!("veth: {l}")),
        );
        out.extend(
            self.nat_rules()
                .into_iter()
                .map(|r| format!("nat rule: {r}")),
        );
        out
    }

    /// POSTROUTING rules the bridge plugin's masquerade made for this network's pods.
    fn nat_rules(&self) -> Vec<String> {
        let rules = std::process::Command::new("iptables")
            .args(["-w", "-t", "nat", "-S", "POSTROUTING"])
            .output()
            .unwrap();
        let tag = format!("name: \\\"{}\\\"", self.name);
        String::from_utf8_lossy(&rules.stdout)
            .lines()
            .filter(|l| l.contains(&tag))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for BridgeNet {
    fn drop(&mut self) {
        for rule in self.nat_rules() {
            // `-S` prints rules quoted for a shell: delete each as printed, then its chain.
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "iptables -w -t nat {}",
                    rule.replacen("-A ", "-D ", 1)
                ))
                .status();
            if let Some(chain) = rule.split(" -j ").nth(1).map(str::trim)
                && chain.starts_with("CNI-")
            {
                for op in ["-F", "-X"] {
                    let _ = std::process::Command::new("iptables")
                        .args(["-w", "-t", "nat", op, chain])
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.ip_forward);
    }
}

/// Pods on a CNI bridge network (Debian's bridge + host-local plugins): each gets an IP of
/// the subnet, reported by PodSandboxStatus; the host reaches a pod's server through the
/// bridge; one pod reaches the other; StopPodSandbox removes the veth, the IP reservation and
/// the cached result.
#[tokio::test(flavor = "multi_thread")]
async fn cri_pods_on_a_cni_bridge() {
    let Some(net) = BridgeNet::new(213, false).await else {
        return;
    };
    let mut c = Cri::start_with(&net.berthd_config()).await;
    let status =
        c.rt.status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    let ready = status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|x| x.r#type == "NetworkReady")
        .unwrap();
    assert!(ready.status, "{ready:?}");

    let mut ips = Vec::new();
    let mut pods = Vec::new();
    for name in ["web1", "web2"] {
        let (pod, pc) = c.run_pod(name).await;
        let st =
            c.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        let ip = st.network.unwrap().ip;
        assert!(ip.starts_with(&net.prefix), "{ip}");
        let id = c
            .create_start(
                &pod,
                &pc,
                Cri::container_config(
                    "srv",
                    &format!("mkdir -p /www && echo hello-{name} > /www/index.html && exec httpd -f -p 8080 -h /www"),
                ),
            )
            .await;
        c.wait_state(&id, cri::ContainerState::ContainerRunning)
            .await;
        ips.push(ip);
        pods.push((pod, id));
    }
    assert_ne!(ips[0], ips[1]);
    // The host, through the bridge.
    assert!(http_get(&ips[0]).contains("hello-web1"));
    assert!(http_get(&ips[1]).contains("hello-web2"));
    // One pod reaches the other.
    let url = format!("http://{}:8080/index.html", ips[1]);
    let r = c
        .exec(&pods[0].1, &["busybox", "wget", "-q", "-O", "-", &url], 10)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("hello-web2"),
        "{r:?}"
    );
    assert!(net.reserved(&ips[0]) && net.reserved(&ips[1]));
    let cache = c.d.dir.path().join("state/io.berth.cri/cni");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);

    for (pod, _) in &pods {
        c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    assert!(
        !net.reserved(&ips[0]) && !net.reserved(&ips[1]),
        "IPs released"
    );
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "cache emptied"
    );
    assert_eq!(net.leftovers(), Vec::<String>::new());
    for (pod, _) in &pods {
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
}

/// `GET /index.html` from `ip`:8080, retried for up to 10 s while it cannot connect.
fn http_get(ip: &str) -> String {
    let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(
            |mut s| {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            },
        );
        match r {
            Ok(out) => return out,
            Err(e) if Instant::now() > deadline => panic!("GET {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Part 5 of the CNI work: berthd killed with 20 networked pods comes back with each pod's
/// IP; StopPodSandbox then tears every network down from the cached results; and 200 cycles of
/// RunPodSandbox / StopPodSandbox / RemovePodSandbox leave no network namespace, veth, nat rule
/// (the network masquerades), IP reservation, mount, pod cgroup, cached result or shim.
#[tokio::test(flavor = "multi_thread")]
async fn cri_networked_pods_survive_kill9_and_cycles_leak_nothing() {
    let Some(net) = BridgeNet::new(214, true).await else {
        return;
    };
    let mut c = Cri::start_with(&net.berthd_config()).await;
    let pod_ip = |c: &mut Cri, pod: String| {
        let mut rt = c.rt.clone();
        async move {
            let st = rt
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod,
                    verbose: false,
                })
                .await
                .expect("PodSandboxStatus")
                .into_inner()
                .status
                .unwrap();
            (st.state, st.network.unwrap_or_default().ip)
        }
    };
    let mut pods = Vec::new();
    for i in 0..20 {
        let (pod, pc) = c.run_pod(&format!("net{i}")).await;
        let (state, ip) = pod_ip(&mut c, pod.clone()).await;
        assert!(ip.starts_with(&net.prefix), "{ip}");
        assert_eq!(state, cri::PodSandboxState::SandboxReady as i32);
        pods.push((pod, pc, ip));
    }
    let web = c
        .running(
            &pods[0],
            "web",
            "mkdir -p /www && echo hello-after-kill > /www/index.html && exec httpd -f -p 8080 -h /www",
        )
        .await;
    assert_eq!(net.nat_rules().len(), 20, "{:?}", net.nat_rules());

    c.d.kill9();
    c.d.restart();
    c.reconnect().await;
    for (pod, _, ip) in &pods {
        let (state, now) = pod_ip(&mut c, pod.clone()).await;
        assert_eq!(&now, ip, "pod {pod} after the restart");
        assert_eq!(state, cri::PodSandboxState::SandboxReady as i32, "{pod}");
        assert!(net.reserved(ip));
    }
    assert!(http_get(&pods[0].2).contains("hello-after-kill"));
    // A container made after the restart joins its pod's network (and /dev/shm).
    let late = c
        .running(
            &pods[1],
            "late",
            "mkdir -p /www && grep -q ' /dev/shm tmpfs ' /proc/mounts && echo hello-late > /www/index.html; exec httpd -f -p 8080 -h /www",
        )
        .await;
    assert!(http_get(&pods[1].2).contains("hello-late"));
    for id in [&web, &late] {
        c.rt.stop_container(cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: 1,
        })
        .await
        .unwrap();
    }
    for (pod, _, _) in &pods {
        c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(
        net.leftovers(),
        Vec::<String>::new(),
        "after StopPodSandbox"
    );
    for (pod, _, _) in &pods {
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    }
    c.assert_no_leftovers();

    for i in 0..200 {
        let (pod, _) = c.run_pod(&format!("cycle{i}")).await;
        c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
    }
    assert_eq!(net.leftovers(), Vec::<String>::new(), "after 200 cycles");
    let cache = c.d.dir.path().join("state/io.berth.cri/cni");
    assert_eq!(
        std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0),
        0,
        "cached results"
    );
    let pod_cgroups: Vec<_> = std::fs::read_dir(Path::new("/sys/fs/cgroup/memory").join(&c.cgroup))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    assert!(pod_cgroups.is_empty(), "pod cgroups left: {pod_cgroups:?}");
    c.assert_no_leftovers();
}

/// Whether a cgroup v1 hierarchy with the hugetlb controller is mounted here.
fn hugetlb_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .any(|(_, post)| {
            let f: Vec<&str> = post.split(' ').collect();
            f.first() == Some(&"cgroup")
                && f.get(2)
                    .is_some_and(|o| o.split(',').any(|o| o == "hugetlb"))
        })
}

/// Removes the kubelet-style pod cgroups a test made (deepest first), in every hierarchy.
struct PodCgroups(Vec<String>);

impl Drop for PodCgroups {
    fn drop(&mut self) {
        for rel in &self.0 {
            for e in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir(e.path().join(rel.trim_start_matches('/')));
            }
        }
    }
}

/// What a kubelet v1.26 (cgroupfs driver, burstable QoS pod: requests cpu 100m, memory 64Mi;
/// limits cpu 500m, memory 128Mi) sends: the pod in `kubepods/burstable/pod<uid>` with the
/// pod-level resources and an empty overhead, the container by image id, with the resources
/// the kubelet fills in (a hugepage limit of 0 for every page size of this host, swap equal to
/// the memory limit, its oom_score_adj), the default masked and read-only paths, an unconfined
/// seccomp profile, the termination-log and /etc/hosts mounts, and a log path under the pod's
/// log directory.
fn kubelet_shaped(
    c: &Cri,
    uid: &str,
    image_id: &str,
) -> (cri::PodSandboxConfig, cri::ContainerConfig, String) {
    let pod_dir = c.d.dir.path().join("kubelet/pods").join(uid);
    std::fs::create_dir_all(pod_dir.join("containers/web")).unwrap();
    std::fs::write(pod_dir.join("containers/web/1a2b3c4d"), b"").unwrap();
    std::fs::write(
        pod_dir.join("etc-hosts"),
        b"127.0.0.1 localhost\n10.1.2.3 web\n",
    )
    .unwrap();
    let log_dir = c.logs.path().join(format!("default_web_{uid}"));
    // The kubelet makes the container's log directory before CreateContainer.
    std::fs::create_dir_all(log_dir.join("web")).unwrap();
    let cgroup_parent = format!("/{}/kubepods/burstable/pod{uid}", c.cgroup);
    let ns = cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let unconfined = cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    };
    let k8s_labels = |name: &str| {
        HashMap::from([
            ("io.kubernetes.pod.name".to_string(), "web".to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                "default".to_string(),
            ),
            ("io.kubernetes.pod.uid".to_string(), uid.to_string()),
        ])
        .into_iter()
        .chain(
            (!name.is_empty())
                .then(|| ("io.kubernetes.container.name".to_string(), name.to_string())),
        )
        .collect::<HashMap<_, _>>()
    };
    let pod_resources = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 102,
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    };
    let pod = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web".into(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        }),
        labels: k8s_labels(""),
        annotations: HashMap::from([
            (
                "kubernetes.io/config.source".to_string(),
                "file".to_string(),
            ),
            (
                "kubernetes.io/config.seen".to_string(),
                "2026-12-07T10:00:00.000000000Z".to_string(),
            ),
        ]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.clone(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(ns.clone()),
                seccomp: Some(unconfined.clone()),
                ..Default::default()
            }),
            overhead: Some(cri::LinuxContainerResources::default()),
            resources: Some(pod_resources.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    #[allow(deprecated)]
    let container = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "web".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image_id.into(),
            ..Default::default()
        }),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo kubelet-shaped; exec sleep 1000".into(),
        ],
        envs: [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
        ]
        .into_iter()
        .map(|(k, v)| cri::KeyValue {
            key: k.into(),
            value: v.into(),
        })
        .collect(),
        mounts: vec![
            cri::Mount {
                container_path: "/dev/termination-log".into(),
                host_path: pod_dir
                    .join("containers/web/1a2b3c4d")
                    .display()
                    .to_string(),
                ..Default::default()
            },
            cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: pod_dir.join("etc-hosts").display().to_string(),
                ..Default::default()
            },
        ],
        labels: k8s_labels("web"),
        annotations: [
            ("io.kubernetes.container.hash", "8a3b1c2d"),
            ("io.kubernetes.container.restartCount", "0"),
            (
                "io.kubernetes.container.terminationMessagePath",
                "/dev/termination-log",
            ),
            ("io.kubernetes.container.terminationMessagePolicy", "File"),
            ("io.kubernetes.pod.terminationGracePeriod", "30"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        log_path: "web/0.log".into(),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                oom_score_adj: 968,
                hugepage_limits: berth_runtime::cgroups::hugepage_sizes()
                    .into_iter()
                    .map(|page_size| cri::HugepageLimit {
                        page_size,
                        limit: 0,
                    })
                    .collect(),
                memory_swap_limit_in_bytes: 128 << 20,
                ..pod_resources
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(ns),
                masked_paths: [
                    "/proc/acpi",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                ]
                .map(String::from)
                .to_vec(),
                readonly_paths: [
                    "/proc/asound",
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ]
                .map(String::from)
                .to_vec(),
                seccomp: Some(unconfined),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    (pod, container, cgroup_parent)
}

/// A kubelet's requests, replayed: RunPodSandbox, CreateContainer and StartContainer with what
/// a stock kubelet v1.26 sends (see [`kubelet_shaped`]), on this host whose hugepage sizes have
/// no hugetlb cgroup controller. The container runs with the kubelet's limits; with
/// `tolerate_missing_hugetlb_controller = false` the same CreateContainer is refused, naming
/// the field.
#[tokio::test(flavor = "multi_thread")]
async fn kubelet_shaped_requests_start_a_container() {
    let mut c = Cri::start().await;
    let image_id = c
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("busybox")
        .id;
    let uid = "0b6f3f7e-8d2c-4f55-9c1e-5a7d2a9c3e11";
    let (pod, container, cgroup_parent) = kubelet_shaped(&c, uid, &image_id);
    let cgroups = PodCgroups(vec![
        cgroup_parent.clone(),
        format!("/{}/kubepods/burstable", c.cgroup),
        format!("/{}/kubepods", c.cgroup),
    ]);
    assert!(
        !container
            .linux
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .hugepage_limits
            .is_empty()
            || berth_runtime::cgroups::hugepage_sizes().is_empty()
    );
    let pod_id =
        c.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let id = c.create_start(&pod_id, &pod, container.clone()).await;
    let st = c
        .wait_state(&id, cri::ContainerState::ContainerRunning)
        .await;
    assert_eq!(st.log_path, format!("{}/web/0.log", pod.log_directory));
    wait_for("the container's first log line", || {
        std::fs::read_to_string(&st.log_path).is_ok_and(|l| l.contains("kubelet-shaped"))
    });
    // The kubelet's limits, in the container's cgroup below the pod's.
    let cg = |ctrl: &str, file: &str| {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join(cgroup_parent.trim_start_matches('/'))
                .join(&id)
                .join(file),
        )
        .unwrap_or_else(|e| panic!("{ctrl}/{file}: {e}"))
        .trim()
        .to_string()
    };
    assert_eq!(
        cg("memory", "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );
    if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            cg("memory", "memory.memsw.limit_in_bytes"),
            (128u64 << 20).to_string()
        );
    }
    assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(cg("cpu", "cpu.shares"), "102");
    let out = c
        .exec(&id, &["cat", "/etc/hosts", "/proc/1/oom_score_adj"], 10)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10.1.2.3 web") && text.contains("968"),
        "{text}"
    );

    // Not tolerated: refused at CreateContainer, naming the field, and nothing is left.
    if !hugetlb_mounted() && !berth_runtime::cgroups::hugepage_sizes().is_empty() {
        let mut strict = Cri::start_with("tolerate_missing_hugetlb_controller = false\n").await;
        let (pod2, container2, parent2) = kubelet_shaped(&strict, uid, &image_id);
        let cgroups2 = PodCgroups(vec![
            parent2,
            format!("/{}/kubepods/burstable", strict.cgroup),
            format!("/{}/kubepods", strict.cgroup),
        ]);
        let pod2_id = strict
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod2.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        let e = strict
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod2_id.clone(),
                config: Some(container2),
                sandbox_config: Some(pod2),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("linux.resources.hugepage_limits"),
            "{}",
            e.message()
        );
        strict.teardown(&pod2_id, &[]).await;
        // The pod cgroups are the kubelet's to remove.
        drop(cgroups2);
        strict.assert_no_leftovers();
    }

    c.teardown(&pod_id, &[&id]).await;
    drop(cgroups);
    c.assert_no_leftovers();
}

/// `crictl create` with a kubelet-shaped container config (the JSON below: what a kubelet
/// v1.26 sends for a burstable pod, hugepage limits of 0 for each page size of this host
/// included) starts and runs on berthd.
#[tokio::test(flavor = "multi_thread")]
async fn crictl_runs_a_kubelet_shaped_container() {
    let Some(crictl) = cri_tool("crictl") else {
        eprintln!(
            "SKIP: no crictl and no cri-tools repository to build it from (set CRICTL or CRI_TOOLS_GIT)"
        );
        return;
    };
    let c = Cri::start().await;
    let uid = "7d4c2b1a-0e9f-4a3b-8c6d-5e4f3a2b1c0d";
    let parent = format!("/{}/kubepods/burstable/pod{uid}", c.cgroup);
    let cgroups = PodCgroups(vec![
        parent.clone(),
        format!("/{}/kubepods/burstable", c.cgroup),
        format!("/{}/kubepods", c.cgroup),
    ]);
    let dir = c.d.dir.path();
    let logs = c.logs.path().join(format!("default_web_{uid}"));
    std::fs::create_dir_all(logs.join("web")).unwrap();
    std::fs::write(dir.join("etc-hosts"), "127.0.0.1 localhost\n").unwrap();
    let pod = serde_json::json!({
        "metadata": {"name": "web", "uid": uid, "namespace": "default", "attempt": 0},
        "hostname": "web",
        "log_directory": logs,
        "dns_config": {"servers": ["10.96.0.10"], "searches": ["default.svc.cluster.local"], "options": ["ndots:5"]},
        "labels": {"io.kubernetes.pod.name": "web", "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": uid},
        "annotations": {"kubernetes.io/config.source": "file"},
        "linux": {
            "cgroup_parent": parent,
            "security_context": {
                "namespace_options": {"network": 0, "pid": 1, "ipc": 0},
                "seccomp": {"profile_type": 1}
            },
            "overhead": {},
            "resources": {"cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 102, "memory_limit_in_bytes": 134217728}
        }
    });
    let hugepages: Vec<_> = berth_runtime::cgroups::hugepage_sizes()
        .into_iter()
        .map(|s| serde_json::json!({"page_size": s, "limit": 0}))
        .collect();
    let container = serde_json::json!({
        "metadata": {"name": "web", "attempt": 0},
        "image": {"image": "busybox"},
        "command": ["/bin/sh", "-c", "echo from-a-kubelet-shaped-config; exec sleep 1000"],
        "envs": [{"key": "KUBERNETES_SERVICE_HOST", "value": "10.96.0.1"}],
        "mounts": [{"container_path": "/etc/hosts", "host_path": dir.join("etc-hosts")}],
        "labels": {"io.kubernetes.container.name": "web", "io.kubernetes.pod.name": "web", "io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": uid},
        "annotations": {"io.kubernetes.container.restartCount": "0", "io.kubernetes.container.terminationMessagePath": "/dev/termination-log"},
        "log_path": "web/0.log",
        "linux": {
            "resources": {
                "cpu_period": 100000, "cpu_quota": 50000, "cpu_shares": 102,
                "memory_limit_in_bytes": 134217728, "memory_swap_limit_in_bytes": 134217728,
                "oom_score_adj": 968, "hugepage_limits": hugepages, "unified": {}
            },
            "security_context": {
                "namespace_options": {"network": 0, "pid": 1, "ipc": 0},
                "masked_paths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
                "readonly_paths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
                "seccomp": {"profile_type": 1}
            }
        }
    });
    let (pod_json, ctr_json) = (dir.join("kubelet-pod.json"), dir.join("kubelet-ctr.json"));
    std::fs::write(&pod_json, pod.to_string()).unwrap();
    std::fs::write(&ctr_json, container.to_string()).unwrap();
    let run = |args: &[&str]| run_crictl(&crictl, &c, args);
    let pod_id = run(&["runp", pod_json.to_str().unwrap()]);
    let id = run(&[
        "create",
        &pod_id,
        ctr_json.to_str().unwrap(),
        pod_json.to_str().unwrap(),
    ]);
    run(&["start", &id]);
    assert!(run(&["inspect", &id]).contains("CONTAINER_RUNNING"));
    wait_for("the container's log line", || {
        run(&["logs", &id]).contains("from-a-kubelet-shaped-config")
    });
    let limit = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/memory")
            .join(parent.trim_start_matches('/'))
            .join(&id)
            .join("memory.limit_in_bytes"),
    )
    .unwrap();
    assert_eq!(limit.trim(), "134217728");
    run(&["stop", &id]);
    run(&["rm", &id]);
    run(&["stopp", &pod_id]);
    run(&["rmp", &pod_id]);
    drop(cgroups);
    c.assert_no_leftovers();
}

/// The image file system exists from start-up, before any image is unpacked: ImageFsInfo names
/// a real directory (the kubelet's image garbage collection reads its capacity).
#[tokio::test(flavor = "multi_thread")]
async fn image_fs_exists_from_start_up() {
    let d = tokio::task::spawn_blocking(Daemon::start).await.unwrap();
    let fs = ImageServiceClient::new(d.channel().await)
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .image_filesystems;
    let mountpoint = &fs[0].fs_id.as_ref().unwrap().mountpoint;
    assert_eq!(
        Path::new(mountpoint),
        d.root().join("snapshots/overlayfs"),
        "{fs:?}"
    );
    assert!(Path::new(mountpoint).is_dir(), "{mountpoint} missing");
}

/// `kubectl exec`, `attach` and `port-forward` as crictl does them against berthd's streaming
/// server: exec -it with a terminal (crictl's terminal size reaches the process: `stty size`),
/// exec -i with stdin piped and closed, a failing command's exit code, attach to a container
/// reading its stdin, port-forward to a server in the pod; and an exec whose client is killed
/// midway leaves no process and no FIFO behind.
#[tokio::test(flavor = "multi_thread")]
async fn crictl_streams_exec_attach_and_port_forward() {
    let Some(crictl) = cri_tool("crictl") else {
        eprintln!(
            "SKIP: no crictl and no cri-tools repository to build it from (set CRICTL or CRI_TOOLS_GIT)"
        );
        return;
    };
    let mut c = Cri::start().await;
    let (pod, pc, srv) = c
        .pod_running(
            "stream",
            "mkdir -p /www && echo hello-port-forward > /www/index.html && exec httpd -f -p 8080 -h /www",
        )
        .await;
    let sock = format!("unix://{}", c.d.sock.display());
    let crictl_cmd = |args: &[&str]| {
        let mut cmd = std::process::Command::new(&crictl);
        cmd.args(["--runtime-endpoint", &sock, "--image-endpoint", &sock])
            .args(["--timeout", "60s"])
            .args(args);
        cmd
    };

    // exec -it: a terminal, sized by crictl's own (given by `script`'s pty).
    let line = format!(
        "stty rows 33 cols 77; {} --runtime-endpoint {sock} exec -it {srv} sh -c 'stty size; tty'",
        crictl.display()
    );
    let (out, text) = berth_e2e::on_a_pty(&line);
    assert!(
        text.contains("33 77") && text.contains("/dev/pts/"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // exec -i: stdin piped, closed at its end.
    let mut child = crictl_cmd(&["exec", "-i", &srv, "sh", "-c", "cat; echo done"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\ndone\n");

    // A failing command: its stderr, and its exit code in the status frame (crictl reports it
    // and exits 1, as it does with containerd).
    let st = crictl_cmd(&["exec", &srv, "sh", "-c", "echo err >&2; exit 3"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success(), "{st:?}");
    assert!(
        e.starts_with("err\n") && e.contains("command terminated with exit code 3"),
        "{e}"
    );

    // attach: a container reading its stdin (stdin_once: it ends with the attacher's), with a
    // CRI log (its output followed there) and without one (read from its FIFOs by the CRI).
    let mut echoers = Vec::new();
    for (name, logged) in [("echo-logged", true), ("echo-nolog", false)] {
        let mut cc = Cri::container_config(name, "exec cat");
        cc.stdin = true;
        cc.stdin_once = true;
        if !logged {
            cc.log_path.clear();
        }
        let echoer = c.create_start(&pod, &pc, cc).await;
        c.wait_state(&echoer, cri::ContainerState::ContainerRunning)
            .await;
        let mut child = crictl_cmd(&["attach", "-i", &echoer])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("through attach to {name}\n").as_bytes())
            .unwrap();
        // Give the line time to come back before stdin ends the container.
        std::thread::sleep(Duration::from_millis(500));
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("through attach to {name}")),
            "{name}: {out:?}"
        );
        c.wait_state(&echoer, cri::ContainerState::ContainerExited)
            .await;
        echoers.push(echoer);
    }

    // port-forward to the pod's server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut fwd = crictl_cmd(&["port-forward", &pod, &format!("{port}:8080")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    wait_for("the forwarded port", || {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        use std::io::Read;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
        body.clear();
        // The server's close reaches us through the forward: read to the end.
        s.read_to_string(&mut body).is_ok() && body.contains("hello-port-forward")
    });
    let _ = fwd.kill();
    let _ = fwd.wait();

    // A client killed midway: its process and FIFOs go.
    let mut child = crictl_cmd(&["exec", &srv, "sh", "-c", "exec sleep 1234"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = false;
    for _ in 0..100 {
        let out = c.exec(&srv, &["sh", "-c", "ps"], 10).await.unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("sleep 1234") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the exec never started");
    let _ = child.kill();
    let _ = child.wait();
    let mut gone = false;
    for _ in 0..200 {
        let out = c.exec(&srv, &["sh", "-c", "ps"], 10).await.unwrap();
        if !String::from_utf8_lossy(&out.stdout).contains("sleep 1234") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the killed client's process is still running");

    let mut all = vec![srv.as_str()];
    all.extend(echoers.iter().map(String::as_str));
    c.teardown(&pod, &all).await;
    c.assert_no_leftovers();
}

/// A WebSocket client of the CRI streaming server: connects to `url` asking for `protocol`.
async fn ws_connect(
    url: &str,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let host = req.uri().authority().unwrap().as_str().to_owned();
    let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("WebSocket handshake")
        .0
}

/// Everything the server sends until it closes or `until` holds, per channel.
async fn ws_read_all(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    until: impl Fn(&HashMap<u8, Vec<u8>>) -> bool,
) -> HashMap<u8, Vec<u8>> {
    ws_read_for(ws, Duration::from_secs(30), until)
        .await
        .unwrap_or_else(|got| panic!("nothing for 30 s; so far {got:?}"))
}

/// As [`ws_read_all`], giving up (`Err` with what came) after `patience` without a message.
async fn ws_read_for(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    patience: Duration,
    until: impl Fn(&HashMap<u8, Vec<u8>>) -> bool,
) -> Result<HashMap<u8, Vec<u8>>, HashMap<u8, Vec<u8>>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut got: HashMap<u8, Vec<u8>> = HashMap::new();
    while !until(&got) {
        let Ok(m) = tokio::time::timeout(patience, ws.next()).await else {
            return Err(got);
        };
        match m {
            Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                got.entry(b[0]).or_default().extend_from_slice(&b[1..])
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            _ => {}
        }
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_exec_and_port_forward() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut c = Cri::start().await;
    let (pod, pc, srv) = c
        .pod_running(
            "ws",
            "mkdir -p /www /www2 && echo hello-websocket > /www/index.html && echo second-port > /www2/index.html && httpd -p 8081 -h /www2 && exec httpd -f -p 8080 -h /www",
        )
        .await;
    let exec_url = |c: &mut Cri, cmd: &str, tty: bool| {
        let req = cri::ExecRequest {
            container_id: srv.clone(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            tty,
            stdin: true,
            stdout: true,
            stderr: !tty,
        };
        let mut rt = c.rt.clone();
        async move { rt.exec(req).await.expect("Exec").into_inner().url }
    };

    // v5: stdin, its close (channel 255), stdout and stderr apart, the exit code in the status.
    let url = exec_url(&mut c, "cat; echo done; echo err >&2; exit 4", false).await;
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    ws.send(Message::binary(b"\x00through websocket\n".to_vec()))
        .await
        .unwrap();
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let got = ws_read_all(&mut ws, |_| false).await;
    assert_eq!(
        String::from_utf8_lossy(&got[&1]),
        "through websocket\ndone\n",
        "{got:?}"
    );
    assert_eq!(String::from_utf8_lossy(&got[&2]), "err\n");
    let status: serde_json::Value = serde_json::from_slice(&got[&3]).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["message"], "4", "{status}");

    // v4 with a terminal: the client's size reaches the process.
    let url = exec_url(&mut c, "sleep 0.5; stty size; tty", true).await;
    let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
    ws.send(Message::binary(
        b"\x04{\"Width\":77,\"Height\":33}".to_vec(),
    ))
    .await
    .unwrap();
    let got = ws_read_all(&mut ws, |g| g.contains_key(&3)).await;
    let out = String::from_utf8_lossy(&got[&1]).replace('\r', "");
    assert!(
        out.contains("33 77") && out.contains("/dev/pts/"),
        "{got:?}"
    );
    let status: serde_json::Value = serde_json::from_slice(&got[&3]).unwrap();
    assert_eq!(status["status"], "Success", "{status}");

    // Port forwarding (v4.channel.k8s.io) of two ports in one session: data on channels 0
    // and 2, errors on 1 and 3, each opened with its port.
    let url =
        c.rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080, 8081],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
    for ch in [0u8, 2] {
        let mut m = vec![ch];
        m.extend_from_slice(b"GET /index.html HTTP/1.0\r\n\r\n");
        ws.send(Message::binary(m)).await.unwrap();
    }
    let got = ws_read_all(&mut ws, |_| false).await;
    for (ch, port, text) in [(0u8, 8080u16, "hello-websocket"), (2, 8081, "second-port")] {
        let data = &got[&ch];
        assert_eq!(data[..2], port.to_le_bytes(), "{got:?}");
        let body = String::from_utf8_lossy(&data[2..]);
        assert!(body.contains(text), "port {port}: {got:?}");
        assert_eq!(
            got.get(&(ch + 1)).map(Vec::as_slice),
            Some(&port.to_le_bytes()[..])
        );
    }

    // Two attachers at once to a container reading its stdin: what one writes, the container
    // echoes, and both read it.
    let mut cc = Cri::container_config("echo", "exec cat");
    cc.stdin = true;
    let echo = c.create_start(&pod, &pc, cc).await;
    c.wait_state(&echo, cri::ContainerState::ContainerRunning)
        .await;
    let mut attachers = Vec::new();
    for _ in 0..2 {
        let url =
            c.rt.attach(cri::AttachRequest {
                container_id: echo.clone(),
                stdin: true,
                stdout: true,
                ..Default::default()
            })
            .await
            .expect("Attach")
            .into_inner()
            .url;
        attachers.push(ws_connect(&url, "v5.channel.k8s.io").await);
    }
    for a in &mut attachers {
        ws_read_all(a, |g| g.contains_key(&1)).await;
    }
    // The ready message comes before an attacher follows the output (as with the kubelet,
    // what the container writes before that is not seen): probe until both see a line.
    let mut following = [false, false];
    for n in 0..40 {
        let probe = format!("probe-{n}");
        let mut m = vec![0u8];
        m.extend_from_slice(format!("{probe}\n").as_bytes());
        attachers[0].send(Message::binary(m)).await.unwrap();
        for (i, a) in attachers.iter_mut().enumerate() {
            let seen = |g: &HashMap<u8, Vec<u8>>| {
                g.get(&1)
                    .is_some_and(|o| String::from_utf8_lossy(o).contains(&probe))
            };
            following[i] |= ws_read_for(a, Duration::from_millis(250), seen)
                .await
                .is_ok();
        }
        if following == [true, true] {
            break;
        }
    }
    assert_eq!(following, [true, true], "attachers that never saw output");
    attachers[0]
        .send(Message::binary(b"\x00to-both\n".to_vec()))
        .await
        .unwrap();
    for (i, a) in attachers.iter_mut().enumerate() {
        let got = ws_read_all(a, |g| {
            g.get(&1)
                .is_some_and(|o| String::from_utf8_lossy(o).contains("to-both"))
        })
        .await;
        assert!(
            String::from_utf8_lossy(&got[&1]).contains("to-both"),
            "attacher {i}: {got:?}"
        );
    }
    drop(attachers);

    c.teardown(&pod, &[&srv, &echo]).await;
    c.assert_no_leftovers();
}
