//! What a container gets when its spec says nothing else, as containerd's
//! `oci.populateDefaultUnixSpec` gives it: the one copy for berthctl's specs and the CRI's.

/// The capabilities a container keeps (bounding, effective and permitted sets).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The search path a process gets unless its image or caller sets one.
pub const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A process's environment: [`PATH`], then `vars` in order, a later `KEY=` replacing an
/// earlier one (the image's variables, then the caller's).
pub fn env(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = vec![PATH.to_string()];
    for kv in vars {
        let key = kv.split('=').next().unwrap_or_default().to_string();
        out.retain(|x| x.split('=').next() != Some(key.as_str()));
        out.push(kv);
    }
    out
}

/// A list of strings in an image config (`Entrypoint`, `Cmd`, `Env`); none if it is absent or
/// not an array, its non-strings left out.
pub fn strings(v: Option<&serde_json::Value>) -> Vec<String> {
    let items = v.and_then(serde_json::Value::as_array);
    let texts = items
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str);
    texts.map(str::to_string).collect()
}

/// Paths hidden from an unprivileged container.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// Paths an unprivileged container sees read-only.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The file systems every container has, as OCI `mounts` entries: `/proc`, `/dev`,
/// `/dev/pts`, `/dev/mqueue` and `/sys` (read-only unless `privileged`). Callers add `/dev/shm`,
/// `/run` or `/sys/fs/cgroup` as their defaults differ.
pub fn mounts(privileged: bool) -> Vec<serde_json::Value> {
    let sys: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let m = |dest: &str, kind: &str, source: &str, options: &[&str]| serde_json::json!({"destination": dest, "type": kind, "source": source, "options": options});
    vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        m("/sys", "sysfs", "sysfs", sys),
    ]
}
