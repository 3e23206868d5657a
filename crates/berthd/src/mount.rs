//! Mounting containerd-style mount lists (`bind`, `overlay`, ...) on a temporary directory, for
//! work the daemon does on a snapshot's contents (applying layers).

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

/// Splits options into mount flags and the file system's data string.
fn flags_and_data(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
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
            let (flags, data) = flags_and_data(&mount.options);
            let dest = if mount.target.is_empty() {
                m.target.clone()
            } else {
                m.target.join(mount.target.trim_start_matches('/'))
            };
            let src = cstr(mount.source.as_bytes())?;
            let dst = cstr(dest.as_os_str().as_bytes())?;
            let fstype = cstr(if mount.r#type == "bind" {
                b"none"
            } else {
                mount.r#type.as_bytes()
            })?;
            let data = cstr(data.as_bytes())?;
            let bind_ro = flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0;
            // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
            let r = unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    fstype.as_ptr(),
                    flags,
                    data.as_ptr().cast(),
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            m.layers += 1;
            if bind_ro {
                // A bind mount ignores MS_RDONLY until remounted.
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                // SAFETY: as above; a remount of the mount just made.
                unsafe {
                    libc::mount(
                        std::ptr::null(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        flags,
                        std::ptr::null(),
                    )
                };
            }
        }
        Ok(m)
    }

    /// The mount point.
    pub(crate) fn path(&self) -> &Path {
        &self.target
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
