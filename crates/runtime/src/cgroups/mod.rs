//! cgroups v1 and v2 behind one trait.
//!
//! [`Cgroup`] is what the container code uses; [`CgroupPaths`] is what the state file keeps, so
//! that a later `berth-runc` invocation (from a different cgroup of its own) finds the same
//! directories. Layout detection follows runc: a hybrid host (v1 controllers plus a cgroup2 mount
//! at `/sys/fs/cgroup/unified`) is driven through v1, with the unified directory joined as well.

mod devices;
mod stats;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};
use serde::{Deserialize, Serialize};

pub use devices::{DeviceRule, default_device_rules};
pub use stats::{
    BlkioEntry, BlkioStats, CpuStats, CpuUsage, HugetlbStats, MemoryEntry, MemoryStats, PidsStats,
    Stats, Throttling,
};
pub use v1::{V1Cgroup, hugepage_sizes};
pub use v2::V2Cgroup;

/// What can go wrong with cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file of the cgroup could not be read or written.
    #[error("cgroup {op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A value the spec or the kernel gave does not parse: the setting and the value.
    #[error("cgroup {0}: invalid value {1:?}")]
    Invalid(&'static str, String),
    /// A controller the spec needs is not mounted.
    #[error("cgroup controller {0} is not mounted")]
    NoController(String),
    /// Neither a v1 hierarchy nor cgroup2 was found.
    #[error("no usable cgroup hierarchy found")]
    NoHierarchy,
    /// The freezer did not settle in time.
    #[error("cgroup {0}: timed out waiting for the freezer")]
    FreezeTimeout(PathBuf),
    /// A setting this hierarchy cannot apply: the setting and why.
    #[error("cgroup {0}: {1}")]
    Unsupported(&'static str, String),
}

pub(crate) type CgResult<T> = Result<T, CgroupError>;

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// Freezer state as runc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    /// Running.
    Thawed,
    /// Paused.
    Frozen,
}

/// One container's cgroup, whichever the hierarchy.
pub trait Cgroup: fmt::Debug {
    /// Creates the directories (if missing).
    fn create(&self) -> CgResult<()>;
    /// Moves `pid` in (the costly part: the kernel waits for an RCU grace period).
    fn join(&self, pid: i32) -> CgResult<()>;
    /// Creates the directories (if missing) and moves `pid` in.
    fn apply(&self, pid: i32) -> CgResult<()> {
        self.create()?;
        self.join(pid)
    }
    /// Writes the limits of `resources` (absent fields are left alone).
    fn set(&self, resources: &LinuxResources) -> CgResult<()>;
    /// Freezes or thaws every process, and waits until the kernel says it is done.
    fn freeze(&self, state: FreezerState) -> CgResult<()>;
    /// The current freezer state.
    fn freezer_state(&self) -> CgResult<FreezerState>;
    /// Pids of every process in the cgroup.
    fn pids(&self) -> CgResult<Vec<i32>>;
    /// Resource usage, for `events --stats` and `ctr task metrics`.
    fn stats(&self) -> CgResult<Stats>;
    /// Removes the directories (the cgroup must be empty; stray processes are killed first).
    fn destroy(&self) -> CgResult<()>;
    /// The paths, for the state file.
    fn paths(&self) -> CgroupPaths;
}

/// Resolved cgroup directories, as kept in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum CgroupPaths {
    /// v1 (or hybrid): one directory per controller; the key "" is the unified directory.
    V1 {
        /// Controller → directory.
        paths: BTreeMap<String, PathBuf>,
    },
    /// v2: one directory.
    V2 {
        /// The directory.
        path: PathBuf,
    },
}

impl CgroupPaths {
    /// The existing sub-cgroups that runc's `exec --cgroup` names, each `path` (in every
    /// controller) or `controller[,controller]:path` (those v1 controllers only).
    pub fn sub(&self, specs: &[String]) -> CgResult<CgroupPaths> {
        let mut out = self.clone();
        for spec in specs {
            let (ctrls, rel) = match spec.split_once(':') {
                Some((c, r)) => (Some(c), r),
                None => (None, spec.as_str()),
            };
            let rel = Path::new(rel);
            let bad = rel.as_os_str().is_empty()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)));
            if bad {
                return Err(CgroupError::Invalid("exec cgroup", spec.clone()));
            }
            let wanted = |k: &str| ctrls.is_none_or(|c| c.split(',').any(|x| x == k));
            let into = |dir: &mut PathBuf| -> CgResult<()> {
                let d = dir.join(rel);
                if !d.is_dir() {
                    return Err(io_err("open", &d)(io::ErrorKind::NotFound.into()));
                }
                *dir = d;
                Ok(())
            };
            match &mut out {
                CgroupPaths::V2 { path } if ctrls.is_none_or(str::is_empty) => into(path)?,
                CgroupPaths::V2 { .. } => {
                    return Err(CgroupError::Invalid(
                        "exec cgroup (v2 has no controllers)",
                        spec.clone(),
                    ));
                }
                CgroupPaths::V1 { paths } => {
                    let mut any = false;
                    for (_, dir) in paths.iter_mut().filter(|(k, _)| wanted(k)) {
                        into(dir)?;
                        any = true;
                    }
                    if !any {
                        return Err(CgroupError::Invalid("exec cgroup controller", spec.clone()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Opens the cgroup these paths describe.
    pub fn open(&self) -> Box<dyn Cgroup> {
        match self {
            CgroupPaths::V1 { paths } => Box::new(V1Cgroup::from_paths(paths.clone())),
            CgroupPaths::V2 { path } => Box::new(V2Cgroup::new(path.clone())),
        }
    }
}

/// A new process's way into its cgroup without the kernel's threadgroup write lock: moving a
/// process by pid takes that lock, and taking it waits out an RCU grace period (5–15 ms on the
/// test machine, most of a container's create). A cgroup2 directory (v2, or the unified one of a
/// hybrid host) is entered at birth with `clone3(CLONE_INTO_CGROUP)`; in each v1 hierarchy the
/// single-threaded child writes `0` to `tasks`, and a thread moving itself skips the lock
/// (Linux 6.3+; older kernels take it and are merely slower). The files are opened by the
/// parent, so the child needs no access of its own (user namespaces).
#[derive(Debug)]
pub(crate) struct SelfJoin {
    /// The cgroup2 directory, for `CLONE_INTO_CGROUP`.
    pub(crate) into: Option<std::os::fd::OwnedFd>,
    /// `tasks` of each v1 hierarchy, open for writing.
    tasks: Vec<(PathBuf, std::os::fd::OwnedFd)>,
}

impl SelfJoin {
    /// In the child, before it makes any thread or process: moves itself into every v1
    /// hierarchy.
    pub(crate) fn enter(&self) -> CgResult<()> {
        for (path, fd) in &self.tasks {
            nix::unistd::write(fd, b"0").map_err(|e| io_err("write", path)(e.into()))?;
        }
        Ok(())
    }
}

impl CgroupPaths {
    /// Opens what [`SelfJoin`] needs; the directories must exist.
    pub(crate) fn self_join(&self) -> CgResult<SelfJoin> {
        use std::os::unix::fs::OpenOptionsExt;
        let open_dir = |dir: &Path| {
            std::fs::File::open(dir)
                .map(std::os::fd::OwnedFd::from)
                .map_err(io_err("open", dir))
        };
        match self {
            CgroupPaths::V2 { path } => Ok(SelfJoin {
                into: Some(open_dir(path)?),
                tasks: Vec::new(),
            }),
            CgroupPaths::V1 { paths } => {
                let mut into = None;
                let mut tasks = Vec::new();
                // Co-mounted controllers (cpu,cpuacct) share one directory: one write each.
                let dirs: std::collections::BTreeSet<(bool, &PathBuf)> =
                    paths.iter().map(|(k, v)| (k.is_empty(), v)).collect();
                for (unified, dir) in dirs {
                    if unified {
                        into = Some(open_dir(dir)?);
                        continue;
                    }
                    let p = dir.join("tasks");
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_CLOEXEC)
                        .open(&p)
                        .map_err(io_err("open", &p))?;
                    tasks.push((p, f.into()));
                }
                Ok(SelfJoin { into, tasks })
            }
        }
    }
}

/// The cgroup layout of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// v1 hierarchies: controller (or `name=...`) → (mount point, mount root); plus the cgroup2
    /// mount of a hybrid host.
    V1 {
        /// Controller → (mount point, mount root).
        mounts: BTreeMap<String, (PathBuf, PathBuf)>,
        /// A hybrid host's cgroup2 mount point.
        unified: Option<PathBuf>,
    },
    /// Pure v2 at this mount point.
    V2 {
        /// The cgroup2 mount point.
        mount: PathBuf,
    },
}

impl Layout {
    /// Reads `/proc/self/mountinfo`.
    pub fn detect() -> CgResult<Layout> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
        Self::from_mountinfo(&text)
    }

    /// Parses mountinfo text (separate for tests).
    pub fn from_mountinfo(text: &str) -> CgResult<Layout> {
        let mut mounts = BTreeMap::new();
        let mut unified = None;
        for line in text.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let root = PathBuf::from(unescape(pre[3]));
            let mountpoint = PathBuf::from(unescape(pre[4]));
            match post[0] {
                "cgroup2" => {
                    unified.get_or_insert(mountpoint);
                }
                "cgroup" => {
                    for opt in post[2].split(',') {
                        if v1::is_controller(opt) || opt.starts_with("name=") {
                            mounts
                                .entry(opt.to_string())
                                .or_insert_with(|| (mountpoint.clone(), root.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        if !mounts.is_empty() {
            return Ok(Layout::V1 { mounts, unified });
        }
        match unified {
            Some(mount) => Ok(Layout::V2 { mount }),
            None => Err(CgroupError::NoHierarchy),
        }
    }

    /// Resolves a spec `cgroupsPath` (absolute: from the hierarchy root; relative: below the
    /// caller's own cgroup, as runc does) into directories. `own` is `/proc/self/cgroup`.
    pub fn resolve(&self, cgroups_path: &str, own: &str) -> CgResult<CgroupPaths> {
        let inner = clean_cgroup_path(cgroups_path)?;
        let own_map = parse_proc_cgroup(own);
        let join = |mount: &Path, mount_root: &Path, own_path: Option<&String>| -> PathBuf {
            let base = if cgroups_path.starts_with('/') {
                PathBuf::new()
            } else {
                let own_path = own_path.map(String::as_str).unwrap_or("/");
                let rel = Path::new(own_path)
                    .strip_prefix(mount_root)
                    .unwrap_or(Path::new(own_path));
                rel.strip_prefix("/").unwrap_or(rel).to_path_buf()
            };
            mount.join(base).join(&inner)
        };
        match self {
            Layout::V1 { mounts, unified } => {
                let mut paths = BTreeMap::new();
                for (ctrl, (mount, root)) in mounts {
                    let key = if ctrl.starts_with("name=") {
                        ctrl.clone()
                    } else {
                        // Co-mounted controllers (cpu,cpuacct) appear as "cpu,cpuacct" in
                        // /proc/self/cgroup; look up by any member.
                        ctrl.clone()
                    };
                    let own_path = own_map
                        .iter()
                        .find(|(k, _)| k.split(',').any(|c| c == key))
                        .map(|(_, v)| v);
                    paths.insert(ctrl.clone(), join(mount, root, own_path));
                }
                if let Some(u) = unified {
                    paths.insert(String::new(), join(u, Path::new("/"), own_map.get("")));
                }
                Ok(CgroupPaths::V1 { paths })
            }
            Layout::V2 { mount } => Ok(CgroupPaths::V2 {
                path: join(mount, Path::new("/"), own_map.get("")),
            }),
        }
    }
}

/// A resource of the OCI spec that some hosts cannot apply at all (asked before a spec is
/// written, so that a client can drop or refuse it instead of a create failing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optional {
    /// `hugepageLimits`: the hugetlb controller.
    Hugetlb,
    /// `memory.swap`: swap accounting (v1 `memory.memsw.*`, v2 `memory.swap.max`).
    Swap,
}

impl Layout {
    /// Whether a cgroup at the absolute `cgroups_path` can apply `what` here, as the runtime
    /// would create it. v1 (hybrid hosts included, driven through v1 as runc does): the
    /// controller's hierarchy is mounted (swap: and has `memory.memsw.limit_in_bytes`). v2: the
    /// controller is in `cgroup.controllers` of the nearest existing ancestor of the path (the
    /// runtime enables it on the way down; swap: and that ancestor, or any cgroup below the
    /// root when only the root exists, has `memory.swap.max`).
    pub fn supports(&self, what: Optional, cgroups_path: &str) -> bool {
        match self {
            Layout::V1 { mounts, .. } => match what {
                Optional::Hugetlb => mounts.contains_key("hugetlb"),
                Optional::Swap => mounts
                    .get("memory")
                    .is_some_and(|(m, _)| m.join("memory.memsw.limit_in_bytes").exists()),
            },
            Layout::V2 { mount } => {
                let rel = cgroups_path.trim_start_matches('/');
                let mut dir = mount.join(rel);
                while !dir.is_dir() && dir != *mount {
                    dir = dir
                        .parent()
                        .map_or_else(|| mount.clone(), Path::to_path_buf);
                }
                let controllers =
                    std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
                match what {
                    Optional::Hugetlb => has("hugetlb"),
                    Optional::Swap if !has("memory") => false,
                    // The root cgroup has no memory.* files: look at one of its children.
                    Optional::Swap if dir == *mount => std::fs::read_dir(mount)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .any(|e| e.path().join("memory.swap.max").exists()),
                    Optional::Swap => dir.join("memory.swap.max").exists(),
                }
            }
        }
    }
}

/// Parses `/proc/<pid>/cgroup`: controllers (comma list, "" for v2) → path.
pub(crate) fn parse_proc_cgroup(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        map.insert(ctrls.to_string(), path.to_string());
    }
    map
}

/// Rejects `..` and empty components so a spec cannot point outside the hierarchy.
fn clean_cgroup_path(p: &str) -> CgResult<PathBuf> {
    let mut out = PathBuf::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(CgroupError::Invalid("cgroupsPath", p.to_string())),
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(CgroupError::Invalid("cgroupsPath", p.to_string()));
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Reads a cgroup file, trimmed.
pub(crate) fn read(dir: &Path, file: &str) -> CgResult<String> {
    let p = dir.join(file);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(io_err("read", &p))
}

/// Reads a cgroup file holding one number (`max` reads as `u64::MAX`).
pub(crate) fn read_u64(dir: &Path, file: &str) -> CgResult<u64> {
    let s = read(dir, file)?;
    if s == "max" {
        return Ok(u64::MAX);
    }
    s.parse()
        .map_err(|_| CgroupError::Invalid("read", format!("{}: {s}", dir.join(file).display())))
}

/// Writes one value into a cgroup file (no create, no truncate; the kernel takes one write).
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> CgResult<()> {
    use std::io::Write;
    let p = dir.join(file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .map_err(io_err("open", &p))?;
    f.write_all(value.as_bytes()).map_err(io_err("write", &p))
}

/// Parses "key value" lines.
/// `oom_kill` of the cgroup v2 directory `dir`'s `memory.events`; none once the cgroup is gone.
pub fn oom_kills(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("memory.events")).ok()?;
    Some(flat_keyed(&text).get("oom_kill").copied().unwrap_or(0))
}

pub(crate) fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Kills every process left in a cgroup directory and waits (briefly) for it to empty, then
/// removes it; missing directories are fine.
pub(crate) fn remove_dir(dir: &Path) -> CgResult<()> {
    // Sub-cgroups first (an exec's `--cgroup`, or ones a payload made), as runc removes them.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dir(&e.path())?;
            }
        }
    }
    for attempt in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 99 => {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        // SAFETY: kill has no memory effects; the pids are members of our cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(CgroupError::Io {
                    op: "remove",
                    path: dir.to_path_buf(),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

/// Splits a hugepage size such as "2MB" / "1GB" / "64KB" for file names; rejects anything else.
pub(crate) fn check_page_size(s: &str) -> CgResult<()> {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'B']);
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !(s.ends_with("KB") || s.ends_with("MB") || s.ends_with("GB"))
    {
        return Err(CgroupError::Invalid("hugepage size", s.to_string()));
    }
    Ok(())
}

/// Device rules from the spec, for either version.
pub(crate) fn device_rules(list: &[LinuxDeviceCgroup]) -> CgResult<Vec<DeviceRule>> {
    list.iter().map(DeviceRule::from_spec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
36 31 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A fixture tree of files (`path` or `path=content`) standing in for cgroup mounts, and
    /// the layout of a mountinfo naming them.
    fn fixture(files: &[&str], v2: bool) -> (tempfile::TempDir, Layout) {
        let t = tempfile::tempdir().unwrap();
        for f in files {
            let (path, text) = f.split_once('=').unwrap_or((f, ""));
            let p = t.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let root = t.path().display();
        let info = if v2 {
            format!("30 23 0:27 / {root} rw - cgroup2 cgroup2 rw\n")
        } else {
            let mut s = String::new();
            for (i, c) in ["memory", "cpu", "hugetlb"].iter().enumerate() {
                if t.path().join(c).is_dir() {
                    s.push_str(&format!(
                        "{i} 23 0:{i} / {root}/{c} rw - cgroup cgroup rw,{c}\n"
                    ));
                }
            }
            s
        };
        let l = Layout::from_mountinfo(&info).unwrap();
        (t, l)
    }

    #[test]
    fn optional_resources_follow_the_host() {
        // v1 without a hugetlb hierarchy (this project's CI host), with swap accounting.
        let (_t, l) = fixture(
            &["memory/memory.memsw.limit_in_bytes", "cpu/cpu.shares"],
            false,
        );
        assert!(!l.supports(Optional::Hugetlb, "/kubepods/burstable/pod1/c"));
        assert!(l.supports(Optional::Swap, "/kubepods/burstable/pod1/c"));
        // v1 with hugetlb mounted, memory without memsw (swapaccount=0).
        let (_t, l) = fixture(
            &[
                "memory/memory.limit_in_bytes",
                "hugetlb/hugetlb.2MB.limit_in_bytes",
            ],
            false,
        );
        assert!(l.supports(Optional::Hugetlb, "/kubepods/pod1/c"));
        assert!(!l.supports(Optional::Swap, "/kubepods/pod1/c"));
        // v2: what the nearest existing ancestor offers.
        let (_t, l) = fixture(
            &[
                "cgroup.controllers=cpu memory hugetlb pids",
                "kubepods/cgroup.controllers=cpu memory pids",
                "kubepods/memory.swap.max=max",
                "system/memory.swap.max=max",
            ],
            true,
        );
        assert!(!l.supports(Optional::Hugetlb, "/kubepods/burstable/pod1/c"));
        assert!(l.supports(Optional::Hugetlb, "/other/pod1/c"), "the root's");
        assert!(l.supports(Optional::Swap, "/kubepods/burstable/pod1/c"));
        assert!(
            l.supports(Optional::Swap, "/other/c"),
            "a child of the root has it"
        );
        let (_t, l) = fixture(&["cgroup.controllers=cpu pids"], true);
        assert!(!l.supports(Optional::Swap, "/a") && !l.supports(Optional::Hugetlb, "/a"));
    }

    #[test]
    fn hybrid_is_v1_with_unified() {
        let l = Layout::from_mountinfo(HYBRID).unwrap();
        let Layout::V1 { mounts, unified } = &l else {
            panic!("{l:?}")
        };
        assert_eq!(
            unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert!(mounts.contains_key("memory") && mounts.contains_key("name=systemd"));
        let own = "4:memory:/a/b\n1:cpu:/\n0::/u\n";
        let CgroupPaths::V1 { paths } = l.resolve("x/y", own).unwrap() else {
            panic!()
        };
        assert_eq!(paths["memory"], Path::new("/sys/fs/cgroup/memory/a/b/x/y"));
        assert_eq!(paths["cpu"], Path::new("/sys/fs/cgroup/cpu/x/y"));
        assert_eq!(paths[""], Path::new("/sys/fs/cgroup/unified/u/x/y"));
        let CgroupPaths::V1 { paths } = l.resolve("/abs", own).unwrap() else {
            panic!()
        };
        assert_eq!(paths["memory"], Path::new("/sys/fs/cgroup/memory/abs"));
    }

    #[test]
    fn pure_v2() {
        let l = Layout::from_mountinfo(
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
        )
        .unwrap();
        assert_eq!(
            l.resolve("/k/c1", "0::/init").unwrap(),
            CgroupPaths::V2 {
                path: "/sys/fs/cgroup/k/c1".into()
            }
        );
    }

    #[test]
    fn dotdot_rejected() {
        let l = Layout::from_mountinfo(HYBRID).unwrap();
        assert!(l.resolve("/a/../../etc", "").is_err());
        assert!(l.resolve("", "").is_err());
        assert!(check_page_size("2MB").is_ok());
        assert!(check_page_size("2XB").is_err());
        assert!(check_page_size("../MB").is_err());
    }
}
