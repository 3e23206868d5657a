//! Which namespaces to create with clone, which to join, and who joins them.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::error::{Result, RuntimeError, SysContext};

/// The plan for one new process.
#[derive(Debug)]
pub(crate) struct NsPlan {
    /// Flags for clone (new namespaces the kernel makes with the process).
    pub(crate) clone: CloneFlags,
    /// Joined by the parent before clone (the child inherits them).
    pub(crate) parent_join: Vec<(CloneFlags, OwnedFd)>,
    /// Joined by the child (user first, then mount).
    pub(crate) child_join: Vec<(CloneFlags, OwnedFd)>,
    /// Unshared by the child after joining.
    pub(crate) unshare: CloneFlags,
    pub(crate) new_userns: bool,
    pub(crate) cgroupns: bool,
    pub(crate) has_uts: bool,
    pub(crate) new_timens: bool,
    /// The child forks once more after unsharing (a new pid ns in a joined user ns).
    pub(crate) double_fork: bool,
    /// Unshared by the grandchild once it is in its cgroup.
    pub(crate) unshare_late: CloneFlags,
    /// The container has a mount namespace (new or joined); without one it shares the
    /// caller's, and its init only chroots into the rootfs, as runc does.
    pub(crate) mountns: bool,
}

impl Default for NsPlan {
    fn default() -> Self {
        NsPlan {
            clone: CloneFlags::empty(),
            parent_join: Vec::new(),
            child_join: Vec::new(),
            unshare: CloneFlags::empty(),
            new_userns: false,
            cgroupns: false,
            has_uts: false,
            new_timens: false,
            double_fork: false,
            mountns: true,
            unshare_late: CloneFlags::empty(),
        }
    }
}

const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

pub(crate) fn flag(t: LinuxNamespaceType) -> CloneFlags {
    CloneFlags::from_bits_retain(t as libc::c_int)
}

pub(crate) fn proc_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// Opens a namespace file and checks it is a namespace of the expected type.
pub(crate) fn open_ns(path: &Path, t: LinuxNamespaceType) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .sys(format!("open namespace {}", path.display()))?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
    let got = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    if got < 0 || got != t as libc::c_int {
        return Err(RuntimeError::Spec(format!(
            "{} is not a {} namespace",
            path.display(),
            proc_name(t)
        )));
    }
    Ok(fd)
}

/// Plans a container's init.
pub(crate) fn plan_init(list: &[LinuxNamespace]) -> Result<NsPlan> {
    let mut p = NsPlan::default();
    let mut seen = Vec::new();
    let mut user_joined = false;
    for ns in list {
        let t = ns.typ();
        if seen.contains(&t) {
            return Err(RuntimeError::Spec(format!(
                "namespace {} listed twice",
                proc_name(t)
            )));
        }
        seen.push(t);
        let f = flag(t);
        match ns.path() {
            None => match t {
                // clone() cannot take CLONE_NEWTIME (it overlaps CSIGNAL): the parent unshares
                // it, sets the offsets, and the child is born inside.
                LinuxNamespaceType::Time => p.new_timens = true,
                // After the move into the container's cgroup (its root is where we are then).
                LinuxNamespaceType::Cgroup => {
                    p.unshare_late |= f;
                    p.cgroupns = true;
                }
                LinuxNamespaceType::User => {
                    p.clone |= f;
                    p.new_userns = true;
                }
                _ => p.clone |= f,
            },
            Some(path) => {
                let fd = open_ns(path, t)?;
                match t {
                    LinuxNamespaceType::User => {
                        user_joined = true;
                        p.child_join.insert(0, (f, fd));
                    }
                    LinuxNamespaceType::Mount => p.child_join.push((f, fd)),
                    LinuxNamespaceType::Cgroup => {
                        p.cgroupns = true;
                        p.parent_join.push((f, fd));
                    }
                    _ => p.parent_join.push((f, fd)),
                }
            }
        }
        if t == LinuxNamespaceType::Uts {
            p.has_uts = true;
        }
    }
    p.mountns = seen.contains(&LinuxNamespaceType::Mount);
    if user_joined {
        // New namespaces must belong to the joined user namespace: the child makes them after
        // setns. A new pid namespace then needs one more fork (the grandchild is its pid 1),
        // and the cgroup namespace waits until that grandchild is in its cgroup.
        p.double_fork = p.clone.contains(CloneFlags::CLONE_NEWPID);
        p.unshare |= p.clone;
        p.clone = CloneFlags::empty();
    }
    Ok(p)
}

/// Plans an exec: join every namespace of the init that differs from ours.
pub(crate) fn plan_exec(pid: i32, list: &[LinuxNamespace]) -> Result<NsPlan> {
    let mut p = NsPlan::default();
    let order = [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Time,
    ];
    for t in order {
        if !list.iter().any(|n| n.typ() == t) {
            continue;
        }
        let theirs = format!("/proc/{pid}/ns/{}", proc_name(t));
        let ours = format!("/proc/self/ns/{}", proc_name(t));
        let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        if a.ino() == b.ino() && a.dev() == b.dev() {
            continue;
        }
        let fd = open_ns(Path::new(&theirs), t)?;
        match t {
            LinuxNamespaceType::User | LinuxNamespaceType::Mount => {
                p.child_join.push((flag(t), fd))
            }
            _ => p.parent_join.push((flag(t), fd)),
        }
    }
    Ok(p)
}

/// Joins the parent-side namespaces, and makes a new time namespace (with the spec's offsets)
/// for the children to come.
pub(crate) fn join_in_parent(
    p: &NsPlan,
    offsets: Option<&std::collections::HashMap<String, oci_spec::runtime::LinuxTimeOffset>>,
) -> Result<()> {
    for (f, fd) in &p.parent_join {
        nix::sched::setns(fd, *f).sys(format!("setns {f:?}"))?;
    }
    if p.new_timens {
        nix::sched::unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME))
            .sys("unshare time namespace")?;
        let mut text = String::new();
        for (clock, o) in offsets.into_iter().flatten() {
            if clock != "monotonic" && clock != "boottime" {
                return Err(RuntimeError::Spec(format!(
                    "unknown time offset clock {clock:?}"
                )));
            }
            text.push_str(&format!(
                "{clock} {} {}\n",
                o.secs().unwrap_or(0),
                o.nanosecs().unwrap_or(0)
            ));
        }
        if !text.is_empty() {
            std::fs::write("/proc/self/timens_offsets", text)
                .map_err(|e| RuntimeError::path("write", "/proc/self/timens_offsets", e))?;
        }
    }
    Ok(())
}
