//! OCI runtime specs for pod sandboxes and containers, as containerd's CRI builds them:
//! containerd's default spec, the image config, then the CRI config (namespaces shared with the
//! pod's pause process, mounts with propagation, security context, resources).

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_api::runtime::v1 as cri;
use cri::security_profile::ProfileType;
use serde_json::{Value, json};
use tonic::Status;

use crate::resources::{self, HostLimits};
use crate::user::User;

use berth_runtime::defaults;

mod mounts;
mod security;
use mounts::{bind, default_mounts, host_devices};
pub(crate) use mounts::{devices, user_mounts};
pub(crate) use security::{capabilities, seccomp};

use berth_runtime::defaults::strings;

/// Entrypoint/cmd merged with the CRI's command/args, as Kubernetes defines it.
pub(crate) fn process_args(image: &Value, command: &[String], args: &[String]) -> Vec<String> {
    let entry = strings(image.get("Entrypoint"));
    let cmd = strings(image.get("Cmd"));
    if !command.is_empty() {
        let mut a = command.to_vec();
        a.extend(args.iter().cloned());
        a
    } else if !args.is_empty() {
        let mut a = entry;
        a.extend(args.iter().cloned());
        a
    } else {
        let mut a = entry;
        a.extend(cmd);
        a
    }
}

/// The image's environment, then the CRI's (a later key replaces an earlier one).
pub(crate) fn env(image: &Value, envs: &[cri::KeyValue]) -> Vec<String> {
    defaults::env(
        strings(image.get("Env")).into_iter().chain(
            envs.iter()
                .map(|kv| format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value))),
        ),
    )
}

/// The pod's namespace modes.
pub(crate) struct NsModes {
    pub(crate) network: cri::NamespaceMode,
    pub(crate) pid: cri::NamespaceMode,
    pub(crate) ipc: cri::NamespaceMode,
    pub(crate) target: String,
}

pub(crate) fn ns_modes(o: Option<&cri::NamespaceOption>, field: &str) -> Result<NsModes, Status> {
    let mode = |v: i32, what: &str| {
        cri::NamespaceMode::try_from(v).map_err(|_| {
            Status::invalid_argument(format!("{field}.namespace_options.{what}: {v} is unknown"))
        })
    };
    let o = o.cloned().unwrap_or_default();
    Ok(NsModes {
        network: mode(o.network, "network")?,
        pid: mode(o.pid, "pid")?,
        ipc: mode(o.ipc, "ipc")?,
        target: o.target_id,
    })
}

/// What the pod's files and namespaces are, for a container's spec.
pub(crate) struct PodFiles<'a> {
    pub(crate) hostname: &'a Path,
    pub(crate) hosts: &'a Path,
    pub(crate) resolv: &'a Path,
    /// The pod's /dev/shm (`None`: the host's).
    pub(crate) shm: Option<&'a Path>,
}

/// Everything a container's spec is made from.
pub(crate) struct ContainerInput<'a> {
    pub(crate) id: &'a str,
    pub(crate) sandbox_id: &'a str,
    pub(crate) sandbox: &'a cri::PodSandboxConfig,
    pub(crate) config: &'a cri::ContainerConfig,
    pub(crate) image: &'a Value,
    pub(crate) image_name: &'a str,
    pub(crate) user: &'a User,
    pub(crate) files: PodFiles<'a>,
    pub(crate) sandbox_pid: u32,
    pub(crate) target_pid: Option<u32>,
    pub(crate) netns: &'a str,
    pub(crate) cgroup_parent: &'a str,
    pub(crate) oom_floor: Option<i64>,
    /// What the host can apply of the resources.
    pub(crate) host: HostLimits,
}

/// `v`, raised to `floor` when the daemon may not go lower.
pub(crate) fn clamp_oom(v: i64, floor: Option<i64>) -> i64 {
    match floor {
        Some(f) if v < f => f,
        _ => v,
    }
}

fn annotations(
    kind: &str,
    sandbox_id: &str,
    sb: &cri::PodSandboxConfig,
) -> serde_json::Map<String, Value> {
    let md = sb.metadata.clone().unwrap_or_default();
    let mut a = serde_json::Map::new();
    a.insert("io.kubernetes.cri.container-type".into(), json!(kind));
    a.insert("io.kubernetes.cri.sandbox-id".into(), json!(sandbox_id));
    a.insert("io.kubernetes.cri.sandbox-name".into(), json!(md.name));
    a.insert(
        "io.kubernetes.cri.sandbox-namespace".into(),
        json!(md.namespace),
    );
    a.insert("io.kubernetes.cri.sandbox-uid".into(), json!(md.uid));
    a
}

fn ns_path(kind: &str, pid: u32) -> Value {
    let f = match kind {
        "network" => "net",
        other => other,
    };
    json!({"type": kind, "path": format!("/proc/{pid}/ns/{f}")})
}

/// Sorts mounts so that a parent is mounted before what is under it (containerd's order:
/// by number of path components, stable).
fn order_mounts(mounts: &mut [Value]) {
    mounts.sort_by_key(|m| {
        m.get("destination")
            .and_then(Value::as_str)
            .map(|d| Path::new(d).components().count())
            .unwrap_or(0)
    });
}

/// A container's spec. (`seccomp_profile_path` is deprecated in CRI but still sent by the
/// kubelet and critest of Kubernetes 1.26.)
#[allow(deprecated)]
pub(crate) fn container_spec(c: &ContainerInput<'_>) -> Result<Value, Status> {
    let cfg = c.config;
    let linux = cfg.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let modes = ns_modes(
        sc.namespace_options.as_ref(),
        "config.linux.security_context",
    )?;
    let privileged = sc.privileged;
    if privileged
        && !c
            .sandbox
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged)
    {
        return Err(Status::invalid_argument(
            "linux.security_context.privileged: a privileged container needs a privileged pod",
        ));
    }
    let args = process_args(c.image, &cfg.command, &cfg.args);
    if args.is_empty() {
        return Err(Status::invalid_argument(
            "config.command: no command given and the image has none",
        ));
    }
    let cwd = if !cfg.working_dir.is_empty() {
        cfg.working_dir.clone()
    } else {
        c.image
            .get("WorkingDir")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("/")
            .to_string()
    };
    if !cwd.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "config.working_dir: {cwd:?} must be an absolute path"
        )));
    }
    let caps = capabilities(sc.capabilities.as_ref(), privileged)?;
    let seccomp = seccomp(
        sc.seccomp.as_ref(),
        &sc.seccomp_profile_path,
        &caps,
        privileged,
        "linux.security_context.seccomp",
    )?;

    // Mounts: the defaults, the pod's files, then the CRI's (which win at the same place).
    let (user, root_prop) = user_mounts(&cfg.mounts)?;
    let taken = |d: &str| {
        user.iter()
            .any(|m| m.get("destination").and_then(Value::as_str) == Some(d))
    };
    let mut mounts: Vec<Value> = default_mounts(privileged)
        .into_iter()
        .filter(|m| !taken(m["destination"].as_str().unwrap_or_default()))
        .collect();
    for (dest, src) in [
        ("/etc/hostname", c.files.hostname),
        ("/etc/hosts", c.files.hosts),
        ("/etc/resolv.conf", c.files.resolv),
    ] {
        if !taken(dest) && src.exists() {
            mounts.push(bind(dest, src, sc.readonly_rootfs));
        }
    }
    if !taken("/dev/shm") {
        match c.files.shm {
            Some(p) => mounts.push(bind("/dev/shm", p, false)),
            None => mounts.push(bind("/dev/shm", Path::new("/dev/shm"), false)),
        }
    }
    mounts.extend(user);
    order_mounts(&mut mounts);

    // Namespaces: joined from the pause process, or the host's.
    let mut namespaces = vec![json!({"type": "mount"})];
    match modes.pid {
        cri::NamespaceMode::Pod => namespaces.push(ns_path("pid", c.sandbox_pid)),
        cri::NamespaceMode::Container => namespaces.push(json!({"type": "pid"})),
        cri::NamespaceMode::Node => {}
        cri::NamespaceMode::Target => {
            let pid = c.target_pid.ok_or_else(|| {
                Status::not_found(format!(
                    "linux.security_context.namespace_options.target_id: container {:?} is not running",
                    modes.target
                ))
            })?;
            namespaces.push(ns_path("pid", pid));
        }
    }
    if modes.ipc != cri::NamespaceMode::Node {
        namespaces.push(ns_path("ipc", c.sandbox_pid));
    }
    if modes.network != cri::NamespaceMode::Node {
        namespaces.push(ns_path("uts", c.sandbox_pid));
        if c.netns.is_empty() {
            namespaces.push(ns_path("network", c.sandbox_pid));
        } else {
            namespaces.push(json!({"type": "network", "path": c.netns}));
        }
    }

    // Resources.
    let res = linux.resources.clone().unwrap_or_default();
    let mut resources = resources::to_spec(&res, &c.host, "linux.resources")?;
    let (devs, mut allow) = devices(&cfg.devices)?;
    let mut dev_rules = vec![json!({"allow": false, "access": "rwm"})];
    let spec_devices = if privileged {
        dev_rules = vec![json!({"allow": true, "access": "rwm"})];
        host_devices()
    } else {
        dev_rules.append(&mut allow);
        devs
    };
    resources["devices"] = json!(dev_rules);

    let masked: Vec<String> = if privileged {
        vec![]
    } else if sc.masked_paths.is_empty() {
        defaults::MASKED_PATHS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        sc.masked_paths.clone()
    };
    let readonly: Vec<String> = if privileged {
        vec![]
    } else if sc.readonly_paths.is_empty() {
        defaults::READONLY_PATHS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        sc.readonly_paths.clone()
    };

    let mut process = json!({
        "terminal": cfg.tty,
        "user": {"uid": c.user.uid, "gid": c.user.gid},
        "args": args,
        "env": env(c.image, &cfg.envs),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": sc.no_new_privs,
    });
    if !c.user.groups.is_empty() {
        process["user"]["additionalGids"] = json!(c.user.groups);
    }
    if res.oom_score_adj != 0 || c.oom_floor.is_some_and(|f| f > 0) {
        process["oomScoreAdj"] = json!(clamp_oom(res.oom_score_adj, c.oom_floor));
    }

    let mut ann = annotations("container", c.sandbox_id, c.sandbox);
    let md = cfg.metadata.clone().unwrap_or_default();
    ann.insert("io.kubernetes.cri.container-name".into(), json!(md.name));
    ann.insert("io.kubernetes.cri.image-name".into(), json!(c.image_name));
    for (k, v) in &cfg.annotations {
        ann.entry(k.clone()).or_insert(json!(v));
    }

    let mut linux_json = json!({
        "resources": resources,
        "cgroupsPath": format!("{}/{}", c.cgroup_parent.trim_end_matches('/'), c.id),
        "namespaces": namespaces,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
        "devices": spec_devices,
    });
    if let Some(s) = seccomp {
        linux_json["seccomp"] = s;
    }
    if let Some(p) = root_prop {
        linux_json["rootfsPropagation"] = json!(p);
    }
    Ok(json!({
        "ociVersion": "1.1.0",
        "process": process,
        "root": {"path": "rootfs", "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": ann,
        "linux": linux_json,
    }))
}

/// Everything the pause container's spec is made from.
pub(crate) struct SandboxInput<'a> {
    pub(crate) id: &'a str,
    pub(crate) config: &'a cri::PodSandboxConfig,
    pub(crate) image: &'a Value,
    pub(crate) user: &'a User,
    pub(crate) resolv: &'a Path,
    pub(crate) shm: Option<&'a Path>,
    pub(crate) netns: &'a str,
    pub(crate) cgroup_parent: &'a str,
    pub(crate) oom_floor: Option<i64>,
    /// What the host can apply of the pod's resources.
    pub(crate) host: HostLimits,
}

/// containerd's OOM score for pause processes.
const SANDBOX_OOM_ADJ: i64 = -998;

/// The pause container's spec.
#[allow(deprecated)]
pub(crate) fn sandbox_spec(s: &SandboxInput<'_>) -> Result<Value, Status> {
    let linux = s.config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let modes = ns_modes(
        sc.namespace_options.as_ref(),
        "config.linux.security_context",
    )?;
    if modes.pid == cri::NamespaceMode::Target {
        return Err(Status::invalid_argument(
            "config.linux.security_context.namespace_options.pid: TARGET is for containers, not pods",
        ));
    }
    let args = process_args(s.image, &[], &[]);
    if args.is_empty() {
        return Err(Status::failed_precondition(
            "the sandbox image has no entrypoint",
        ));
    }
    let caps = capabilities(None, sc.privileged)?;
    let seccomp = seccomp(
        sc.seccomp.as_ref(),
        &sc.seccomp_profile_path,
        &caps,
        sc.privileged,
        "config.linux.security_context.seccomp",
    )?;
    let mut mounts = default_mounts(sc.privileged);
    mounts.push(bind(
        "/dev/shm",
        s.shm.unwrap_or(Path::new("/dev/shm")),
        false,
    ));
    if s.resolv.exists() {
        mounts.push(bind("/etc/resolv.conf", s.resolv, true));
    }
    let mut namespaces = vec![json!({"type": "mount"})];
    if modes.pid != cri::NamespaceMode::Node {
        namespaces.push(json!({"type": "pid"}));
    }
    if modes.ipc != cri::NamespaceMode::Node {
        namespaces.push(json!({"type": "ipc"}));
    }
    let host_net = modes.network == cri::NamespaceMode::Node;
    if !host_net {
        namespaces.push(json!({"type": "uts"}));
        namespaces.push(json!({"type": "network", "path": s.netns}));
    }
    let mut sysctl = serde_json::Map::new();
    for (k, v) in &linux.sysctls {
        if host_net && k.starts_with("net.") {
            return Err(Status::invalid_argument(format!(
                "config.linux.sysctls: {k} cannot be set for a pod on the host's network"
            )));
        }
        sysctl.insert(k.clone(), json!(v));
    }
    let uid = sc
        .run_as_user
        .as_ref()
        .map(|v| v.value as u32)
        .unwrap_or(s.user.uid);
    let gid = sc
        .run_as_group
        .as_ref()
        .map(|v| v.value as u32)
        .unwrap_or(s.user.gid);
    let mut process = json!({
        "terminal": false,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": env(s.image, &[]),
        "cwd": "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": true,
        "oomScoreAdj": clamp_oom(SANDBOX_OOM_ADJ, s.oom_floor),
    });
    let groups: Vec<u32> = sc
        .supplemental_groups
        .iter()
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    if !groups.is_empty() {
        process["user"]["additionalGids"] = json!(groups);
    }
    let mut resources =
        json!({"devices": [{"allow": false, "access": "rwm"}], "cpu": {"shares": 2}});
    if let Some(r) = &linux.resources {
        let extra = resources::to_spec(r, &s.host, "linux.resources")?;
        if let Some(o) = extra.as_object() {
            for (k, v) in o {
                resources[k] = v.clone();
            }
        }
    }
    let mut ann = annotations("sandbox", s.id, s.config);
    ann.insert(
        "io.kubernetes.cri.sandbox-log-directory".into(),
        json!(s.config.log_directory),
    );
    for (k, v) in &s.config.annotations {
        ann.entry(k.clone()).or_insert(json!(v));
    }
    let mut linux_json = json!({
        "resources": resources,
        "cgroupsPath": format!("{}/{}", s.cgroup_parent.trim_end_matches('/'), s.id),
        "namespaces": namespaces,
        "sysctl": sysctl,
        "maskedPaths": if sc.privileged { vec![] } else { defaults::MASKED_PATHS.to_vec() },
        "readonlyPaths": if sc.privileged { vec![] } else { defaults::READONLY_PATHS.to_vec() },
    });
    if let Some(sc) = seccomp {
        linux_json["seccomp"] = sc;
    }
    let mut spec = json!({
        "ociVersion": "1.1.0",
        "process": process,
        "root": {"path": "rootfs", "readonly": true},
        "mounts": mounts,
        "annotations": ann,
        "linux": linux_json,
    });
    if !host_net && !s.config.hostname.is_empty() {
        spec["hostname"] = json!(s.config.hostname);
    }
    Ok(spec)
}

/// `/etc/resolv.conf` from the pod's DNS config (`None`: the host's file is copied).
pub(crate) fn resolv_conf(dns: Option<&cri::DnsConfig>) -> Option<String> {
    let d = dns?;
    if d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty() {
        return None;
    }
    let mut s = String::new();
    if !d.searches.is_empty() {
        s.push_str(&format!("search {}\n", d.searches.join(" ")));
    }
    for n in &d.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !d.options.is_empty() {
        s.push_str(&format!("options {}\n", d.options.join(" ")));
    }
    Some(s)
}

/// The default `/etc/hosts` of a pod with its own network.
pub(crate) const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

/// Labels of the containerd record: the CRI's labels and the kind.
pub(crate) fn record_labels(
    labels: &HashMap<String, String>,
    kind: &str,
) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = labels
        .iter()
        .filter(|(k, v)| k.len() + v.len() <= 4096 && !k.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.insert(crate::meta::LABEL_KIND.into(), kind.into());
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_follow_kubernetes_rules() {
        let img = json!({"Entrypoint": ["/e"], "Cmd": ["c1"]});
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(process_args(&img, &[], &[]), s(&["/e", "c1"]));
        assert_eq!(process_args(&img, &[], &s(&["a"])), s(&["/e", "a"]));
        assert_eq!(process_args(&img, &s(&["/x"]), &[]), s(&["/x"]));
        assert_eq!(process_args(&img, &s(&["/x"]), &s(&["a"])), s(&["/x", "a"]));
    }

    #[test]
    fn env_later_keys_replace_earlier() {
        let img = json!({"Env": ["PATH=/bin", "A=1"]});
        let e = env(
            &img,
            &[cri::KeyValue {
                key: "A".into(),
                value: b"2".to_vec(),
            }],
        );
        assert_eq!(e, vec!["PATH=/bin".to_string(), "A=2".to_string()]);
    }

    #[test]
    fn capabilities_add_drop_all() {
        let c = |add: &[&str], drop: &[&str]| {
            capabilities(
                Some(&cri::Capability {
                    add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                    drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                    add_ambient_capabilities: vec![],
                }),
                false,
            )
        };
        let v = c(&["SYS_ADMIN"], &["CHOWN"]).unwrap();
        assert!(v.contains(&"CAP_SYS_ADMIN".to_string()) && !v.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(c(&[], &["ALL"]).unwrap(), Vec::<String>::new());
        assert_eq!(
            c(&["NET_ADMIN"], &["ALL"]).unwrap(),
            vec!["CAP_NET_ADMIN".to_string()]
        );
        assert!(c(&["ALL"], &["KILL"]).unwrap().len() > 20);
        assert_eq!(
            c(&["BOGUS"], &[]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn oom_is_raised_to_the_floor() {
        assert_eq!(clamp_oom(-998, Some(0)), 0);
        assert_eq!(clamp_oom(-998, Some(-1000)), -998);
        assert_eq!(clamp_oom(500, Some(0)), 500);
        assert_eq!(clamp_oom(-5, None), -5);
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = cri::DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["svc.local".into(), "local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d)).unwrap(),
            "search svc.local local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
        assert!(resolv_conf(None).is_none());
    }
}
