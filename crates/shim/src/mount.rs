//! Mounting the rootfs containerd passes in `CreateTaskRequest.rootfs` (bind or overlay mounts from
//! the snapshotter) onto `<bundle>/rootfs`, and taking it down again.

use std::path::Path;

use berth_api::containerd::types::Mount;

use crate::sys;

/// A rootfs mount that failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MountError {
    #[error("mount {kind} {source_path} on {target}: {err}")]
    Mount {
        kind: String,
        source_path: String,
        target: String,
        err: std::io::Error,
    },
    #[error("mount options of {0} are longer than a page; not supported")]
    TooLong(String),
}

/// Mount flags and the rest as filesystem data, from containerd's option strings.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) flags: libc::c_ulong,
    pub(crate) propagation: libc::c_ulong,
    pub(crate) data: Vec<String>,
}

pub(crate) fn parse_options(options: &[String]) -> Parsed {
    let mut p = Parsed::default();
    for o in options {
        let (clear, flag): (bool, libc::c_ulong) = match o.as_str() {
            "async" => (true, libc::MS_SYNCHRONOUS),
            "atime" => (true, libc::MS_NOATIME),
            "bind" => (false, libc::MS_BIND),
            "defaults" => (false, 0),
            "dev" => (true, libc::MS_NODEV),
            "diratime" => (true, libc::MS_NODIRATIME),
            "dirsync" => (false, libc::MS_DIRSYNC),
            "exec" => (true, libc::MS_NOEXEC),
            "mand" => (false, libc::MS_MANDLOCK),
            "noatime" => (false, libc::MS_NOATIME),
            "nodev" => (false, libc::MS_NODEV),
            "nodiratime" => (false, libc::MS_NODIRATIME),
            "noexec" => (false, libc::MS_NOEXEC),
            "nomand" => (true, libc::MS_MANDLOCK),
            "norelatime" => (true, libc::MS_RELATIME),
            "nostrictatime" => (true, libc::MS_STRICTATIME),
            "nosuid" => (false, libc::MS_NOSUID),
            "rbind" => (false, libc::MS_BIND | libc::MS_REC),
            "relatime" => (false, libc::MS_RELATIME),
            "remount" => (false, libc::MS_REMOUNT),
            "ro" => (false, libc::MS_RDONLY),
            "rw" => (true, libc::MS_RDONLY),
            "strictatime" => (false, libc::MS_STRICTATIME),
            "suid" => (true, libc::MS_NOSUID),
            "sync" => (false, libc::MS_SYNCHRONOUS),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let (base, rec) = match o.strip_prefix('r') {
                    Some(rest) => (rest, libc::MS_REC),
                    _ => (o.as_str(), 0),
                };
                p.propagation |= rec
                    | match base {
                        "private" => libc::MS_PRIVATE,
                        "shared" => libc::MS_SHARED,
                        "slave" => libc::MS_SLAVE,
                        _ => libc::MS_UNBINDABLE,
                    };
                continue;
            }
            _ => {
                p.data.push(o.clone());
                continue;
            }
        };
        if clear {
            p.flags &= !flag;
        } else {
            p.flags |= flag;
        }
    }
    p
}

/// Mounts `mounts`, in order, on `target`. On failure, what was mounted is taken down again.
pub(crate) fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), MountError> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                unmount_all(target);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<(), MountError> {
    let p = parse_options(&m.options);
    let data = p.data.join(",");
    if data.len() >= 4096 {
        return Err(MountError::TooLong(target.display().to_string()));
    }
    let err = |err| MountError::Mount {
        kind: m.r#type.clone(),
        source_path: m.source.clone(),
        target: target.display().to_string(),
        err,
    };
    // A bind mount takes most flags only on a remount.
    let first = if p.flags & libc::MS_BIND != 0 {
        p.flags & (libc::MS_BIND | libc::MS_REC)
    } else {
        p.flags
    };
    let kind = if m.r#type == "bind" {
        "none"
    } else {
        m.r#type.as_str()
    };
    sys::mount(
        &m.source,
        target,
        kind,
        first,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(err)?;
    let extra = p.flags & !(libc::MS_BIND | libc::MS_REC);
    if p.flags & libc::MS_BIND != 0 && extra != 0 {
        sys::mount(
            "",
            target,
            "",
            libc::MS_REMOUNT | libc::MS_BIND | extra,
            None,
        )
        .map_err(err)?;
    }
    if p.propagation != 0 {
        sys::mount("", target, "", p.propagation, None).map_err(err)?;
    }
    Ok(())
}

/// Unmounts everything mounted on `target` (stacked mounts included).
pub(crate) fn unmount_all(target: &Path) {
    for _ in 0..64 {
        if !sys::is_mountpoint(target) {
            return;
        }
        match sys::umount(target, 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if let Err(e) = sys::umount(target, libc::MNT_DETACH) {
                    tracing::warn!(target = %target.display(), error = %e, "lazy unmount");
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "unmount");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn snapshotter_options() {
        let p = parse_options(&opts(&["rw", "rbind"]));
        assert_eq!(p.flags, libc::MS_BIND | libc::MS_REC);
        assert!(p.data.is_empty());
        let p = parse_options(&opts(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/a:/b",
        ]));
        assert_eq!(p.flags, 0);
        assert_eq!(
            p.data,
            opts(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"])
        );
        let p = parse_options(&opts(&["ro", "nosuid", "rprivate", "shared"]));
        assert_eq!(p.flags, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(
            p.propagation,
            libc::MS_PRIVATE | libc::MS_REC | libc::MS_SHARED
        );
        let p = parse_options(&opts(&["ro", "rw"]));
        assert_eq!(p.flags, 0);
    }
}
