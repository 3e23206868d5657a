//! The last steps before execve: rlimits, capabilities, user and groups, no_new_privs, seccomp,
//! cwd, and the executable lookup. Shared by a container's init and by `exec`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, Capability, PosixRlimitType, Process};

use crate::error::{Result, RuntimeError, SysContext};
use crate::seccomp::Program;
use crate::sys::{capset, prctl};

const CAP_NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability name this runtime knows, "CAP_"-prefixed (for `features`).
pub fn known_capabilities() -> Vec<String> {
    CAP_NAMES.iter().map(|n| format!("CAP_{n}")).collect()
}

fn cap_number(c: &Capability) -> Option<u32> {
    let name = c.to_string();
    CAP_NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

fn mask(set: &Option<Capabilities>) -> u64 {
    set.iter()
        .flatten()
        .filter_map(cap_number)
        .fold(0u64, |m, n| m | (1u64 << n))
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or((CAP_NAMES.len() - 1) as u32)
}

/// Values computed before pivot_root (needs the host's /proc).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostFacts {
    pub(crate) last_cap: u32,
    /// Our permitted set: asking for more would fail, so requests are clamped to it.
    pub(crate) permitted: u64,
}

impl HostFacts {
    pub(crate) fn read() -> HostFacts {
        let permitted = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapPrm:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX);
        HostFacts {
            last_cap: last_cap(),
            permitted,
        }
    }
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Sets the process's rlimits.
pub(crate) fn set_rlimits(p: &Process) -> Result<()> {
    for r in p.rlimits().iter().flatten() {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: lim is a valid rlimit for the call.
        if unsafe { libc::setrlimit(rlimit_resource(r.typ()), &lim) } < 0 {
            return Err(RuntimeError::sys(
                format!("setrlimit {:?}", r.typ()),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Drops to the process's user with its capabilities, then applies no_new_privs and seccomp
/// (seccomp before the user switch when no_new_privs is off, since loading then needs
/// CAP_SYS_ADMIN — runc's order).
pub(crate) fn finalize(p: &Process, facts: HostFacts, seccomp: Option<&Program>) -> Result<()> {
    let nnp = p.no_new_privileges().unwrap_or(false);
    if let (Some(prog), false) = (seccomp, nnp) {
        prog.load()?;
    }
    let caps = p.capabilities().as_ref();
    let clamp = |m: u64| m & facts.permitted;
    let bounding = caps.map(|c| clamp(mask(c.bounding()))).unwrap_or(0);
    for n in 0..=facts.last_cap {
        if bounding & (1u64 << n) == 0 {
            match prctl(libc::PR_CAPBSET_DROP, n.into(), 0) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(RuntimeError::sys("drop bounding capability", e)),
            }
        }
    }
    prctl(libc::PR_SET_KEEPCAPS, 1, 0).map_err(|e| RuntimeError::sys("keepcaps", e))?;
    let user = p.user();
    let gids: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).sys("setgroups")?;
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).sys(format!("setgid {}", user.gid()))?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).sys(format!("setuid {}", user.uid()))?;
    prctl(libc::PR_SET_KEEPCAPS, 0, 0).map_err(|e| RuntimeError::sys("keepcaps", e))?;
    let (eff, perm, inh, amb) = match caps {
        Some(c) => (
            clamp(mask(c.effective())),
            clamp(mask(c.permitted())),
            clamp(mask(c.inheritable())),
            clamp(mask(c.ambient())),
        ),
        None => (0, 0, 0, 0),
    };
    capset(eff & perm, perm, inh).map_err(|e| RuntimeError::sys("capset", e))?;
    for n in 0..=facts.last_cap {
        if amb & (1u64 << n) != 0 && perm & inh & (1u64 << n) != 0 {
            prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                n.into(),
            )
            .map_err(|e| RuntimeError::sys("raise ambient capability", e))?;
        }
    }
    // runc's default is 0022, whatever the caller's umask was.
    let umask = user.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask & 0o777));
    if nnp {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(|e| RuntimeError::sys("no_new_privs", e))?;
        if let Some(prog) = seccomp {
            prog.load()?;
        }
    }
    Ok(())
}

/// chdir to the process cwd and make sure it is inside the container (CVE-2024-21626: a host
/// directory reached through a leaked fd shows up as "(unreachable)" in getcwd).
pub(crate) fn enter_cwd(p: &Process) -> Result<()> {
    let cwd = p.cwd();
    if !cwd.is_absolute() {
        return Err(RuntimeError::Spec(format!(
            "cwd {} is not absolute",
            cwd.display()
        )));
    }
    nix::unistd::chdir(cwd.as_path()).sys(format!("chdir to cwd {}", cwd.display()))?;
    let now = nix::unistd::getcwd().sys("getcwd")?;
    if !now.is_absolute() || now.as_os_str().as_bytes().starts_with(b"(unreachable)") {
        return Err(RuntimeError::Init(format!(
            "current working directory {} is outside of the container",
            cwd.display()
        )));
    }
    Ok(())
}

/// argv, envp and the executable's path, found in the container the way runc (Go's
/// exec.LookPath) finds it.
/// The process's environment as runc sets it: each `KEY=value` in order, a repeated key
/// keeping its first place and its last value (an exec's `--env` overrides the spec's).
fn environment(list: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for kv in list {
        let Some((key, _)) = kv.split_once('=') else {
            let msg = format!("invalid environment variable {kv:?}: missing '='");
            return Err(RuntimeError::Spec(msg));
        };
        if key.is_empty() {
            let msg = format!("invalid environment variable {kv:?}: name cannot be empty");
            return Err(RuntimeError::Spec(msg));
        }
        let prefix = &kv[..=key.len()];
        match out.iter_mut().find(|e| e.starts_with(prefix)) {
            Some(e) => e.clone_from(kv),
            None => out.push(kv.clone()),
        }
    }
    Ok(out)
}

/// `HOME` for a process that has none: the user's home in the container's /etc/passwd, else
/// `/` (runc's rule).
fn home_of(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let home = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
    });
    home.filter(|h| !h.is_empty()).unwrap_or_else(|| "/".into())
}

#[derive(Debug)]
pub(crate) struct Exec {
    pub(crate) path: CString,
    pub(crate) argv: Vec<CString>,
    pub(crate) envp: Vec<CString>,
}

fn c(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| RuntimeError::Spec(format!("{s:?} holds a NUL byte")))
}

impl Exec {
    /// The process's environment, as text.
    pub(crate) fn env_strings(&self) -> Vec<String> {
        self.envp
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    pub(crate) fn prepare(p: &Process) -> Result<Exec> {
        let args = p.args().as_deref().unwrap_or(&[]);
        let Some(arg0) = args.first() else {
            return Err(RuntimeError::Spec("process.args must not be empty".into()));
        };
        let mut env = environment(p.env().as_deref().unwrap_or(&[]))?;
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", home_of(p.user().uid())));
        }
        let path = if arg0.contains('/') {
            PathBuf::from(arg0)
        } else {
            let search = env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .to_string();
            search
                .split(':')
                .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(arg0))
                .find(|cand| is_executable(cand))
                .ok_or_else(|| {
                    RuntimeError::Init(format!(
                        "exec: {arg0:?}: executable file not found in $PATH"
                    ))
                })?
        };
        Ok(Exec {
            path: c(&path.to_string_lossy())?,
            argv: args.iter().map(|a| c(a)).collect::<Result<_>>()?,
            envp: env.iter().map(|e| c(e)).collect::<Result<_>>()?,
        })
    }

    /// Checks that the executable exists (so `create` fails early, as runc's does), in runc's
    /// words (callers match "no such file or directory" and "permission denied").
    pub(crate) fn check(&self) -> Result<()> {
        let p = Path::new(std::ffi::OsStr::from_bytes(self.path.as_bytes()));
        let why = match std::fs::metadata(p) {
            Err(e) => {
                let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT));
                format!("stat {}: {}", p.display(), errno.desc().to_lowercase())
            }
            // A directory too, as runc says.
            Ok(_) if !is_executable(p) => "permission denied".to_string(),
            Ok(_) => return Ok(()),
        };
        Err(RuntimeError::Init(format!(
            "exec: {:?}: {why}",
            p.display().to_string()
        )))
    }

    pub(crate) fn exec(&self) -> RuntimeError {
        let e = nix::unistd::execve(&self.path, &self.argv, &self.envp);
        match e {
            Err(e) => RuntimeError::sys(format!("exec {:?}", self.path), e),
            Ok(never) => match never {},
        }
    }
}

fn is_executable(p: &Path) -> bool {
    let Ok(cp) = crate::sys::cstr(p) else {
        return false;
    };
    // SAFETY: cp is a valid C string.
    let ok = unsafe { libc::access(cp.as_ptr(), libc::X_OK) } == 0;
    ok && std::fs::metadata(p).is_ok_and(|m| m.is_file())
}
