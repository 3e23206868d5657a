//! Mounting the rootfs containerd passes in `CreateTaskRequest.rootfs` (bind or overlay mounts from
//! the snapshotter) onto `<bundle>/rootfs`, and taking it down again.

use std::path::Path;

use berth_api::containerd::types::Mount;

use crate::sys;

pub(crate) use berth_mount::MountError;

/// Mounts `mounts`, in order, on `target`. On failure, what was mounted is taken down again.
pub(crate) fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), MountError> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = berth_mount::mount(&m.r#type, &m.source, &m.options, target) {
            for _ in 0..i {
                unmount_all(target);
            }
            return Err(e);
        }
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
