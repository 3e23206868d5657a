//! What Berth is made of, described as containerd plugins for `Introspection.Plugins`.

use std::collections::HashMap;

use berth_api::containerd::services::introspection::v1::Plugin;

use crate::config::Config;

/// The plugin type of the metadata store.
pub(crate) const METADATA: &str = "io.containerd.metadata.v1";
/// The plugin type of the blob store.
pub(crate) const CONTENT: &str = "io.containerd.content.v1";
/// The plugin type of differs.
pub(crate) const DIFF: &str = "io.containerd.differ.v1";
/// The plugin type of snapshotters.
pub(crate) const SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";
/// The plugin type of the events exchange.
pub(crate) const EVENT: &str = "io.containerd.event.v1";
/// The plugin type of the garbage collector.
pub(crate) const GC: &str = "io.containerd.gc.v1";
/// The plugin type of ttrpc services.
pub(crate) const TTRPC: &str = "io.containerd.ttrpc.v1";
/// The plugin type of gRPC services.
pub(crate) const GRPC: &str = "io.containerd.grpc.v1";
/// Runtime plugins (the shim v2 task manager).
pub(crate) const RUNTIME: &str = "io.containerd.runtime.v2";
/// Transfer plugins.
pub(crate) const TRANSFER: &str = "io.containerd.transfer.v1";

fn plugin(ty: &str, id: &str, requires: &[&str], exports: &[(&str, String)]) -> Plugin {
    Plugin {
        r#type: ty.to_string(),
        id: id.to_string(),
        requires: requires.iter().map(|s| s.to_string()).collect(),
        platforms: Vec::new(),
        exports: exports
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<HashMap<_, _>>(),
        capabilities: Vec::new(),
        init_err: None,
    }
}

/// Every plugin this daemon runs, in initialisation order.
pub(crate) fn registry(cfg: &Config, store: &berth_store::Store) -> Vec<Plugin> {
    let mut out = vec![
        plugin(
            METADATA,
            "sled",
            &[],
            &[("path", cfg.db_path().display().to_string())],
        ),
        plugin(
            CONTENT,
            "content",
            &[],
            &[("root", cfg.root.join("content").display().to_string())],
        ),
        plugin(EVENT, "exchange", &[], &[]),
        plugin(GC, "scheduler", &[METADATA], &[]),
        plugin(GRPC, "version", &[], &[]),
        plugin(GRPC, "content", &[METADATA, CONTENT], &[]),
        plugin(GRPC, "images", &[METADATA, GC], &[]),
        plugin(GRPC, "leases", &[METADATA, GC], &[]),
        plugin(GRPC, "snapshots", &[METADATA, SNAPSHOTTER], &[]),
        plugin(DIFF, "walking", &[METADATA], &[]),
        plugin(GRPC, "diff", &[DIFF], &[]),
        plugin(GRPC, "events", &[EVENT], &[]),
        plugin(
            TTRPC,
            "events",
            &[EVENT],
            &[("address", cfg.ttrpc_address().display().to_string())],
        ),
        plugin(GRPC, "containers", &[METADATA, GC], &[]),
        plugin(
            RUNTIME,
            "task",
            &[EVENT, METADATA],
            &[
                (
                    "root",
                    cfg.state
                        .join("io.containerd.runtime.v2.task")
                        .display()
                        .to_string(),
                ),
                (
                    "shims",
                    "containerd-shim-<name>-<version> in PATH".to_string(),
                ),
            ],
        ),
        plugin(GRPC, "tasks", &[RUNTIME, METADATA], &[]),
        plugin(
            TRANSFER,
            "local",
            &[CONTENT, METADATA, SNAPSHOTTER, DIFF],
            &[],
        ),
        plugin(GRPC, "transfer", &[TRANSFER], &[]),
        plugin(GRPC, "streaming", &[], &[]),
        plugin(GRPC, "namespaces", &[METADATA], &[]),
        plugin(GRPC, "introspection", &[], &[]),
        plugin(GRPC, "healthcheck", &[], &[]),
    ];
    for sn in store.snapshotters() {
        let mut p = plugin(
            SNAPSHOTTER,
            sn.name(),
            &[],
            &[("root", sn.root().display().to_string())],
        );
        p.capabilities = sn.capabilities();
        p.platforms = vec![berth_api::containerd::types::Platform {
            os: "linux".into(),
            architecture: host_arch().into(),
            ..Default::default()
        }];
        out.insert(1, p);
    }
    out
}

/// The host's architecture in OCI terms.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
