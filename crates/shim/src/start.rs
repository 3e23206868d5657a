//! The `start` action: pick and bind the socket, write the bundle's `address` file, re-execute
//! ourselves as the long-lived server (new session, listener on fd 3, a private mount namespace
//! with our binary bind-mounted read-only over itself), print the address in the form the
//! calling daemon understands, exit.
//!
//! What the daemon understands:
//! - containerd 2.3+ sends `BootstrapParams` on stdin and first tries to read a `BootstrapResult`
//!   protobuf back;
//! - containerd 1.7 and 2.0–2.2 set `MAX_SHIM_VERSION` and read JSON
//!   `{"version":2,"address":"unix://…","protocol":"ttrpc"}`;
//! - containerd 1.6 sets neither and reads a plain address.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use berth_api::containerd::runtime::bootstrap::v1::{BootstrapParams, BootstrapResult};
use prost::Message;
use sha2::Digest;

use crate::flags::Flags;

/// Where shim sockets go when the daemon's address has no directory.
const FALLBACK_STATE: &str = "/run/berth";

/// The daemon's state directory, from its socket address: sockets go in `<dir>/s`, runtime state
/// in `<dir>/runc` (for containerd's default address these are containerd's own choices).
pub(crate) fn state_dir(address: &str) -> PathBuf {
    let a = address.strip_prefix("unix://").unwrap_or(address);
    Path::new(a)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from(FALLBACK_STATE), Path::to_path_buf)
}

/// The socket path for this shim: a hash of (daemon address, namespace, id) under `dir`.
pub(crate) fn socket_path(dir: &Path, flags: &Flags) -> anyhow::Result<PathBuf> {
    let digest = sha2::Sha256::digest(
        format!("{}/{}/{}", flags.address, flags.namespace, flags.id).as_bytes(),
    );
    let hex = hex::encode(digest);
    // sun_path holds 107 bytes and a NUL.
    for len in [64, 32] {
        let p = dir.join(&hex[..len]);
        if p.as_os_str().len() <= 107 {
            return Ok(p);
        }
    }
    bail!(
        "socket directory {} is too long for a unix socket path",
        dir.display()
    )
}

/// What came on stdin.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct StartInput {
    pub(crate) options: Option<prost_types::Any>,
    pub(crate) bootstrap: Option<BootstrapParams>,
}

impl StartInput {
    /// Tells a 2.3 `BootstrapParams` from the older bare options `Any` (both are protobuf; an
    /// `Any` never sets the bootstrap's daemon fields).
    pub(crate) fn parse(b: &[u8]) -> StartInput {
        if b.is_empty() {
            return StartInput::default();
        }
        if let Ok(bp) = BootstrapParams::decode(b)
            && (!bp.containerd_ttrpc_address.is_empty()
                || !bp.containerd_grpc_address.is_empty()
                || !bp.containerd_version.is_empty()
                || !bp.extensions.is_empty())
        {
            return StartInput {
                options: bp.extensions.iter().find_map(|e| e.value.clone()),
                bootstrap: Some(bp),
            };
        }
        StartInput {
            options: prost_types::Any::decode(b).ok(),
            bootstrap: None,
        }
    }
}

/// What to print for the daemon.
pub(crate) fn start_output(
    address: &str,
    bootstrap: bool,
    max_shim_version: Option<&str>,
) -> Vec<u8> {
    if bootstrap {
        return BootstrapResult {
            version: 3,
            address: address.to_string(),
            protocol: "ttrpc".into(),
            ..Default::default()
        }
        .encode_to_vec();
    }
    match max_shim_version {
        Some(v) => {
            let version = v.trim().parse::<i32>().unwrap_or(2).clamp(2, 3);
            serde_json::json!({"version": version, "address": address, "protocol": "ttrpc"})
                .to_string()
                .into_bytes()
        }
        None => address.as_bytes().to_vec(),
    }
}

fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let md = std::fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    if !md.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if md.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(())
}

/// The `log` FIFO the daemon reads (containerd creates it in the bundle); /dev/null without one.
/// Non-blocking, so a daemon that stops reading never stalls the shim.
fn open_log(bundle: &Path) -> Stdio {
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(bundle.join("log"))
    {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

/// Moves `pid` into the cgroup at `path` (relative to each hierarchy).
fn join_cgroup(pid: u32, path: &str) {
    let rel = path.trim_start_matches('/');
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for e in entries.flatten() {
        let procs = e.path().join(rel).join("cgroup.procs");
        if procs.exists()
            && let Err(err) = std::fs::write(&procs, pid.to_string())
        {
            eprintln!("moving the shim into {}: {err}", procs.display());
        }
    }
}

pub(crate) fn run(flags: &Flags) -> anyhow::Result<()> {
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .context("reading options from stdin")?;
    let input = StartInput::parse(&stdin);
    let bundle = match &flags.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().context("the bundle (working directory)")?,
    };
    if flags.id.is_empty() {
        bail!("-id is required");
    }
    let sock_dir = input
        .bootstrap
        .as_ref()
        .and_then(|b| b.socket_dir.clone())
        .filter(|d| !d.is_empty())
        .map_or_else(|| state_dir(&flags.address).join("s"), PathBuf::from);
    ensure_private_dir(&sock_dir)?;
    let sock = socket_path(&sock_dir, flags)?;
    if sock.exists() {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            bail!("a shim is already serving {}", sock.display());
        }
        std::fs::remove_file(&sock)
            .with_context(|| format!("removing stale {}", sock.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .with_context(|| format!("binding {}", sock.display()))?;
    let result = (|| {
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
            .context("socket permissions")?;
        let address = format!("unix://{}", sock.display());
        std::fs::write(bundle.join("address"), &address).context("writing the address file")?;
        spawn_server(flags, &bundle, &sock, &listener, &input)?;
        Ok::<_, anyhow::Error>(address)
    })();
    let address = match result {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_file(&sock);
            return Err(e);
        }
    };
    let out = start_output(
        &address,
        input.bootstrap.is_some(),
        std::env::var("MAX_SHIM_VERSION").ok().as_deref(),
    );
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out).context("printing the address")?;
    stdout.flush().context("printing the address")?;
    Ok(())
}

fn spawn_server(
    flags: &Flags,
    bundle: &Path,
    sock: &Path,
    listener: &std::os::unix::net::UnixListener,
    input: &StartInput,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding our own executable")?;
    let mut child_flags = flags.clone();
    child_flags.action = None;
    child_flags.socket = Some(sock.to_path_buf());
    child_flags.bundle = Some(bundle.to_path_buf());
    // The server runs from a detached read-only bind of our binary (CVE-2019-5736): nobody can
    // open it for writing through /proc/<pid>/exe. No mount namespace is made for it, so the
    // containers' mount propagation (bidirectional volumes) is the host's. Executed through
    // /proc/self/fd/N (resolved before close-on-exec closes N), at a number above fd 3.
    let sealed = match berth_runtime::readonly_clone(&exe).map(|fd| {
        // SAFETY: F_DUPFD_CLOEXEC on our own descriptor returns a new one (or -1).
        let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        // SAFETY: a new descriptor that nothing else owns.
        (n >= 0).then(|| unsafe { OwnedFd::from_raw_fd(n) })
    }) {
        Ok(Some(fd)) => Some(fd),
        Ok(None) | Err(_) => {
            tracing::warn!("cannot seal the shim binary; the server runs from it unsealed");
            None
        }
    };
    let program = sealed
        .as_ref()
        .map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
        .unwrap_or_else(|| exe.clone());
    let mut cmd = Command::new(&program);
    cmd.arg0(&exe).env(EXE_ENV, &exe);
    cmd.args(child_flags.to_args())
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(open_log(bundle));
    if let Some(b) = &input.bootstrap
        && std::env::var_os("TTRPC_ADDRESS").is_none()
        && !b.containerd_ttrpc_address.is_empty()
    {
        cmd.env("TTRPC_ADDRESS", &b.containerd_ttrpc_address);
    }
    let fd = listener.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and only makes async-signal-safe
    // system calls (setsid, dup2, fcntl) on integers and prepared C strings.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("re-executing the shim as its server")?;
    // Either options type (containerd's client sends CreateOptions to runtimes not named
    // io.containerd.runc.*); one it cannot read places the shim nowhere special.
    let opts = crate::task::runc_options(input.options.as_ref()).unwrap_or_default();
    if !opts.shim_cgroup.is_empty() {
        join_cgroup(child.id(), &opts.shim_cgroup);
    }
    // The server outlives us: it is not waited for (init, or the daemon's subreaper, reaps it).
    drop(child);
    Ok(())
}

/// The listener `start` passed on fd 3, made close-on-exec so the runtime and containers do not
/// inherit it.
pub(crate) fn inherited_listener() -> anyhow::Result<std::os::unix::net::UnixListener> {
    // SAFETY: fstat on fd 3 writes into a live stat struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fd 3 is only inspected.
    if unsafe { libc::fstat(3, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("no listening socket on fd 3 (run the shim through its `start` action)");
    }
    // SAFETY: fd 3 is a socket passed to us by `start`, owned by nothing else in this process.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    // SAFETY: F_SETFD with FD_CLOEXEC on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()).context("fd 3 close-on-exec");
    }
    let l = std::os::unix::net::UnixListener::from(fd);
    l.set_nonblocking(true).context("fd 3 non-blocking")?;
    Ok(l)
}

/// The environment variable holding the shim binary's path for the server (whose
/// `/proc/self/exe` reads as `/`, being a detached mount).
pub(crate) const EXE_ENV: &str = "BERTH_SHIM_EXE";

/// The shim binary's path: the one the server was started from, else our own.
pub(crate) fn shim_exe() -> Option<PathBuf> {
    std::env::var_os(EXE_ENV)
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::containerd::runtime::bootstrap::v1::Extension;

    #[test]
    fn state_dir_follows_the_daemon_address() {
        assert_eq!(
            state_dir("/run/containerd/containerd.sock"),
            PathBuf::from("/run/containerd")
        );
        assert_eq!(
            state_dir("unix:///run/berth/berthd.sock"),
            PathBuf::from("/run/berth")
        );
        assert_eq!(state_dir(""), PathBuf::from(FALLBACK_STATE));
    }

    #[test]
    fn socket_names_are_stable_and_fit() {
        let f = Flags {
            address: "/a.sock".into(),
            namespace: "default".into(),
            id: "c1".into(),
            ..Default::default()
        };
        let a = socket_path(Path::new("/run/x/s"), &f).unwrap();
        assert_eq!(a, socket_path(Path::new("/run/x/s"), &f).unwrap());
        assert_eq!(a.file_name().unwrap().len(), 64);
        let long = PathBuf::from(format!("/{}", "d".repeat(60)));
        assert_eq!(
            socket_path(&long, &f).unwrap().file_name().unwrap().len(),
            32
        );
        assert!(socket_path(&PathBuf::from(format!("/{}", "d".repeat(90))), &f).is_err());
    }

    #[test]
    fn tells_bootstrap_from_options() {
        let opts = prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: berth_api::containerd::runc::v1::Options {
                binary_name: "crun".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        };
        let i = StartInput::parse(&opts.encode_to_vec());
        assert_eq!(i.options.as_ref(), Some(&opts));
        assert!(i.bootstrap.is_none());

        let bp = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "default".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            extensions: vec![Extension {
                value: Some(opts.clone()),
            }],
            ..Default::default()
        };
        let i = StartInput::parse(&bp.encode_to_vec());
        assert_eq!(i.options, Some(opts));
        assert_eq!(i.bootstrap, Some(bp));
        assert_eq!(StartInput::parse(&[]), StartInput::default());
    }

    #[test]
    fn output_per_daemon_version() {
        let a = "unix:///run/x/s/abc";
        assert_eq!(start_output(a, false, None), a.as_bytes());
        let v: serde_json::Value =
            serde_json::from_slice(&start_output(a, false, Some("2"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": 2, "address": a, "protocol": "ttrpc"})
        );
        let r = BootstrapResult::decode(start_output(a, true, Some("2")).as_slice()).unwrap();
        assert_eq!(
            (r.version, r.address.as_str(), r.protocol.as_str()),
            (3, a, "ttrpc")
        );
    }
}
