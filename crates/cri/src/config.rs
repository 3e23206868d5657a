//! The `[cri]` section of berthd's configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// CRI settings (berthd's `[cri]` table); every key has a default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    /// Serve CRI at all (on the containerd API socket, and on `address` if set).
    pub enable: bool,
    /// A second unix socket serving only CRI (empty: none).
    pub address: PathBuf,
    /// The pod sandbox image. Empty: Berth's own pause image, made locally. Otherwise it is
    /// pulled when missing, and made from Berth's pause when it cannot be pulled.
    pub sandbox_image: String,
    /// Snapshotter for images and containers.
    pub snapshotter: String,
    /// The runtime handler used when a pod names none.
    pub default_runtime_name: String,
    /// Runtime handlers by name.
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// Raise a negative `oom_score_adj` to the daemon's own (containerd's
    /// `restrict_oom_score_adj`): a daemon without CAP_SYS_RESOURCE cannot lower it.
    pub restrict_oom_score_adj: bool,
    /// Longest log line written whole; longer lines are split into partial (`P`) lines.
    pub max_container_log_line_size: usize,
    /// Cgroup parent of pods that name none (cgroupfs driver).
    pub cgroup_parent: String,
    /// Hugepage limits where the host has no hugetlb cgroup controller (v1: no hugetlb
    /// hierarchy mounted; v2: not in the pod cgroup's `cgroup.controllers`): dropped with a
    /// debug line (true, containerd's default: the kubelet sends a limit of 0 for every page
    /// size the host has, whatever the controller), or CreateContainer fails with
    /// InvalidArgument (false).
    pub tolerate_missing_hugetlb_controller: bool,
    /// Drop hugepage limits even where the controller exists (containerd 1.6 defaults to true;
    /// Berth applies them where the host can).
    pub disable_hugetlb_controller: bool,
    /// Where the streaming server (Exec, Attach, PortForward URLs) listens: an IP address.
    pub stream_server_address: String,
    /// Its port; 0 picks a free one.
    pub stream_server_port: u16,
    /// At most this many streaming sessions (exec, attach, port-forward) at once; past it a
    /// client gets 429 Too Many Requests and may retry its URL.
    pub stream_max_sessions: usize,
    /// Pod networks through CNI (`[cri.cni]`).
    pub cni: crate::CniConfig,
}

/// One runtime handler: which shim runs its pods.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    /// `io.containerd.<name>.<version>` or a shim path, as a container's runtime name.
    pub runtime_type: String,
}

/// The shim runtime of Berth's own default handler.
pub const BERTH_RUNTIME: &str = "io.containerd.berth.v2";

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            enable: true,
            address: PathBuf::new(),
            sandbox_image: String::new(),
            snapshotter: "overlayfs".into(),
            default_runtime_name: "berth".into(),
            runtimes: BTreeMap::from([(
                "berth".to_string(),
                RuntimeHandler {
                    runtime_type: BERTH_RUNTIME.into(),
                },
            )]),
            restrict_oom_score_adj: true,
            max_container_log_line_size: 16 * 1024,
            cgroup_parent: "/k8s.io".into(),
            tolerate_missing_hugetlb_controller: true,
            disable_hugetlb_controller: false,
            stream_server_address: "127.0.0.1".into(),
            stream_server_port: 0,
            stream_max_sessions: 256,
            cni: crate::CniConfig::default(),
        }
    }
}

impl CriConfig {
    /// Checks what serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.runtimes.contains_key(&self.default_runtime_name) {
            return Err(format!(
                "cri.default_runtime_name: {:?} is not in cri.runtimes",
                self.default_runtime_name
            ));
        }
        for (name, r) in &self.runtimes {
            if r.runtime_type.is_empty() {
                return Err(format!("cri.runtimes.{name}.runtime_type: must be set"));
            }
        }
        if self.max_container_log_line_size < 256 {
            return Err("cri.max_container_log_line_size: must be at least 256".into());
        }
        if !self.address.as_os_str().is_empty() && !self.address.is_absolute() {
            return Err("cri.address: must be an absolute socket path".into());
        }
        if self
            .stream_server_address
            .parse::<std::net::IpAddr>()
            .is_err()
        {
            return Err(format!(
                "cri.stream_server_address: {:?} is not an IP address",
                self.stream_server_address
            ));
        }
        if self.stream_max_sessions == 0 {
            return Err("cri.stream_max_sessions: must be at least 1".into());
        }
        if !self.cgroup_parent.starts_with('/') {
            return Err("cri.cgroup_parent: must be an absolute cgroup path".into());
        }
        Ok(())
    }
}
