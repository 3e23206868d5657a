//! A container's privileges: capabilities (added, dropped, ALL) and its seccomp profile
//! (RuntimeDefault, Localhost, Unconfined).

use super::*;

/// Every capability by number (`include/uapi/linux/capability.h`).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities this kernel has.
fn all_caps() -> Vec<String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(40);
    ALL_CAPS
        .iter()
        .take(last + 1)
        .map(|s| s.to_string())
        .collect()
}

fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The capability set from containerd's defaults and the CRI's add/drop lists ("ALL" first,
/// then the named ones, as containerd).
pub(crate) fn capabilities(
    c: Option<&cri::Capability>,
    privileged: bool,
) -> Result<Vec<String>, Status> {
    if privileged {
        return Ok(all_caps());
    }
    let mut caps: Vec<String> = defaults::CAPABILITIES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let Some(c) = c else { return Ok(caps) };
    let is_all = |s: &String| s.eq_ignore_ascii_case("ALL");
    if c.add_capabilities.iter().any(is_all) {
        caps = all_caps();
    }
    if c.drop_capabilities.iter().any(is_all) {
        caps.clear();
    }
    let known = |n: &str| ALL_CAPS.contains(&n);
    for a in c.add_capabilities.iter().filter(|s| !is_all(s)) {
        let n = cap_name(a);
        if !known(&n) {
            return Err(Status::invalid_argument(format!(
                "linux.security_context.capabilities.add_capabilities: unknown capability {a:?}"
            )));
        }
        if !caps.contains(&n) {
            caps.push(n);
        }
    }
    for d in c.drop_capabilities.iter().filter(|s| !is_all(s)) {
        let n = cap_name(d);
        if !known(&n) {
            return Err(Status::invalid_argument(format!(
                "linux.security_context.capabilities.drop_capabilities: unknown capability {d:?}"
            )));
        }
        caps.retain(|x| x != &n);
    }
    Ok(caps)
}

/// The seccomp section for a profile (`None`: unconfined).
pub(crate) fn seccomp(
    profile: Option<&cri::SecurityProfile>,
    deprecated_path: &str,
    caps: &[String],
    privileged: bool,
    field: &str,
) -> Result<Option<Value>, Status> {
    if privileged {
        return Ok(None);
    }
    let (kind, local) = match profile {
        Some(p) => (
            ProfileType::try_from(p.profile_type).map_err(|_| {
                Status::invalid_argument(format!(
                    "{field}.profile_type: {} is unknown",
                    p.profile_type
                ))
            })?,
            p.localhost_ref.clone(),
        ),
        None => match deprecated_path {
            "" | "unconfined" => return Ok(None),
            "runtime/default" | "docker/default" => (ProfileType::RuntimeDefault, String::new()),
            p => match p.strip_prefix("localhost/") {
                Some(path) => (ProfileType::Localhost, path.to_string()),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "{field}: unknown seccomp profile {p:?}"
                    )));
                }
            },
        },
    };
    match kind {
        ProfileType::Unconfined => Ok(None),
        ProfileType::RuntimeDefault => Ok(Some(crate::seccomp_default::default_profile(caps))),
        ProfileType::Localhost => {
            if !local.starts_with('/') {
                return Err(Status::invalid_argument(format!(
                    "{field}.localhost_ref: {local:?} is not an absolute path"
                )));
            }
            let text = std::fs::read(&local).map_err(|e| {
                Status::invalid_argument(format!("{field}.localhost_ref: reading {local}: {e}"))
            })?;
            let v: Value = serde_json::from_slice(&text).map_err(|e| {
                Status::invalid_argument(format!("{field}.localhost_ref: {local}: {e}"))
            })?;
            Ok(Some(localhost_profile(v)))
        }
    }
}

/// A Docker-format seccomp profile (what Kubernetes' localhost profiles are) as the OCI
/// spec's: the same fields but for `archMap`, which becomes `architectures`.
fn localhost_profile(mut v: Value) -> Value {
    if let Some(map) = v.get("archMap").and_then(Value::as_array).cloned() {
        let host = match std::env::consts::ARCH {
            "x86_64" => "SCMP_ARCH_X86_64",
            "aarch64" => "SCMP_ARCH_AARCH64",
            other => other,
        };
        let mut arches = Vec::new();
        for m in map {
            if m.get("architecture").and_then(Value::as_str) == Some(host) {
                arches.push(json!(host));
                if let Some(subs) = m.get("subArchitectures").and_then(Value::as_array) {
                    arches.extend(subs.iter().cloned());
                }
            }
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("archMap");
            o.insert("architectures".into(), json!(arches));
        }
    }
    if let Some(o) = v.as_object_mut()
        && let Some(calls) = o.get_mut("syscalls").and_then(Value::as_array_mut)
    {
        {
            for c in calls {
                if let Some(c) = c.as_object_mut() {
                    if let Some(name) = c.remove("name") {
                        c.insert("names".into(), json!([name]));
                    }
                    for k in ["includes", "excludes", "comment"] {
                        c.remove(k);
                    }
                }
            }
        }
    }
    v
}
