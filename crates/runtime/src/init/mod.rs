//! What the new process does between clone and execve.
//!
//! The child is a forked copy of `berth-runc` (no re-exec): it inherits the parsed spec and
//! every prepared value, talks to the parent over a SEQPACKET [`SyncSocket`], and reports any
//! failure as an `E<message>` packet before `_exit(1)`. It marks itself non-dumpable first, so
//! nothing in the container can ptrace it or open its `/proc/<pid>/exe` while it still runs the
//! runtime binary (see `protect` for the binary itself).

mod dev;
pub(crate) mod mounts;
pub(crate) mod process;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{Process, Spec};

use crate::cgroups::CgroupPaths;
use crate::console;
use crate::error::{Result, RuntimeError, SysContext};
use crate::seccomp::Program;
use crate::state::EXEC_FIFO;
use crate::sys::{SyncSocket, msg, prctl, send_fd};
use process::{Exec, HostFacts};

/// How a container's init enters its rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Jail {
    /// pivot_root, the old root detached (the default).
    Pivot,
    /// The rootfs moved onto `/` and chrooted into (`--no-pivot`).
    Move,
    /// Only chroot: the container has no mount namespace of its own, so its mounts are made in
    /// the caller's and nothing is masked or remounted read-only (runc without `mount`).
    Chroot,
}

/// What kind of process this is.
#[derive(Debug)]
pub(crate) enum Role<'a> {
    /// A container's init: rootfs, pivot, then wait on the exec fifo.
    Init {
        id: &'a str,
        spec: &'a Spec,
        rootfs: &'a Path,
        bundle: &'a Path,
        cgroup: Option<&'a CgroupPaths>,
        jail: Jail,
        new_keyring: bool,
        /// O_PATH fds of the state directory and of the exec fifo in it.
        state_dir: &'a OwnedFd,
        fifo: &'a OwnedFd,
        cgroupns: bool,
    },
    /// A process joining a running container.
    Exec,
}

/// Everything the child needs, prepared by the parent before clone.
#[derive(Debug)]
pub(crate) struct ChildArgs<'a> {
    pub(crate) role: Role<'a>,
    pub(crate) process: &'a Process,
    /// Namespaces to setns into from the child (user first, then mount).
    pub(crate) join: Vec<(nix::sched::CloneFlags, OwnedFd)>,
    /// The child created a user namespace with its clone.
    pub(crate) new_userns: bool,
    /// Namespaces the child unshares itself, after joining (cgroup ns after the cgroup move;
    /// everything when a user namespace was joined by path).
    pub(crate) unshare: nix::sched::CloneFlags,
    /// Fork after unsharing and let the grandchild go on (it is pid 1 of a new pid namespace
    /// made inside a joined user namespace); it unshares `unshare_late` after a second GO.
    pub(crate) double_fork: bool,
    pub(crate) unshare_late: nix::sched::CloneFlags,
    pub(crate) console: Option<OwnedFd>,
    pub(crate) seccomp: Option<&'a Program>,
    /// Connected socket to the seccomp agent's listenerPath.
    pub(crate) seccomp_agent: Option<OwnedFd>,
    pub(crate) preserve_fds: u32,
    pub(crate) hostname: Option<&'a str>,
    pub(crate) domainname: Option<&'a str>,
    pub(crate) sync: SyncSocket,
    /// The child moves itself into its (v1) cgroup first thing; the parent sends no JOINED.
    pub(crate) self_join: Option<&'a crate::cgroups::SelfJoin>,
}

/// Set once `start` has let the container's init go on.
static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The child's entry point; never returns.
pub(crate) fn child_main(args: ChildArgs<'_>) -> ! {
    let err = match run(&args) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let mut m = vec![msg::ERR];
    let text = match &err {
        RuntimeError::Init(inner) => inner.clone(),
        e => crate::error::chain(e),
    };
    m.extend_from_slice(text.as_bytes());
    if STARTED.load(std::sync::atomic::Ordering::Relaxed) {
        // After start nobody reads the sync socket: the error goes to the process's stderr.
        let _ = nix::unistd::write(std::io::stderr(), format!("{text}\n").as_bytes());
    } else {
        let _ = args.sync.send(&m);
    }
    // SAFETY: _exit skips destructors and atexit handlers of the copied parent state.
    unsafe { libc::_exit(1) }
}

fn run(a: &ChildArgs<'_>) -> Result<std::convert::Infallible> {
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0)
        .map_err(|e| RuntimeError::sys("pdeathsig", e))?;
    prctl(libc::PR_SET_DUMPABLE, 0, 0).map_err(|e| RuntimeError::sys("dumpable", e))?;
    if let Some(j) = a.self_join {
        j.enter()?;
    }
    a.sync.expect(msg::GO)?;
    let agent_payload = if a.seccomp_agent.is_some() {
        Some(
            a.sync
                .recv()
                .map_err(|e| RuntimeError::sys("read from parent", e))?,
        )
    } else {
        None
    };
    for (flag, fd) in &a.join {
        nix::sched::setns(fd, *flag).sys(format!("setns {flag:?}"))?;
    }
    if !a.unshare.is_empty() {
        nix::sched::unshare(a.unshare).sys(format!("unshare {:?}", a.unshare))?;
    }
    if a.double_fork {
        // SAFETY: single-threaded (a fork-like clone of a single-threaded parent).
        match unsafe { nix::unistd::fork() }.sys("fork")? {
            nix::unistd::ForkResult::Parent { child } => {
                let _ = a.sync.send(format!("pid {child}").as_bytes());
                // SAFETY: leave without running the copied parent's destructors.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Child => {}
        }
        wait_joined(a)?;
    }
    // An exec'd process is in its cgroup before GO; an init moved by its parent is moved while
    // it sets up its mounts (the move costs the kernel an RCU grace period: overlap it).
    let mut joined = a.double_fork || matches!(a.role, Role::Exec);
    let in_userns = a.new_userns
        || a.join
            .iter()
            .any(|(f, _)| *f == nix::sched::CloneFlags::CLONE_NEWUSER);
    if in_userns {
        let root = nix::unistd::Uid::from_raw(0);
        let groot = nix::unistd::Gid::from_raw(0);
        nix::unistd::setresgid(groot, groot, groot).sys("setgid 0 in user namespace")?;
        nix::unistd::setresuid(root, root, root).sys("setuid 0 in user namespace")?;
    }
    let facts = HostFacts::read();
    if let Some(h) = a.hostname {
        nix::unistd::sethostname(h).sys("sethostname")?;
    }
    if let Some(d) = a.domainname {
        let c = std::ffi::CString::new(d).map_err(|_| RuntimeError::Spec("domainname".into()))?;
        // SAFETY: c is a valid buffer of the given length.
        if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } < 0 {
            return Err(RuntimeError::sys(
                "setdomainname",
                std::io::Error::last_os_error(),
            ));
        }
    }
    let mut fifo_dir = None;
    if let Role::Init {
        id,
        spec,
        rootfs,
        bundle,
        cgroup,
        jail,
        new_keyring,
        state_dir,
        fifo,
        cgroupns,
    } = &a.role
    {
        if *new_keyring {
            // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a NULL name makes an anonymous keyring.
            let rc =
                unsafe { libc::syscall(libc::SYS_keyctl, 1, std::ptr::null::<libc::c_char>()) };
            if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
                return Err(RuntimeError::sys(
                    "join session keyring",
                    std::io::Error::last_os_error(),
                ));
            }
        }
        if !joined && !a.unshare_late.is_empty() {
            // The cgroup namespace (and its mounts) must see the final cgroup.
            wait_joined(a)?;
            joined = true;
        }
        let setup = mounts::RootfsSetup {
            spec,
            rootfs,
            bundle,
            cgroup: *cgroup,
            userns: in_userns,
            cgroupns: *cgroupns,
        };
        let root = setup.mount_all()?;
        if !joined {
            wait_joined(a)?;
        }
        a.sync
            .send(msg::HOOKS)
            .map_err(|e| RuntimeError::sys("sync", e))?;
        a.sync.expect(msg::HOOKS_DONE)?;
        let hooks = spec.hooks().as_ref();
        crate::hooks::run_all(
            hooks.and_then(|h| h.create_container().as_ref()),
            &container_state(id, spec, bundle, "created"),
        )?;
        mounts::write_sysctls(spec, &root)?;
        if *jail != Jail::Chroot {
            setup.mask_and_protect(&root)?;
        }
        drop(root);
        mounts::enter_root(rootfs, *jail)?;
        let readonly = spec.root().as_ref().and_then(|r| r.readonly()) == Some(true);
        if readonly && *jail != Jail::Chroot {
            mounts::remount_root_ro()?;
        }
        fifo_dir = Some((*state_dir, *fifo));
    }
    if let Some(sock) = &a.console {
        let (master, slave, path) = console::open_pty()?;
        if let Some(b) = a.process.console_size() {
            console::set_size(&master, b.height() as u16, b.width() as u16)?;
        }
        if matches!(a.role, Role::Init { .. }) {
            mounts::mount_console(&path)?;
        }
        send_fd(sock, b"/dev/ptmx", master.as_raw_fd())
            .map_err(|e| RuntimeError::sys("send pty master on console socket", e))?;
        console::become_tty(&slave)?;
    } else {
        // A session of its own, as runc gives every container process.
        nix::unistd::setsid().sys("setsid")?;
    }
    process::set_rlimits(a.process)?;
    process::enter_cwd(a.process)?;
    let exec = Exec::prepare(a.process)?;
    exec.check()?;
    crate::sys::cloexec_from(3 + a.preserve_fds)
        .map_err(|e| RuntimeError::sys("close_range", e))?;
    if let Some(dir) = fifo_dir {
        // Created: tell the parent, then block until `start` opens the fifo for reading.
        prctl(libc::PR_SET_PDEATHSIG, 0, 0).map_err(|e| RuntimeError::sys("pdeathsig", e))?;
        a.sync
            .send(msg::READY)
            .map_err(|e| RuntimeError::sys("sync", e))?;
        let fifo = open_fifo(dir)?;
        nix::unistd::write(&fifo, b"0").sys("write exec fifo")?;
        drop(fifo);
        finalize(a, facts, agent_payload.as_deref())?;
        // Started: the caller is gone, so an error from here on is the process's to print.
        STARTED.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Role::Init {
            id, spec, bundle, ..
        } = &a.role
        {
            let hooks = spec.hooks().as_ref();
            crate::hooks::run_all_in(
                hooks.and_then(|h| h.start_container().as_ref()),
                &container_state(id, spec, bundle, "running"),
                Some(&exec.env_strings()),
            )?;
        }
    } else {
        finalize(a, facts, agent_payload.as_deref())?;
        prctl(libc::PR_SET_PDEATHSIG, 0, 0).map_err(|e| RuntimeError::sys("pdeathsig", e))?;
        a.sync
            .send(msg::READY)
            .map_err(|e| RuntimeError::sys("sync", e))?;
    }
    reset_signals();
    Err(exec.exec())
}

/// Waits until the parent has moved us into the container's cgroup, then makes the namespaces
/// that must come after that (the cgroup namespace).
fn wait_joined(a: &ChildArgs<'_>) -> Result<()> {
    if a.self_join.is_none() {
        a.sync.expect(msg::JOINED)?;
    }
    if !a.unshare_late.is_empty() {
        nix::sched::unshare(a.unshare_late).sys(format!("unshare {:?}", a.unshare_late))?;
    }
    Ok(())
}

/// The Rust runtime ignores SIGPIPE in this binary, the caller may ignore others, and execve
/// keeps ignored signals: give the container process default dispositions and an empty mask,
/// as a fresh process would have. (glibc refuses to touch its two internal real-time signals.)
fn reset_signals() {
    // SAFETY: plain disposition and mask changes of the calling thread; no handlers involved.
    unsafe {
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Opens the exec fifo for writing (blocks until `start` reads). The parent opened it O_PATH;
/// reopening through /proc/self/fd needs no search permission on the 0700 state dir, which
/// matters when we are root of a user namespace (a different host uid). Without a /proc in the
/// container, fall back to a lookup from the state dir fd (fine for host root).
fn open_fifo(fds: (&OwnedFd, &OwnedFd)) -> Result<OwnedFd> {
    let (dir, fifo) = fds;
    let wr = nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC;
    let via_proc = format!("/proc/self/fd/{}", fifo.as_raw_fd());
    match nix::fcntl::open(via_proc.as_str(), wr, nix::sys::stat::Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(nix::errno::Errno::ENOENT) => {
            nix::fcntl::openat(dir, EXEC_FIFO, wr, nix::sys::stat::Mode::empty())
                .sys("open exec fifo")
        }
        Err(e) => Err(RuntimeError::sys("open exec fifo", e)),
    }
}

fn finalize(a: &ChildArgs<'_>, facts: HostFacts, agent_payload: Option<&[u8]>) -> Result<()> {
    let nnp = a.process.no_new_privileges().unwrap_or(false);
    match (a.seccomp, &a.seccomp_agent) {
        (Some(prog), Some(agent)) => {
            // A notify filter: load it while we still hold CAP_SYS_ADMIN (after no_new_privs
            // when the spec asks for it), then hand the listener fd to the agent with the state
            // as payload (runc's protocol); the rest of finalize follows.
            if nnp {
                prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
                    .map_err(|e| RuntimeError::sys("no_new_privs", e))?;
            }
            let fd = prog
                .load()?
                .ok_or_else(|| RuntimeError::Init("no seccomp listener fd".into()))?;
            send_fd(agent, agent_payload.unwrap_or_default(), fd.as_raw_fd())
                .map_err(|e| RuntimeError::sys("send seccomp listener fd", e))?;
            process::finalize(a.process, facts, None)
        }
        (prog, _) => process::finalize(a.process, facts, prog),
    }
}

fn container_state(id: &str, spec: &Spec, bundle: &Path, status: &str) -> Vec<u8> {
    serde_json::json!({
        "ociVersion": crate::state::OCI_VERSION,
        "id": id,
        "status": status,
        // SAFETY: getpid has no preconditions.
        "pid": unsafe { libc::getpid() },
        "bundle": bundle,
        "annotations": spec.annotations().clone().unwrap_or_default(),
    })
    .to_string()
    .into_bytes()
}
