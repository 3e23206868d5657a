//! What the CRI reports of the runtime itself: Status (conditions, handlers, with `verbose` the
//! configuration) and Version.

use std::collections::BTreeMap;

use berth_api::runtime::v1 as cri;

use crate::state::Inner;

/// CRI API version this runtime speaks.
pub(crate) const RUNTIME_API_VERSION: &str = "v1";

/// Version's answer.
pub(crate) fn version() -> cri::VersionResponse {
    cri::VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "berth".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: RUNTIME_API_VERSION.into(),
    }
}

impl Inner {
    /// Status: the runtime is ready once serving; the network is ready when a CNI configuration
    /// loads. `verbose` adds the CRI configuration, as containerd's `config` entry.
    pub(crate) fn runtime_status(&self, verbose: bool) -> cri::StatusResponse {
        let network = self.cni.load();
        let (reason, message) = match &network {
            Ok(_) => (String::new(), String::new()),
            Err(e) => (
                "NetworkPluginNotReady".into(),
                format!("Network plugin returns error: cni config load failed: {e}"),
            ),
        };
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: network.is_ok(),
                reason,
                message,
            },
        ];
        let features = Some(cri::RuntimeHandlerFeatures {
            recursive_read_only_mounts: false,
            user_namespaces: false,
        });
        let runtime_handlers = self.cfg.runtimes.keys().map(|name| cri::RuntimeHandler {
            name: name.clone(),
            features,
        });
        let info = crate::verbose_info(verbose, "config", || {
            let c = &self.cfg;
            let runtimes = c
                .runtimes
                .iter()
                .map(|(k, v)| (k.clone(), v.runtime_type.clone()));
            serde_json::json!({
                "sandboxImage": c.sandbox_image,
                "snapshotter": c.snapshotter,
                "defaultRuntimeName": c.default_runtime_name,
                "runtimes": runtimes.collect::<BTreeMap<_, _>>(),
                "restrictOOMScoreAdj": c.restrict_oom_score_adj,
                "maxContainerLogLineSize": c.max_container_log_line_size,
                "cgroupParent": c.cgroup_parent,
            })
        });
        cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers: runtime_handlers.collect(),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
                user_namespaces_host_network: false,
                mount_options: false,
            }),
        }
    }
}
