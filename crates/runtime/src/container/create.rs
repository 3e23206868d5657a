//! `create`: set up a container whose init waits on the exec fifo.

use oci_spec::runtime::LinuxDeviceType;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Spec};

use super::namespaces::{NsPlan, join_in_parent, plan_init};
use super::{Runtime, clone_joining};
use crate::cgroups::{Cgroup, CgroupPaths, Layout, default_device_rules};
use crate::error::{PathContext, Result, RuntimeError, SysContext};
use crate::init::Jail;
use crate::init::{ChildArgs, Role, child_main};
use crate::state::{ContainerState, EXEC_FIFO, Status, proc_start_time, validate_id, write_atomic};
use crate::sys::{SyncSocket, msg};

/// Options of `create` (and `run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The bundle: `config.json` and the root file system it names.
    pub bundle: PathBuf,
    /// Where to write the init's host pid.
    pub pid_file: Option<PathBuf>,
    /// A unix socket to send the terminal's master to (`process.terminal`).
    pub console_socket: Option<PathBuf>,
    /// Use `chroot` after moving the root instead of `pivot_root`.
    pub no_pivot: bool,
    /// Keep the caller's session keyring.
    pub no_new_keyring: bool,
    /// Descriptors after stdio (3, 4, ...) that the process keeps.
    pub preserve_fds: u32,
    /// The process's stdin, stdout and stderr (descriptors ≥ 3 of the caller); `None`: the
    /// caller's own 0, 1 and 2, as the CLI hands them on.
    pub stdio: Option<[std::os::fd::RawFd; 3]>,
}

/// Reads and checks `<bundle>/config.json`.
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    let p = bundle.join("config.json");
    let bytes = std::fs::read(&p).at("read", &p)?;
    parse_spec(&bytes).map_err(|e| match e {
        RuntimeError::Spec(m) => RuntimeError::Spec(format!("{}: {m}", p.display())),
        e => e,
    })
}

/// Parses and checks a config.json (the checks runc makes before touching anything).
pub fn parse_spec(bytes: &[u8]) -> Result<Spec> {
    let spec: Spec =
        serde_json::from_slice(bytes).map_err(|e| RuntimeError::Spec(e.to_string()))?;
    validate(&spec)?;
    Ok(spec)
}

/// The checks runc makes before touching anything.
pub(crate) fn validate(spec: &Spec) -> Result<()> {
    let bad = |m: String| Err(RuntimeError::Spec(m));
    let Some(root) = spec.root() else {
        return bad("root is required".into());
    };
    if root.path().as_os_str().is_empty() {
        return bad("root.path is required".into());
    }
    let Some(process) = spec.process() else {
        return bad("process is required".into());
    };
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return bad("process.args must not be empty".into());
    }
    if !process.cwd().is_absolute() {
        return bad(format!(
            "process.cwd {} is not absolute",
            process.cwd().display()
        ));
    }
    let Some(linux) = spec.linux() else {
        return bad("linux is required".into());
    };
    let ns_types: Vec<_> = linux
        .namespaces()
        .iter()
        .flatten()
        .map(|n| n.typ())
        .collect();
    use oci_spec::runtime::LinuxNamespaceType as T;
    if ns_types.contains(&T::User)
        && (linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty())
            || linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()))
        && !linux
            .namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == T::User && n.path().is_some())
    {
        return bad("a new user namespace needs uidMappings and gidMappings".into());
    }
    for k in linux.sysctl().iter().flatten().map(|(k, _)| k) {
        let ok = if k.starts_with("net.") {
            ns_types.contains(&T::Network)
        } else if k.starts_with("fs.mqueue.")
            || k.starts_with("kernel.msg")
            || k.starts_with("kernel.shm")
            || k == "kernel.sem"
        {
            ns_types.contains(&T::Ipc)
        } else if k == "kernel.hostname" || k == "kernel.domainname" {
            ns_types.contains(&T::Uts)
        } else {
            false
        };
        if !ok || k.contains('/') || k.contains("..") {
            return bad(format!(
                "sysctl {k:?} is not in a namespace of the container"
            ));
        }
    }
    if (spec.hostname().is_some() || spec.domainname().is_some()) && !ns_types.contains(&T::Uts) {
        return bad("hostname needs a new uts namespace".into());
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return bad(format!(
                "mount destination {} is not absolute",
                m.destination().display()
            ));
        }
    }
    for (name, hooks) in spec.hooks().iter().flat_map(|h| {
        [
            ("prestart", h.prestart()),
            ("createRuntime", h.create_runtime()),
            ("createContainer", h.create_container()),
            ("startContainer", h.start_container()),
            ("poststart", h.poststart()),
            ("poststop", h.poststop()),
        ]
    }) {
        for hook in hooks.iter().flatten() {
            if !hook.path().is_absolute() {
                return bad(format!(
                    "{name} hook path {} is not absolute",
                    hook.path().display()
                ));
            }
        }
    }
    if let Some(r) = linux.resources() {
        check_resources(r)?;
    }
    Ok(())
}

/// Rejects negative limits that have no meaning (runc lets -1 mean unlimited).
pub(crate) fn check_resources(r: &LinuxResources) -> Result<()> {
    let neg = |what: &str, v: Option<i64>| match v {
        Some(v) if v < -1 => Err(RuntimeError::Spec(format!("{what} {v} is negative"))),
        _ => Ok(()),
    };
    if let Some(m) = r.memory() {
        neg("memory.limit", m.limit())?;
        neg("memory.swap", m.swap())?;
        neg("memory.reservation", m.reservation())?;
    }
    if let Some(c) = r.cpu() {
        neg("cpu.quota", c.quota())?;
    }
    if let Some(p) = r.pids() {
        neg("pids.limit", Some(p.limit()))?;
    }
    Ok(())
}

/// Cleans up a half-made container unless disarmed.
struct Undo {
    dir: Option<PathBuf>,
    cgroup: Option<Box<dyn Cgroup>>,
    child: Option<i32>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(pid) = self.child {
            // SAFETY: kill/waitpid on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.destroy();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The cgroup's resources, with runc's default device allow-list added after the spec's rules.
pub(crate) fn resources_with_devices(spec: &Spec) -> Option<LinuxResources> {
    let linux = spec.linux().as_ref()?;
    let mut r = linux.resources().clone().unwrap_or_default();
    let mut rules = r.devices().clone().unwrap_or_default();
    if rules.is_empty() {
        return Some(r);
    }
    let defaults = default_device_rules();
    let mut extra: Vec<oci_spec::runtime::LinuxDeviceCgroup> = Vec::new();
    for d in &defaults {
        let mut c = oci_spec::runtime::LinuxDeviceCgroup::default();
        c.set_allow(true);
        c.set_typ(Some(match d.kind {
            'b' => oci_spec::runtime::LinuxDeviceType::B,
            _ => oci_spec::runtime::LinuxDeviceType::C,
        }));
        c.set_major(d.major);
        c.set_minor(d.minor);
        c.set_access(Some(d.access.clone()));
        extra.push(c);
    }
    for d in linux.devices().iter().flatten() {
        // Only block and character devices have device-cgroup rules (a FIFO is just made;
        // an unbuffered character device is a character device to the cgroup), as in runc.
        let typ = match d.typ() {
            LinuxDeviceType::B => LinuxDeviceType::B,
            LinuxDeviceType::C | LinuxDeviceType::U => LinuxDeviceType::C,
            LinuxDeviceType::P | LinuxDeviceType::A => continue,
        };
        let mut c = oci_spec::runtime::LinuxDeviceCgroup::default();
        c.set_allow(true);
        c.set_typ(Some(typ));
        c.set_major(Some(d.major()));
        c.set_minor(Some(d.minor()));
        c.set_access(Some("rwm".into()));
        extra.push(c);
    }
    rules.extend(extra);
    r.set_devices(Some(rules));
    Some(r)
}

fn write_id_map(pid: i32, file: &str, maps: &[oci_spec::runtime::LinuxIdMapping]) -> Result<()> {
    let text: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect();
    let p = format!("/proc/{pid}/{file}");
    std::fs::write(&p, text).at("write", p)
}

/// Writes oom_score_adj, keeping the current value when lowering it is not allowed (this host
/// lacks CAP_SYS_RESOURCE; containerd's restrict_oom_score_adj does the same clamp).
fn set_oom_score_adj(pid: i32, v: i32) -> Result<()> {
    let p = format!("/proc/{pid}/oom_score_adj");
    match std::fs::write(&p, v.to_string()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let cur: i32 = std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if v < cur {
                Ok(())
            } else {
                Err(RuntimeError::path("write", p, e))
            }
        }
        Err(e) => Err(RuntimeError::path("write", p, e)),
    }
}

impl Runtime {
    /// Creates container `id` from the bundle; returns the init's pid.
    pub fn create(&self, id: &str, o: &CreateOptions) -> Result<i32> {
        self.create_inner(id, o).map(|(pid, _)| pid)
    }

    /// Like `create`, but the init stays our child (for `run`).
    pub(crate) fn create_inner(
        &self,
        id: &str,
        o: &CreateOptions,
    ) -> Result<(i32, ContainerState)> {
        validate_id(id)?;
        let bundle = std::fs::canonicalize(&o.bundle).at("open bundle", &o.bundle)?;
        let spec = load_spec(&bundle)?;
        let root_cfg = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_default();
        let rootfs_path = if root_cfg.is_absolute() {
            root_cfg
        } else {
            bundle.join(root_cfg)
        };
        let rootfs = std::fs::canonicalize(&rootfs_path).at("open rootfs", &rootfs_path)?;
        if rootfs == std::path::Path::new("/") {
            return Err(RuntimeError::Spec(
                "rootfs resolves to the host's / (through ../ or a symlink)".into(),
            ));
        }
        if !rootfs.is_dir() {
            return Err(RuntimeError::Spec(format!(
                "rootfs {} is not a directory",
                rootfs.display()
            )));
        }
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| RuntimeError::Spec("process is required".into()))?;
        let terminal = process.terminal() == Some(true);
        let console = match (terminal, &o.console_socket) {
            (true, Some(p)) => Some(OwnedFd::from(
                UnixStream::connect(p).at("connect console socket", p)?,
            )),
            (true, None) => {
                return Err(RuntimeError::Spec(
                    "cannot allocate tty if runc will detach without setting console socket".into(),
                ));
            }
            (false, Some(_)) => {
                return Err(RuntimeError::Spec(
                    "cannot use console socket if runc will not detach or allocate tty".into(),
                ));
            }
            (false, None) => None,
        };
        let linux = spec.linux().clone().unwrap_or_default();
        let seccomp = match linux.seccomp() {
            Some(s) => Some(crate::seccomp::compile_cached(
                s,
                Some(&self.root.join(".cache")),
            )?),
            None => None,
        };
        let seccomp_agent = match (
            &seccomp,
            linux
                .seccomp()
                .as_ref()
                .and_then(|s| s.listener_path().clone()),
        ) {
            (Some(p), Some(path)) if p.notify => Some(OwnedFd::from(
                UnixStream::connect(&path).at("connect seccomp listener", &path)?,
            )),
            _ => None,
        };
        let plan: NsPlan = plan_init(linux.namespaces().as_deref().unwrap_or(&[]))?;
        let hides = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
        if !plan.mountns && (hides(linux.masked_paths()) || hides(linux.readonly_paths())) {
            // They would be set up in the caller's mount namespace.
            return Err(RuntimeError::Spec(
                "unable to restrict sys entries without a private MNT namespace".into(),
            ));
        }

        // From here on, failures undo what was made.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .at("create", &self.root)?;
        let dir = self.dir(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Exists);
            }
            Err(e) => return Err(RuntimeError::path("create", dir, e)),
        }
        let mut undo = Undo {
            dir: Some(dir.clone()),
            cgroup: None,
            child: None,
        };
        // 0622 as runc: root of a user namespace is another host uid; the 0700 directory still
        // keeps everyone else out.
        let fifo_path = dir.join(EXEC_FIFO);
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .sys("mkfifo exec.fifo")?;
        std::fs::set_permissions(
            &fifo_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o622),
        )
        .at("chmod", &fifo_path)?;
        let fifo = nix::fcntl::open(
            &fifo_path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .sys("open exec fifo")?;
        let state_dir = nix::fcntl::open(
            &dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .sys("open state dir")?;

        let cg_path = linux
            .cgroups_path()
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| id.to_string());
        let own = std::fs::read_to_string("/proc/self/cgroup").at("read", "/proc/self/cgroup")?;
        let cg_paths: CgroupPaths = Layout::detect()?.resolve(&cg_path, &own)?;
        let cgroup = cg_paths.open();

        // Directories first (cheap); the move into them overlaps the child's set-up below.
        undo.cgroup = Some(cg_paths.open());
        cgroup.create()?;
        let self_join = cg_paths.self_join().ok();
        join_in_parent(&plan, linux.time_offsets().as_ref())?;
        let (parent_sock, child_sock) = SyncSocket::pair()?;
        let hostname = spec.hostname().as_deref().filter(|_| plan.has_uts);
        let domainname = spec.domainname().as_deref().filter(|_| plan.has_uts);
        // SAFETY: berth-runc is single-threaded here (no thread was spawned), so the child may
        // keep running Rust code after the fork-like clone.
        let (pid, self_join) = unsafe { clone_joining(plan.clone.bits(), self_join) }?;
        if pid == 0 {
            crate::sys::child_stdio(o.stdio);
            drop(parent_sock);
            std::mem::forget(undo);
            let args = ChildArgs {
                role: Role::Init {
                    id,
                    spec: &spec,
                    rootfs: &rootfs,
                    bundle: &bundle,
                    cgroup: Some(&cg_paths),
                    jail: match (plan.mountns, o.no_pivot) {
                        (false, _) => Jail::Chroot,
                        (true, true) => Jail::Move,
                        (true, false) => Jail::Pivot,
                    },
                    new_keyring: !o.no_new_keyring,
                    state_dir: &state_dir,
                    fifo: &fifo,
                    cgroupns: plan.cgroupns,
                },
                process: &process,
                join: plan.child_join,
                new_userns: plan.new_userns,
                unshare: plan.unshare,
                double_fork: plan.double_fork,
                unshare_late: plan.unshare_late,
                console,
                seccomp: seccomp.as_deref(),
                seccomp_agent,
                preserve_fds: o.preserve_fds,
                hostname,
                domainname,
                sync: child_sock,
                self_join: self_join.as_ref(),
            };
            child_main(args);
        }
        undo.child = Some(pid);
        drop(child_sock);
        drop(console);
        drop(seccomp_agent);

        if plan.new_userns {
            write_id_map(
                pid,
                "uid_map",
                linux.uid_mappings().as_deref().unwrap_or(&[]),
            )?;
            write_id_map(
                pid,
                "gid_map",
                linux.gid_mappings().as_deref().unwrap_or(&[]),
            )?;
        }
        parent_sock
            .send(msg::GO)
            .map_err(|e| RuntimeError::sys("sync", e))?;
        if seccomp.as_ref().is_some_and(|p| p.notify) {
            let payload = serde_json::json!({
                "ociVersion": crate::state::OCI_VERSION,
                "fds": ["seccompFd"],
                "pid": pid,
                "metadata": linux.seccomp().as_ref().and_then(|s| s.listener_metadata().clone()).unwrap_or_default(),
                "state": {"ociVersion": crate::state::OCI_VERSION, "id": id, "status": "creating",
                          "pid": pid, "bundle": bundle, "annotations": spec.annotations().clone().unwrap_or_default()},
            });
            parent_sock
                .send(payload.to_string().as_bytes())
                .map_err(|e| RuntimeError::sys("sync", e))?;
        }
        let mut pid = pid;
        if plan.double_fork {
            // The child joins the user namespace, unshares, forks the real init, and exits.
            let m = parent_sock
                .recv()
                .map_err(|e| RuntimeError::sys("sync", e))?;
            let text = String::from_utf8_lossy(&m).into_owned();
            let grandchild = text
                .strip_prefix("pid ")
                .and_then(|p| p.parse::<i32>().ok())
                .ok_or_else(|| RuntimeError::Init(text.trim_start_matches('E').to_string()))?;
            // SAFETY: reaping our own (exiting) child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            pid = grandchild;
            undo.child = Some(pid);
        }
        // The child is setting up its mounts meanwhile. Limits come once it is done: a device
        // list half written would make its mknods in /dev fail.
        if self_join.is_none() {
            cgroup.join(pid)?;
            parent_sock
                .send(msg::JOINED)
                .map_err(|e| RuntimeError::sys("sync", e))?;
        }
        drop(self_join);
        let mut st = ContainerState {
            id: id.to_string(),
            pid,
            pid_start: proc_start_time(pid).unwrap_or(0),
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: crate::time::now_rfc3339(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup: Some(cg_paths.clone()),
            config: spec.clone(),
            started: false,
        };
        parent_sock.expect(msg::HOOKS)?;
        if let Some(r) = resources_with_devices(&spec) {
            cgroup.set(&r)?;
        }
        if let Some(v) = process.oom_score_adj() {
            set_oom_score_adj(pid, v)?;
        }
        if let Some(h) = spec.hooks() {
            let state = st.hook_state(Status::Creating);
            crate::hooks::run_all(h.prestart().as_ref(), &state)?;
            crate::hooks::run_all(h.create_runtime().as_ref(), &state)?;
        }
        parent_sock
            .send(msg::HOOKS_DONE)
            .map_err(|e| RuntimeError::sys("sync", e))?;
        parent_sock.expect(msg::READY)?;
        st.pid_start = proc_start_time(pid).unwrap_or(st.pid_start);
        st.save(&self.root)?;
        if let Some(pf) = &o.pid_file {
            write_atomic(pf, pid.to_string().as_bytes())?;
        }
        undo.child = None;
        undo.cgroup = None;
        undo.dir = None;
        Ok((pid, st))
    }
}
