//! A container's mounts and devices: the defaults, the CRI's mounts with their propagation
//! (checked against the host mount), and devices (a privileged container gets the host's).

use super::*;

/// `MountPropagation` → the mount option, with what the host mount must be.
fn propagation(p: i32) -> Result<&'static str, Status> {
    match cri::MountPropagation::try_from(p) {
        Ok(cri::MountPropagation::PropagationPrivate) => Ok("rprivate"),
        Ok(cri::MountPropagation::PropagationHostToContainer) => Ok("rslave"),
        Ok(cri::MountPropagation::PropagationBidirectional) => Ok("rshared"),
        Err(_) => Err(Status::invalid_argument(format!(
            "mounts.propagation: {p} is not a known propagation"
        ))),
    }
}

/// The optional fields of the mount (from /proc/self/mountinfo) that holds `path`.
fn mount_propagation_of(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 7 {
            continue;
        }
        let mp = f[4].replace("\\040", " ");
        if path.starts_with(&mp) && best.as_ref().is_none_or(|(l, _)| mp.len() >= *l) {
            let sep = f.iter().position(|x| *x == "-").unwrap_or(f.len());
            best = Some((mp.len(), f[6..sep].join(" ")));
        }
    }
    best.map(|(_, o)| o)
}

/// The CRI's mounts as OCI mounts, and the rootfs propagation they need.
pub(crate) fn user_mounts(
    mounts: &[cri::Mount],
) -> Result<(Vec<Value>, Option<&'static str>), Status> {
    let mut out = Vec::new();
    let mut root_prop: Option<&'static str> = None;
    for (i, m) in mounts.iter().enumerate() {
        if m.container_path.is_empty() || !m.container_path.starts_with('/') {
            return Err(Status::invalid_argument(format!(
                "mounts[{i}].container_path: {:?} must be an absolute path",
                m.container_path
            )));
        }
        if m.host_path.is_empty() {
            return Err(Status::invalid_argument(format!(
                "mounts[{i}].host_path: must be set"
            )));
        }
        let host = Path::new(&m.host_path);
        if !host.exists() {
            // As containerd: a missing host path becomes a directory.
            std::fs::create_dir_all(host).map_err(|e| {
                Status::internal(format!(
                    "mounts[{i}].host_path: creating {}: {e}",
                    m.host_path
                ))
            })?;
        }
        let src = std::fs::canonicalize(host).map_err(|e| {
            Status::invalid_argument(format!("mounts[{i}].host_path: {}: {e}", m.host_path))
        })?;
        let prop = propagation(m.propagation)?;
        let opts = mount_propagation_of(&src).unwrap_or_default();
        match prop {
            "rshared" => {
                if !opts.contains("shared:") {
                    return Err(Status::failed_precondition(format!(
                        "mounts[{i}]: path {} is not on a shared mount",
                        src.display()
                    )));
                }
                root_prop = Some("rshared");
            }
            "rslave" => {
                if !opts.contains("shared:") && !opts.contains("master:") {
                    return Err(Status::failed_precondition(format!(
                        "mounts[{i}]: path {} is not on a shared or slave mount",
                        src.display()
                    )));
                }
                if root_prop != Some("rshared") {
                    root_prop = Some("rslave");
                }
            }
            _ => {}
        }
        let mut options = vec!["rbind", prop];
        options.push(if m.readonly { "ro" } else { "rw" });
        out.push(json!({
            "destination": m.container_path,
            "type": "bind",
            "source": src,
            "options": options,
        }));
    }
    Ok((out, root_prop))
}

/// Host devices for the spec and the cgroup allow-list.
pub(crate) fn devices(list: &[cri::Device]) -> Result<(Vec<Value>, Vec<Value>), Status> {
    let mut devs = Vec::new();
    let mut allow = Vec::new();
    for (i, d) in list.iter().enumerate() {
        let perms = if d.permissions.is_empty() {
            "rwm"
        } else {
            &d.permissions
        };
        if perms.chars().any(|c| !"rwm".contains(c)) {
            return Err(Status::invalid_argument(format!(
                "devices[{i}].permissions: {perms:?} (want letters of \"rwm\")"
            )));
        }
        let meta = std::fs::metadata(&d.host_path).map_err(|e| {
            Status::invalid_argument(format!("devices[{i}].host_path: {}: {e}", d.host_path))
        })?;
        let mut add = |path: &str, meta: &std::fs::Metadata| {
            let ft = meta.file_type();
            let ty = if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else {
                return;
            };
            let rdev = meta.rdev();
            let (major, minor) = (libc::major(rdev), libc::minor(rdev));
            devs.push(
                json!({"path": path, "type": ty, "major": major, "minor": minor,
                "fileMode": meta.mode() & 0o777, "uid": meta.uid(), "gid": meta.gid()}),
            );
            allow.push(
                json!({"allow": true, "type": ty, "major": major, "minor": minor, "access": perms}),
            );
        };
        if meta.is_dir() {
            // A directory of devices: each one, under container_path.
            let rd = std::fs::read_dir(&d.host_path).map_err(|e| {
                Status::invalid_argument(format!("devices[{i}].host_path: {}: {e}", d.host_path))
            })?;
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    let p = format!(
                        "{}/{}",
                        d.container_path.trim_end_matches('/'),
                        e.file_name().to_string_lossy()
                    );
                    add(&p, &m);
                }
            }
        } else {
            let path = if d.container_path.is_empty() {
                &d.host_path
            } else {
                &d.container_path
            };
            add(path, &meta);
            if devs.len() == i {
                return Err(Status::invalid_argument(format!(
                    "devices[{i}].host_path: {} is not a device",
                    d.host_path
                )));
            }
        }
    }
    Ok((devs, allow))
}

/// Every device of the host's /dev, for privileged containers.
pub(super) fn host_devices() -> Vec<Value> {
    let mut out = Vec::new();
    let mut walk = vec![std::path::PathBuf::from("/dev")];
    while let Some(dir) = walk.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = m.file_type();
            if ft.is_dir() {
                let n = e.file_name();
                if !matches!(
                    n.to_str(),
                    Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts")
                ) {
                    walk.push(p);
                }
                continue;
            }
            let ty = if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else {
                continue;
            };
            if p == Path::new("/dev/console") {
                continue;
            }
            let rdev = m.rdev();
            out.push(json!({"path": p, "type": ty, "major": libc::major(rdev), "minor": libc::minor(rdev),
                "fileMode": m.mode() & 0o777, "uid": m.uid(), "gid": m.gid()}));
        }
    }
    out
}

/// containerd's default mounts, without `/run` (as the CRI) and with `/dev/shm` left to the
/// caller.
pub(super) fn default_mounts(privileged: bool) -> Vec<Value> {
    let cg_opts: Vec<&str> = if privileged {
        vec!["nosuid", "noexec", "nodev", "relatime"]
    } else {
        vec!["nosuid", "noexec", "nodev", "relatime", "ro"]
    };
    let mut m = berth_runtime::defaults::mounts(privileged);
    m.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": cg_opts}));
    m
}

pub(super) fn bind(dest: &str, src: &Path, ro: bool) -> Value {
    json!({"destination": dest, "type": "bind", "source": src,
        "options": ["rbind", "rprivate", if ro { "ro" } else { "rw" }]})
}
