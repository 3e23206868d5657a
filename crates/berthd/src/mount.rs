//! Mounting containerd-style mount lists (`bind`, `overlay`, ...) on a temporary directory, for
//! work the daemon does on a snapshot's contents (applying layers, computing diffs).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_api::containerd::types::Mount;

fn cstr(s: &[u8]) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "NUL byte in a mount argument",
        )
    })
}

/// A mounted directory, unmounted (and removed) on drop.
#[derive(Debug)]
pub(crate) struct Mounted {
    target: PathBuf,
    layers: usize,
}

impl Mounted {
    /// Mounts `mounts` in order on a fresh directory under `parent`.
    pub(crate) fn new(parent: &Path, mounts: &[Mount]) -> std::io::Result<Mounted> {
        std::fs::create_dir_all(parent)?;
        let target = tempdir_in(parent)?;
        let mut m = Mounted { target, layers: 0 };
        for mount in mounts {
            let dest = if mount.target.is_empty() {
                m.target.clone()
            } else {
                m.target.join(mount.target.trim_start_matches('/'))
            };
            berth_mount::mount(&mount.r#type, &mount.source, &mount.options, &dest).map_err(
                |e| match e {
                    // The kernel's answer as it is: callers tell bad arguments by errno.
                    berth_mount::MountError::Mount { err, .. } => err,
                    e => std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
                },
            )?;
            m.layers += 1;
        }
        Ok(m)
    }

    /// The mount point.
    pub(crate) fn path(&self) -> &Path {
        &self.target
    }
}

fn option<'a>(m: &'a Mount, key: &str) -> Option<&'a str> {
    m.options.iter().find_map(|o| o.strip_prefix(key))
}

/// `mounts` made read-only, as containerd's `WithReadonlyTempMount` does: `ro` added, and an
/// overlay's upper directory turned into its top lower layer (a read-only overlay needs no
/// work directory, and the upper directory may be in use by a writable mount elsewhere).
pub(crate) fn read_only(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m.r#type == "overlay"
                && let Some(upper) = option(&m, "upperdir=").map(str::to_string)
            {
                m.options.retain(|o| {
                    !o.starts_with("upperdir=") && !o.starts_with("workdir=") && o != "rw"
                });
                for o in &mut m.options {
                    if let Some(lower) = o.strip_prefix("lowerdir=") {
                        *o = format!("lowerdir={upper}:{lower}");
                    }
                }
                if option(&m, "lowerdir=").is_none() {
                    m.options.push(format!("lowerdir={upper}"));
                }
            }
            m.options.retain(|o| o != "rw");
            m.options.push("ro".into());
            m
        })
        .collect()
}

/// The layers (top first) a single mount shows, if it is a bind mount or an overlay.
fn layers(m: &Mount) -> Option<Vec<&str>> {
    match m.r#type.as_str() {
        "bind" => Some(vec![m.source.as_str()]),
        "overlay" => {
            let mut out: Vec<&str> = option(m, "upperdir=").into_iter().collect();
            out.extend(option(m, "lowerdir=")?.split(':').filter(|s| !s.is_empty()));
            Some(out)
        }
        _ => None,
    }
}

/// If `right` is one overlay mount with an upper directory whose lower layers are exactly what
/// `left` shows (the usual diff of an active snapshot against its parent), that upper
/// directory: the changes are all in it, and only it needs walking.
pub(crate) fn overlay_upper(left: &[Mount], right: &[Mount]) -> Option<PathBuf> {
    let ([l], [r]) = (left, right) else {
        return None;
    };
    if r.r#type != "overlay" || !r.target.is_empty() || !l.target.is_empty() {
        return None;
    }
    let upper = option(r, "upperdir=")?;
    let lowers: Vec<&str> = option(r, "lowerdir=")?
        .split(':')
        .filter(|s| !s.is_empty())
        .collect();
    (layers(l)? == lowers).then(|| PathBuf::from(upper))
}

/// Start-up: the temporary mount points a killed daemon left in `dir` (`m-*`: diffs and
/// unpacks it was applying) are unmounted, every layer stacked on them, and removed. Called
/// while holding the root's lock, before anything serves, so none of them is in use.
pub(crate) fn sweep_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with("m-") {
            continue;
        }
        let p = e.path();
        if let Ok(c) = cstr(p.as_os_str().as_bytes()) {
            // Until it is no mount point (EINVAL); a bound number of layers.
            for _ in 0..64 {
                // SAFETY: valid path; MNT_DETACH never blocks on users.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                    break;
                }
            }
        }
        match std::fs::remove_dir(&p) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "removing a stale mount point")
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed the temporary mounts of an earlier run");
    }
}

fn tempdir_in(parent: &Path) -> std::io::Result<PathBuf> {
    for i in 0..1000u32 {
        let p = parent.join(format!(
            "m-{}-{}-{i}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free mount point name"))
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Ok(c) = cstr(self.target.as_os_str().as_bytes()) {
            for _ in 0..self.layers {
                // SAFETY: valid path; unmounting our own mount point.
                if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                    // Busy: detach so nothing is left mounted.
                    // SAFETY: as above.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        let _ = std::fs::remove_dir(&self.target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ty: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            r#type: ty.into(),
            source: source.into(),
            target: String::new(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn read_only_turns_the_upper_dir_into_a_lower_layer() {
        let ro = read_only(&[m(
            "overlay",
            "overlay",
            &["workdir=/w", "upperdir=/u", "lowerdir=/a:/b", "index=off"],
        )]);
        assert_eq!(ro[0].options, ["lowerdir=/u:/a:/b", "index=off", "ro"]);
        let ro = read_only(&[m("bind", "/s", &["rbind", "rw"])]);
        assert_eq!(ro[0].options, ["rbind", "ro"]);
    }

    #[test]
    fn the_fast_path_needs_left_to_be_right_s_lower_layers() {
        let right = [m(
            "overlay",
            "overlay",
            &["workdir=/w", "upperdir=/u", "lowerdir=/a:/b"],
        )];
        let left = [m("overlay", "overlay", &["lowerdir=/a:/b"])];
        assert_eq!(overlay_upper(&left, &right), Some(PathBuf::from("/u")));
        let one = [m(
            "overlay",
            "overlay",
            &["workdir=/w", "upperdir=/u", "lowerdir=/a"],
        )];
        let bind = [m("bind", "/a", &["ro", "rbind"])];
        assert_eq!(overlay_upper(&bind, &one), Some(PathBuf::from("/u")));
        // Not the same lower layers, not an overlay, or no upper directory: no fast path.
        assert_eq!(overlay_upper(&bind, &right), None);
        assert_eq!(overlay_upper(&left, &bind), None);
        assert_eq!(overlay_upper(&left, &left), None);
        assert_eq!(overlay_upper(&[], &right), None);
    }
}
