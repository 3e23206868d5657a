//! Mounts inside the new mount namespace: propagation, the spec's mounts, /dev, masked and
//! read-only paths, pivot_root. Every target is resolved with `openat2(RESOLVE_IN_ROOT)` against
//! the rootfs, so a symlink in the image cannot send a mount outside it; the mount is then made
//! on the `/proc/self/fd/N` magic link of what was opened.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{Mount, Spec};

use crate::cgroups::CgroupPaths;
use crate::error::{Result, RuntimeError, SysContext};
use crate::sys::{RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, fd_path, openat2};

/// Parsed mount options.
#[derive(Debug, PartialEq)]
pub(crate) struct MountOpts {
    pub(crate) flags: MsFlags,
    pub(crate) propagation: MsFlags,
    pub(crate) data: Vec<String>,
    pub(crate) bind: bool,
    /// Recursive attributes (`MOUNT_ATTR_*`) set and cleared on the whole mounted tree.
    pub(crate) recursive: (u64, u64),
}

/// The spec's option strings, read by the one parser (`berth_mount`).
pub(crate) fn parse_options(options: &[String]) -> MountOpts {
    let p = berth_mount::parse_options(options);
    let flags = MsFlags::from_bits_truncate(p.flags);
    MountOpts {
        flags,
        propagation: MsFlags::from_bits_truncate(p.propagation),
        data: p.data,
        bind: flags.contains(MsFlags::MS_BIND),
        recursive: (p.recursive_set, p.recursive_clear),
    }
}

/// `rootfsPropagation` → flags (default rslave, as runc).
pub(crate) fn root_propagation(s: Option<&str>) -> Result<MsFlags> {
    Ok(match s.unwrap_or("") {
        "" | "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => {
            return Err(RuntimeError::Spec(format!(
                "unknown rootfsPropagation {other:?}"
            )));
        }
    })
}

/// Lexically cleans a destination inside the root: makes it relative, drops `.` and resolves
/// `..` without ever going above the root.
pub(crate) fn clean_rel(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// What to create when a mount target is missing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Dir,
    File,
}

/// Opens (O_PATH) `rel` inside `root`, creating missing directories and, if `last` is `File`,
/// an empty file at the end. Symlinks are resolved as if `root` were `/`.
pub(crate) fn open_in_root(root: &OwnedFd, rel: &Path, last: Kind) -> Result<OwnedFd> {
    let rel = clean_rel(rel);
    let resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    let o_path = libc::O_PATH;
    let comps: Vec<&OsStr> = rel.iter().collect();
    if comps.is_empty() {
        return openat2(root.as_raw_fd(), Path::new("."), o_path, resolve)
            .map_err(|e| RuntimeError::path("open", "/", e));
    }
    let mut cur = PathBuf::new();
    let mut fd = None;
    for (i, c) in comps.iter().enumerate() {
        let parent = cur.clone();
        cur.push(c);
        match openat2(root.as_raw_fd(), &cur, o_path, resolve) {
            Ok(f) => fd = Some(f),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let dir = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent
                };
                let pfd = openat2(root.as_raw_fd(), &dir, o_path | libc::O_DIRECTORY, resolve)
                    .map_err(|e| RuntimeError::path("open", Path::new("/").join(&dir), e))?;
                let name = crate::sys::cstr(Path::new(c))
                    .map_err(|e| RuntimeError::path("create", &cur, e))?;
                let is_last = i + 1 == comps.len();
                // SAFETY: name is a valid C string and pfd a live directory fd.
                let rc = unsafe {
                    if is_last && last == Kind::File {
                        let f = libc::openat(
                            pfd.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                            0o644,
                        );
                        if f >= 0 {
                            libc::close(f);
                        }
                        f
                    } else {
                        libc::mkdirat(pfd.as_raw_fd(), name.as_ptr(), 0o755)
                    }
                };
                if rc < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(RuntimeError::path("create", Path::new("/").join(&cur), e));
                    }
                }
                fd = Some(
                    openat2(root.as_raw_fd(), &cur, o_path, resolve)
                        .map_err(|e| RuntimeError::path("open", Path::new("/").join(&cur), e))?,
                );
            }
            Err(e) => return Err(RuntimeError::path("open", Path::new("/").join(&cur), e)),
        }
    }
    fd.ok_or_else(|| RuntimeError::Spec("empty mount destination".into()))
}

/// procfs and sysfs go only on a real directory (or where none is yet): a symlink there could
/// send them, and the paths masked under them, anywhere (runc refuses it with these words).
fn ordinary_dir(root: &OwnedFd, dest: &Path, typ: &str) -> Result<()> {
    let rel = clean_rel(dest);
    let flags = libc::O_PATH | libc::O_NOFOLLOW;
    let fd = match openat2(
        root.as_raw_fd(),
        &rel,
        flags,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(RuntimeError::path("open", dest, e)),
    };
    let st = nix::sys::stat::fstat(&fd).sys(format!("stat {}", dest.display()))?;
    if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) != SFlag::S_IFDIR {
        let why = format!("filesystem {typ:?} must be mounted on ordinary directory");
        let at = dest.display().to_string();
        let context = format!("error mounting {typ:?} to rootfs at {at:?}");
        return Err(RuntimeError::sys(context, io::Error::other(why)));
    }
    Ok(())
}

pub(crate) fn do_mount(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &Path,
) -> Result<()> {
    mount(src, target, fstype, flags, data)
        .map_err(|e| RuntimeError::sys(format!("mount {}", what.display()), e))
}

/// Binds `src` (with what is mounted below it) onto `target`; `what` names it in an error.
pub(crate) fn rbind(src: &str, target: &str, what: &Path) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    do_mount(Some(src), target, None, flags, None, what)
}

/// Remounts a bind mount read-only, keeping the flags the kernel locks (nosuid, nodev, noexec...).
fn remount_ro(fd: &OwnedFd, what: &Path) -> Result<()> {
    let st = nix::sys::statvfs::fstatvfs(fd).sys(format!("statvfs {}", what.display()))?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    flags |= locked_flags(st.flags());
    do_mount(None, &fd_path(fd), None, flags, None, what)
}

fn locked_flags(f: nix::sys::statvfs::FsFlags) -> MsFlags {
    use nix::sys::statvfs::FsFlags as F;
    let mut m = MsFlags::empty();
    for (a, b) in [
        (F::ST_NOSUID, MsFlags::MS_NOSUID),
        (F::ST_NODEV, MsFlags::MS_NODEV),
        (F::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (F::ST_NOATIME, MsFlags::MS_NOATIME),
        (F::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (F::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(a) {
            m |= b;
        }
    }
    m
}

/// Everything the rootfs setup needs.
#[derive(Debug)]
pub(crate) struct RootfsSetup<'a> {
    pub(crate) spec: &'a Spec,
    pub(crate) rootfs: &'a Path,
    pub(crate) bundle: &'a Path,
    pub(crate) cgroup: Option<&'a CgroupPaths>,
    pub(crate) userns: bool,
    pub(crate) cgroupns: bool,
}

impl RootfsSetup<'_> {
    /// Propagation, the rootfs bind, the spec's mounts and /dev. Runs before pivot_root.
    pub(crate) fn mount_all(&self) -> Result<OwnedFd> {
        let linux = self.spec.linux().as_ref();
        let prop = root_propagation(linux.and_then(|l| l.rootfs_propagation().as_deref()))?;
        do_mount(None, "/", None, prop, None, Path::new("/"))?;
        let rootfs = self
            .rootfs
            .to_str()
            .ok_or_else(|| RuntimeError::Spec("rootfs path is not UTF-8".into()))?;
        // pivot_root refuses a new root whose mount is shared: with a shared root propagation
        // the mount holding the rootfs is made private first (its bind is private then), as runc.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| RuntimeError::path("read", "/proc/self/mountinfo", e))?;
        if let Some(parent) = shared_parent_mount(&mountinfo, self.rootfs) {
            do_mount(
                None,
                &parent,
                None,
                MsFlags::MS_PRIVATE,
                None,
                Path::new(&parent),
            )?;
        }
        rbind(rootfs, rootfs, self.rootfs)?;
        let root = openat2(
            libc::AT_FDCWD,
            self.rootfs,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| RuntimeError::path("open rootfs", self.rootfs, e))?;
        let mut dev_is_tmpfs = false;
        for m in self.spec.mounts().iter().flatten() {
            let dest = clean_rel(m.destination());
            if dest == Path::new("dev") {
                dev_is_tmpfs = !is_bind(m);
            }
            self.mount_one(&root, m)?;
        }
        if dev_is_tmpfs {
            super::dev::setup_dev(self, &root)?;
        }
        // runc creates the cwd if it is missing.
        if let Some(p) = self.spec.process() {
            open_in_root(&root, p.cwd(), Kind::Dir)?;
        }
        Ok(root)
    }

    fn mount_one(&self, root: &OwnedFd, m: &Mount) -> Result<()> {
        let dest = m.destination();
        if !dest.is_absolute() {
            return Err(RuntimeError::Spec(format!(
                "mount destination {} is not absolute",
                dest.display()
            )));
        }
        let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
        let typ = m
            .typ()
            .as_deref()
            .unwrap_or(if opts.bind { "bind" } else { "none" });
        if typ == "cgroup" || typ == "cgroup2" {
            return self.mount_cgroup(root, m, &opts);
        }
        let bind = opts.bind || typ == "bind";
        let source = m.source().as_deref();
        if bind {
            let src = source.ok_or_else(|| {
                RuntimeError::Spec(format!("bind mount {} has no source", dest.display()))
            })?;
            let src = if src.is_absolute() {
                src.to_path_buf()
            } else {
                self.bundle.join(src)
            };
            let meta = std::fs::metadata(&src).map_err(|e| RuntimeError::path("stat", &src, e))?;
            let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
            let target = open_in_root(root, dest, kind)?;
            let src_s = src.to_string_lossy();
            let mut flags = MsFlags::MS_BIND;
            if opts.flags.contains(MsFlags::MS_REC) {
                flags |= MsFlags::MS_REC;
            }
            do_mount(Some(&src_s), &fd_path(&target), None, flags, None, dest)?;
            let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            if !extra.is_empty() {
                let target = open_in_root(root, dest, kind)?;
                let st = nix::sys::statvfs::fstatvfs(&target)
                    .sys(format!("statvfs {}", dest.display()))?;
                let flags =
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | extra | locked_flags(st.flags());
                do_mount(None, &fd_path(&target), None, flags, None, dest)?;
            }
        } else {
            if typ == "proc" || typ == "sysfs" {
                ordinary_dir(root, dest, typ)?;
            }
            let target = open_in_root(root, dest, Kind::Dir)?;
            let data = opts.data.join(",");
            let src = source.map(|s| s.to_string_lossy().into_owned());
            let r = mount(
                Some(src.as_deref().unwrap_or(typ)),
                fd_path(&target).as_str(),
                Some(typ),
                opts.flags,
                (!data.is_empty()).then_some(data.as_str()),
            );
            match r {
                Ok(()) => {}
                // Without its own network (or ipc) namespace, a user namespace may not mount
                // sysfs (or mqueue): bind the host's read-only instead, as runc does.
                Err(nix::errno::Errno::EPERM)
                    if self.userns && (typ == "sysfs" || typ == "mqueue") =>
                {
                    let host = if typ == "sysfs" {
                        "/sys"
                    } else {
                        "/dev/mqueue"
                    };
                    rbind(host, &fd_path(&target), dest)?;
                    let target = open_in_root(root, dest, Kind::Dir)?;
                    remount_ro(&target, dest)?;
                }
                Err(e) => {
                    return Err(RuntimeError::sys(
                        format!("mount {typ} on {}", dest.display()),
                        e,
                    ));
                }
            }
        }
        if !opts.propagation.is_empty() {
            let target = open_in_root(root, dest, Kind::Dir)?;
            do_mount(None, &fd_path(&target), None, opts.propagation, None, dest)?;
        }
        if opts.recursive != (0, 0) {
            // runc's recursive options (rro, rnosuid, ...) on the mount and all below it.
            let target = open_in_root(root, dest, Kind::Dir)?;
            let (set, clear) = opts.recursive;
            berth_mount::set_recursive(target.as_fd(), set, clear)
                .map_err(|e| RuntimeError::sys(format!("mount_setattr {}", dest.display()), e))?;
        }
        Ok(())
    }

    /// A `cgroup` mount: with a cgroup namespace, the real filesystems; without one, a tmpfs
    /// holding binds of the container's own cgroup directories (runc's v1 layout).
    fn mount_cgroup(&self, root: &OwnedFd, m: &Mount, opts: &MountOpts) -> Result<()> {
        let dest = m.destination();
        let ro = opts.flags.contains(MsFlags::MS_RDONLY);
        let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        match self.cgroup {
            Some(CgroupPaths::V2 { path }) => {
                let target = open_in_root(root, dest, Kind::Dir)?;
                if self.cgroupns {
                    let flags = base
                        | if ro {
                            MsFlags::MS_RDONLY
                        } else {
                            MsFlags::empty()
                        };
                    do_mount(
                        Some("cgroup2"),
                        &fd_path(&target),
                        Some("cgroup2"),
                        flags,
                        None,
                        dest,
                    )?;
                } else {
                    rbind(&path.to_string_lossy(), &fd_path(&target), dest)?;
                    if ro {
                        remount_ro(&open_in_root(root, dest, Kind::Dir)?, dest)?;
                    }
                }
            }
            Some(CgroupPaths::V1 { paths }) => {
                let target = open_in_root(root, dest, Kind::Dir)?;
                do_mount(
                    Some("tmpfs"),
                    &fd_path(&target),
                    Some("tmpfs"),
                    base,
                    Some("mode=755"),
                    dest,
                )?;
                for (ctrl, dir) in paths {
                    if ctrl.is_empty() {
                        continue;
                    }
                    let name = ctrl.strip_prefix("name=").unwrap_or(ctrl);
                    let sub = dest.join(name);
                    let t = open_in_root(root, &sub, Kind::Dir)?;
                    if self.cgroupns {
                        let data = ctrl.clone();
                        do_mount(
                            Some("cgroup"),
                            &fd_path(&t),
                            Some("cgroup"),
                            base,
                            Some(&data),
                            &sub,
                        )?;
                    } else {
                        rbind(&dir.to_string_lossy(), &fd_path(&t), &sub)?;
                    }
                    if ro {
                        remount_ro(&open_in_root(root, &sub, Kind::Dir)?, &sub)?;
                    }
                }
                if ro {
                    let t = open_in_root(root, dest, Kind::Dir)?;
                    do_mount(
                        None,
                        &fd_path(&t),
                        None,
                        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base,
                        Some("mode=755"),
                        dest,
                    )?;
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Masked paths (a tmpfs or /dev/null over them) and read-only paths, before pivot_root.
    pub(crate) fn mask_and_protect(&self, root: &OwnedFd) -> Result<()> {
        let Some(linux) = self.spec.linux().as_ref() else {
            return Ok(());
        };
        let resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
        for p in linux.readonly_paths().iter().flatten() {
            let rel = clean_rel(Path::new(p));
            let fd = match openat2(root.as_raw_fd(), &rel, libc::O_PATH, resolve) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(RuntimeError::path("open read-only path", p, e)),
            };
            let fp = fd_path(&fd);
            rbind(&fp, &fp, Path::new(p))?;
            let fd = openat2(root.as_raw_fd(), &rel, libc::O_PATH, resolve)
                .map_err(|e| RuntimeError::path("open read-only path", p, e))?;
            remount_ro(&fd, Path::new(p))?;
        }
        for p in linux.masked_paths().iter().flatten() {
            let rel = clean_rel(Path::new(p));
            let fd = match openat2(root.as_raw_fd(), &rel, libc::O_PATH, resolve) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(RuntimeError::path("open masked path", p, e)),
            };
            let st = nix::sys::stat::fstat(&fd).sys(format!("stat {p}"))?;
            let fp = fd_path(&fd);
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
                do_mount(
                    Some("tmpfs"),
                    &fp,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                    Path::new(p),
                )?;
            } else {
                do_mount(
                    Some("/dev/null"),
                    &fp,
                    None,
                    MsFlags::MS_BIND,
                    None,
                    Path::new(p),
                )?;
            }
        }
        Ok(())
    }
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Enters `rootfs` as `jail` says: pivot_root leaving the old root detached, MS_MOVE + chroot,
/// or chroot alone.
pub(crate) fn enter_root(rootfs: &Path, jail: super::Jail) -> Result<()> {
    nix::unistd::chdir(rootfs).sys(format!("chdir {}", rootfs.display()))?;
    if jail == super::Jail::Chroot {
        nix::unistd::chroot(".").sys("chroot")?;
    } else if jail == super::Jail::Move {
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .sys("move rootfs to /")?;
        nix::unistd::chroot(".").sys("chroot")?;
    } else {
        let old = nix::fcntl::open(
            "/",
            nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .sys("open /")?;
        nix::unistd::pivot_root(".", ".").sys("pivot_root")?;
        nix::unistd::fchdir(&old).sys("fchdir old root")?;
        mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .sys("make old root rslave")?;
        umount2(".", MntFlags::MNT_DETACH).sys("detach old root")?;
    }
    nix::unistd::chdir("/").sys("chdir /")?;
    Ok(())
}

/// The `readonly` root: a read-only remount of `/` after pivot_root.
pub(crate) fn remount_root_ro() -> Result<()> {
    let fd = openat2(
        libc::AT_FDCWD,
        Path::new("/"),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| RuntimeError::path("open", "/", e))?;
    remount_ro(&fd, Path::new("/"))
}

/// Bind-mounts the pty slave at /dev/console (after pivot_root).
pub(crate) fn mount_console(slave_path: &Path) -> Result<()> {
    let root = openat2(
        libc::AT_FDCWD,
        Path::new("/"),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| RuntimeError::path("open", "/", e))?;
    let target = open_in_root(&root, Path::new("dev/console"), Kind::File)?;
    do_mount(
        Some(&slave_path.to_string_lossy()),
        &fd_path(&target),
        None,
        MsFlags::MS_BIND,
        None,
        Path::new("/dev/console"),
    )
}

/// The mount point holding `path` (the longest one that is a prefix of it) when that mount is
/// shared (its optional fields have `shared:N`); None when it is not shared.
fn shared_parent_mount(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(PathBuf, bool)> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 5 || sep < 6 {
            continue;
        }
        let mp = PathBuf::from(unescape_mountinfo(f[4]));
        if !path.starts_with(&mp) {
            continue;
        }
        let shared = f[6..sep].iter().any(|o| o.starts_with("shared:"));
        // Later lines are mounted on top of earlier ones at the same point.
        if best
            .as_ref()
            .is_none_or(|(b, _)| mp.as_os_str().len() >= b.as_os_str().len())
        {
            best = Some((mp, shared));
        }
    }
    best.filter(|(_, shared)| *shared)
        .and_then(|(mp, _)| mp.to_str().map(str::to_string))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes the spec's sysctls through the new root's /proc/sys (in the new namespaces), before
/// the read-only and masked paths cover /proc/sys, as runc orders them.
pub(crate) fn write_sysctls(spec: &Spec, root: &OwnedFd) -> Result<()> {
    for (k, v) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        let rel = PathBuf::from("proc/sys").join(k.replace('.', "/"));
        let fd = openat2(
            root.as_raw_fd(),
            &rel,
            libc::O_WRONLY,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|e| RuntimeError::path("open sysctl", Path::new("/").join(&rel), e))?;
        nix::unistd::write(&fd, v.as_bytes()).sys(format!("sysctl {k}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_mount_holding_the_rootfs() {
        let mi = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /run rw shared:5 - tmpfs tmpfs rw
31 30 0:41 / /run/k8s\\040x/rootfs rw - overlay overlay rw
32 22 0:42 / /var/lib rw master:3 - tmpfs tmpfs rw
";
        // The rootfs itself is a (private) mount point: nothing to change.
        assert_eq!(
            shared_parent_mount(mi, Path::new("/run/k8s x/rootfs")),
            None
        );
        // A plain directory on a shared mount: that mount.
        assert_eq!(
            shared_parent_mount(mi, Path::new("/run/other/rootfs")).as_deref(),
            Some("/run")
        );
        assert_eq!(
            shared_parent_mount(mi, Path::new("/srv/rootfs")).as_deref(),
            Some("/")
        );
        // A slave (not shared) mount: left alone; bad lines are skipped.
        assert_eq!(
            shared_parent_mount(&format!("garbage\n{mi}"), Path::new("/var/lib/x")),
            None
        );
        assert_eq!(unescape_mountinfo("a\\134b\\011"), "a\\b\t");
    }

    #[test]
    fn options() {
        let o = parse_options(&[
            "rbind".into(),
            "ro".into(),
            "rprivate".into(),
            "mode=755".into(),
        ]);
        assert!(o.bind);
        assert!(
            o.flags
                .contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY)
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755"]);
        let o = parse_options(&["ro".into(), "rw".into()]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn clean() {
        assert_eq!(clean_rel(Path::new("/a/../../b/./c")), PathBuf::from("b/c"));
        assert_eq!(clean_rel(Path::new("/")), PathBuf::new());
    }

    #[test]
    fn open_in_root_stays_inside() {
        let t = tempfile::tempdir().unwrap();
        let root_dir = t.path().join("root");
        std::fs::create_dir_all(root_dir.join("etc")).unwrap();
        // Absolute and relative symlinks pointing out of the root.
        std::os::unix::fs::symlink("/", root_dir.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../..", root_dir.join("etc/up")).unwrap();
        let root = openat2(
            libc::AT_FDCWD,
            &root_dir,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        open_in_root(&root, Path::new("/escape/newdir"), Kind::Dir).unwrap();
        open_in_root(&root, Path::new("/etc/up/x/file"), Kind::File).unwrap();
        assert!(root_dir.join("newdir").is_dir(), "created inside the root");
        assert!(root_dir.join("x/file").is_file());
        assert!(!Path::new("/newdir").exists());
        assert!(!Path::new("/x/file").exists());
    }
}
