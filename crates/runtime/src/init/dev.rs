//! /dev on a tmpfs: the default devices (or binds of the host's in a user namespace), the
//! spec's devices, and the standard symlinks.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::LinuxDeviceType;

use super::mounts::{Kind, RootfsSetup, clean_rel, do_mount, open_in_root};
use crate::error::{Result, RuntimeError, SysContext};
use crate::sys::fd_path;

/// Default devices, the spec's devices and the /dev symlinks, on a /dev tmpfs.
pub(crate) fn setup_dev(setup: &RootfsSetup<'_>, root: &OwnedFd) -> Result<()> {
    let mut devs: Vec<(PathBuf, SFlag, u64, u64, u32, u32, u32)> = Vec::new();
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        devs.push((
            PathBuf::from("/dev").join(name),
            SFlag::S_IFCHR,
            major,
            minor,
            0o666,
            0,
            0,
        ));
    }
    for d in setup
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(RuntimeError::Spec(format!(
                    "device {} has type a",
                    d.path().display()
                )));
            }
        };
        if !clean_rel(d.path()).starts_with("dev") || d.major() < 0 || d.minor() < 0 {
            return Err(RuntimeError::Spec(format!(
                "invalid device {}",
                d.path().display()
            )));
        }
        devs.retain(|x| x.0 != *d.path());
        devs.push((
            d.path().clone(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666) & 0o7777,
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        ));
    }
    for (path, kind, major, minor, mode, uid, gid) in devs {
        let rel = clean_rel(&path);
        if setup.userns {
            // mknod is not allowed in a user namespace: bind the host's node instead.
            let target = open_in_root(root, &rel, Kind::File)?;
            let host = Path::new("/").join(&rel);
            do_mount(
                Some(&host.to_string_lossy()),
                &fd_path(&target),
                None,
                MsFlags::MS_BIND,
                None,
                &path,
            )?;
            continue;
        }
        let parent = open_in_root(root, rel.parent().unwrap_or(Path::new("")), Kind::Dir)?;
        let name = rel.file_name().unwrap_or(OsStr::new(""));
        let _ = nix::unistd::unlinkat(&parent, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        let dev = nix::sys::stat::makedev(major, minor);
        nix::sys::stat::mknodat(&parent, name, kind, Mode::from_bits_truncate(mode), dev)
            .sys(format!("mknod {}", path.display()))?;
        nix::unistd::fchownat(
            &parent,
            name,
            Some(uid.into()),
            Some(gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .sys(format!("chown {}", path.display()))?;
        // mknod honours the umask; set the mode exactly.
        nix::sys::stat::fchmodat(
            &parent,
            name,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .or_else(|e| {
            if e == nix::errno::Errno::EOPNOTSUPP {
                Ok(())
            } else {
                Err(e)
            }
        })
        .sys(format!("chmod {}", path.display()))?;
    }
    let dev = open_in_root(root, Path::new("dev"), Kind::Dir)?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let _ = nix::unistd::unlinkat(&dev, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        nix::unistd::symlinkat(target, &dev, name).sys(format!("symlink /dev/{name}"))?;
    }
    Ok(())
}
