//! Mount options as `mount(8)` reads them — the one parser for the runtime's spec mounts, the
//! shim's root file systems and the daemon's temporary mounts — and mounting what a snapshotter
//! returns (containerd's mount lists: `bind`, `overlay`, ...).
//!
//! An overlay of many layers can have options longer than the page `mount(2)` takes. As
//! containerd does, the lower directories are then named relative to the directory they share
//! (`<root>/snapshots`), and the mount is made by a child process working in that directory.

#![warn(missing_docs)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The most `mount(2)` reads of its data argument.
const PAGE: usize = 4096;

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The system call failed.
    #[error("mount {kind} {source_path} on {target}: {err}")]
    Mount {
        /// File-system type.
        kind: String,
        /// Source.
        source_path: String,
        /// Mount point.
        target: String,
        /// What the kernel said.
        err: io::Error,
    },
    /// The options do not fit a page even with relative lower directories.
    #[error("mount options for {0} are longer than a page, even with relative lower directories")]
    TooLong(String),
}

/// Mount flags, propagation and the rest as file-system data, from containerd's option
/// strings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// Propagation flags (applied by a second call).
    pub propagation: libc::c_ulong,
    /// Options for the file system itself.
    pub data: Vec<String>,
    /// `MOUNT_ATTR_*` set on the whole mounted tree by runc's recursive options (`rro`,
    /// `rnosuid`, ...), with [`set_recursive`] after the mount.
    pub recursive_set: u64,
    /// `MOUNT_ATTR_*` cleared on the whole tree (`rrw`, `rsuid`, ...; an atime option clears
    /// the other atime modes).
    pub recursive_clear: u64,
}

/// runc's recursive mount options: the attribute and whether the option clears it.
fn recursive_attr(o: &str) -> Option<(bool, u64)> {
    Some(match o {
        "rro" => (false, libc::MOUNT_ATTR_RDONLY),
        "rrw" => (true, libc::MOUNT_ATTR_RDONLY),
        "rnosuid" => (false, libc::MOUNT_ATTR_NOSUID),
        "rsuid" => (true, libc::MOUNT_ATTR_NOSUID),
        "rnodev" => (false, libc::MOUNT_ATTR_NODEV),
        "rdev" => (true, libc::MOUNT_ATTR_NODEV),
        "rnoexec" => (false, libc::MOUNT_ATTR_NOEXEC),
        "rexec" => (true, libc::MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (false, libc::MOUNT_ATTR_NODIRATIME),
        "rdiratime" => (true, libc::MOUNT_ATTR_NODIRATIME),
        "rrelatime" => (false, libc::MOUNT_ATTR_RELATIME),
        "rnorelatime" => (true, libc::MOUNT_ATTR_RELATIME),
        "rnoatime" => (false, libc::MOUNT_ATTR_NOATIME),
        "ratime" => (true, libc::MOUNT_ATTR_NOATIME),
        "rstrictatime" => (false, libc::MOUNT_ATTR_STRICTATIME),
        "rnostrictatime" => (true, libc::MOUNT_ATTR_STRICTATIME),
        "rnosymfollow" => (false, libc::MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => (true, libc::MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

/// Sets and clears mount attributes on the mount at `fd` and every mount below it
/// (`mount_setattr(2)` with `AT_RECURSIVE`), as runc applies its recursive options.
pub fn set_recursive(fd: std::os::fd::BorrowedFd<'_>, set: u64, clear: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (its size given) and the empty path; fd is borrowed
    // for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Splits containerd's option strings into flags and data, as `mount(8)` does.
pub fn parse_options(options: &[String]) -> Parsed {
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
            r if recursive_attr(r).is_some() => {
                let (clear, attr) = recursive_attr(r).unwrap_or_default();
                // The atime modes are one field: setting one clears the others.
                let atime = attr & libc::MOUNT_ATTR__ATIME == attr;
                if clear {
                    p.recursive_set &= !attr;
                    p.recursive_clear |= attr;
                } else if atime {
                    p.recursive_set = (p.recursive_set & !libc::MOUNT_ATTR__ATIME) | attr;
                    p.recursive_clear |= libc::MOUNT_ATTR__ATIME;
                } else {
                    p.recursive_set |= attr;
                    p.recursive_clear &= !attr;
                }
                continue;
            }
            // Options runc knows that need idmapped mounts: not flags, and never passed to the
            // file system as data.
            "idmap" | "ridmap" | "tmpcopyup" => continue,
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

/// Mounts one entry of a mount list (`kind` `bind` is a bind mount) on `target`.
pub fn mount(
    kind: &str,
    source: &str,
    options: &[String],
    target: &Path,
) -> Result<(), MountError> {
    let err = |err| MountError::Mount {
        kind: kind.to_string(),
        source_path: source.to_string(),
        target: target.display().to_string(),
        err,
    };
    let p = parse_options(options);
    let mut data = p.data.join(",");
    let mut workdir = None;
    if data.len() >= PAGE {
        let (dir, compact) = relative_lowerdirs(&p.data)
            .ok_or_else(|| MountError::TooLong(target.display().to_string()))?;
        data = compact.join(",");
        if data.len() >= PAGE {
            return Err(MountError::TooLong(target.display().to_string()));
        }
        workdir = Some(dir);
    }
    // A bind mount takes most flags only on a remount.
    let first = if p.flags & libc::MS_BIND != 0 {
        p.flags & (libc::MS_BIND | libc::MS_REC)
    } else {
        p.flags
    };
    let fstype = if kind == "bind" { "none" } else { kind };
    let call = Call::new(source, target, fstype, first, &data).map_err(err)?;
    match workdir {
        None => call.run(),
        Some(dir) => call.run_in(&dir),
    }
    .map_err(err)?;
    let extra = p.flags & !(libc::MS_BIND | libc::MS_REC);
    if p.flags & libc::MS_BIND != 0 && extra != 0 {
        Call::new("", target, "", libc::MS_REMOUNT | libc::MS_BIND | extra, "")
            .and_then(|c| c.run())
            .map_err(err)?;
    }
    if p.propagation != 0 {
        Call::new("", target, "", p.propagation, "")
            .and_then(|c| c.run())
            .map_err(err)?;
    }
    Ok(())
}

/// The overlay options with each `lowerdir` named relative to the deepest directory all of
/// them share (at least two layers, and not `/`): that directory and the new options.
fn relative_lowerdirs(data: &[String]) -> Option<(PathBuf, Vec<String>)> {
    let idx = data.iter().position(|o| o.starts_with("lowerdir="))?;
    let dirs: Vec<&Path> = data[idx]["lowerdir=".len()..]
        .split(':')
        .map(Path::new)
        .collect();
    if dirs.len() < 2 || dirs.iter().any(|d| !d.is_absolute()) {
        return None;
    }
    let mut common: Vec<Component> = dirs[0].components().collect();
    for d in &dirs[1..] {
        let n = common
            .iter()
            .zip(d.components())
            .take_while(|(a, b)| *a == b)
            .count();
        common.truncate(n);
    }
    let common: PathBuf = common.into_iter().collect();
    // Sharing only `/` is no help.
    common.parent()?;
    let mut rel = Vec::with_capacity(dirs.len());
    for d in dirs {
        let r = d.strip_prefix(&common).ok()?;
        if r.as_os_str().is_empty() {
            return None;
        }
        rel.push(r.to_str()?.to_string());
    }
    let mut out = data.to_vec();
    out[idx] = format!("lowerdir={}", rel.join(":"));
    Some((common, out))
}

/// One `mount(2)` call's arguments, ready before any fork.
struct Call {
    source: CString,
    target: CString,
    fstype: CString,
    flags: libc::c_ulong,
    data: Option<CString>,
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
}

impl Call {
    fn new(
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> io::Result<Call> {
        Ok(Call {
            source: cstring(source.as_bytes())?,
            target: cstring(target.as_os_str().as_bytes())?,
            fstype: cstring(fstype.as_bytes())?,
            flags,
            data: (!data.is_empty())
                .then(|| cstring(data.as_bytes()))
                .transpose()?,
        })
    }

    /// The system call; 0 or an errno. Only a system call: safe in a forked child.
    fn raw(&self) -> i32 {
        let data = self
            .data
            .as_ref()
            .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
        // SAFETY: every pointer is a NUL-terminated string (or null data) owned by `self`.
        let r = unsafe {
            libc::mount(
                self.source.as_ptr(),
                self.target.as_ptr(),
                self.fstype.as_ptr(),
                self.flags,
                data,
            )
        };
        if r == 0 {
            0
        } else {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        }
    }

    fn run(&self) -> io::Result<()> {
        match self.raw() {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Runs the call in a child process whose working directory is `dir` (relative paths in
    /// the data resolve there; this process's directory is untouched). The child's result
    /// comes back over a pipe, so a reaper of this process's children cannot take it.
    fn run_in(&self, dir: &Path) -> io::Result<()> {
        let dir = cstring(dir.as_os_str().as_bytes())?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let [rd, wr] = fds;
        // SAFETY: the child only makes system calls (chdir, mount, write, _exit) on memory
        // prepared before the fork, then exits without running any destructor.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                let e = if libc::chdir(dir.as_ptr()) != 0 {
                    *libc::__errno_location()
                } else {
                    self.raw()
                };
                libc::write(wr, (&e as *const i32).cast(), 4);
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(wr) };
        if pid < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: closing the read end we own.
            unsafe { libc::close(rd) };
            return Err(e);
        }
        let mut e = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            // SAFETY: reading into the rest of a live 4-byte buffer.
            let n = unsafe { libc::read(rd, e[got..].as_mut_ptr().cast(), 4 - got) };
            match n {
                n if n > 0 => got += n as usize,
                0 => break,
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        // SAFETY: closing the read end we own; reaping our child (unless a reaper did).
        unsafe {
            libc::close(rd);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        if got < 4 {
            return Err(io::Error::other("the mounting child died"));
        }
        match i32::from_ne_bytes(e) {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
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
    fn options_split_into_flags_propagation_and_data() {
        let p = parse_options(&opts(&["rbind", "ro", "rprivate", "index=off", "nosuid"]));
        assert_eq!(
            p.flags,
            libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY | libc::MS_NOSUID
        );
        assert_eq!(p.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(p.data, ["index=off"]);
        assert_eq!(parse_options(&opts(&["ro", "rw"])).flags, 0);
    }

    #[test]
    fn recursive_options_become_mount_attributes() {
        let p = parse_options(&opts(&[
            "rbind",
            "rro",
            "rnosuid",
            "rnoatime",
            "rstrictatime",
        ]));
        assert_eq!(p.flags, libc::MS_BIND | libc::MS_REC);
        assert!(p.data.is_empty());
        let set = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_STRICTATIME;
        assert_eq!(
            (p.recursive_set, p.recursive_clear),
            (set, libc::MOUNT_ATTR__ATIME)
        );
        let p = parse_options(&opts(&["rro", "rrw", "idmap"]));
        assert_eq!(
            (p.recursive_set, p.recursive_clear),
            (0, libc::MOUNT_ATTR_RDONLY)
        );
        assert!(p.data.is_empty());
    }

    #[test]
    fn lower_directories_become_relative_to_the_one_they_share() {
        let (dir, o) = relative_lowerdirs(&opts(&[
            "index=off",
            "workdir=/r/snapshots/9/work",
            "upperdir=/r/snapshots/9/fs",
            "lowerdir=/r/snapshots/8/fs:/r/snapshots/10/fs:/r/snapshots/1/fs",
        ]))
        .unwrap();
        assert_eq!(dir, Path::new("/r/snapshots"));
        assert_eq!(o[3], "lowerdir=8/fs:10/fs:1/fs");
        assert_eq!(
            o[..3],
            opts(&[
                "index=off",
                "workdir=/r/snapshots/9/work",
                "upperdir=/r/snapshots/9/fs"
            ])
        );
        // Nothing shared but the root, one layer, or a relative path: left alone.
        assert!(relative_lowerdirs(&opts(&["lowerdir=/a/fs:/b/fs"])).is_none());
        assert!(relative_lowerdirs(&opts(&["lowerdir=/r/s/1/fs"])).is_none());
        assert!(relative_lowerdirs(&opts(&["lowerdir=r/1:r/2"])).is_none());
        // One lower directory inside another.
        assert!(relative_lowerdirs(&opts(&["lowerdir=/r/s:/r/s/1"])).is_none());
    }
}
