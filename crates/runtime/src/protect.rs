//! Protection of the runtime binary from the container (runc CVE-2019-5736).
//!
//! The new process is a fork of this binary, so until its execve `/proc/<pid>/exe` is our
//! binary; a container can also make us execute `/proc/self/exe` (a `#!/proc/self/exe`
//! entrypoint). Either way a container process can get hold of the binary through the magic
//! link and, once it stops running, open it for writing. The fix used here: before any
//! container process is made, the CLI moves itself into a private mount namespace, bind-mounts
//! its own binary read-only over itself there, and re-executes through that path. From then on
//! the exe link of this process and of every child points into a read-only mount, so an open
//! for writing fails with EROFS, and nothing is copied: the cost is one unshare, two mounts and
//! one execve per `create`/`run`/`exec`, and nothing is left on the host (the namespace dies
//! with its processes). A binary that already lives on a read-only mount skips all of it.
//!
//! Why not runc's sealed-memfd copy: it copies the whole binary on every start (runc later
//! cached it for this reason), and a copy created once would need a process to hold it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use nix::mount::{MsFlags, mount};
use nix::sys::statvfs::{FsFlags, statvfs};

use crate::error::{Result, RuntimeError, SysContext};

const MARK: &str = "_BERTH_RUNC_PROTECTED";

/// True if our executable sits on a read-only mount.
pub fn self_exe_is_readonly() -> bool {
    statvfs("/proc/self/exe").is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY))
}

/// Makes sure this process runs from a read-only view of its binary, re-executing itself
/// (same argv, same environment plus a marker) if needed. Must be called while single-threaded,
/// before any other work; returns only when the binary is protected.
pub fn protect_self_exe() -> Result<()> {
    if self_exe_is_readonly() {
        // SAFETY: single-threaded (documented precondition); removes our own marker.
        unsafe { std::env::remove_var(MARK) };
        return Ok(());
    }
    if std::env::var_os(MARK).is_some() {
        return Err(RuntimeError::Init(
            "re-executed but the runtime binary is still writable".into(),
        ));
    }
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| RuntimeError::path("readlink", "/proc/self/exe", e))?;
    if exe.as_os_str().as_bytes().ends_with(b" (deleted)") {
        return Err(RuntimeError::Init(format!(
            "the runtime binary {} was deleted; cannot protect it",
            exe.display()
        )));
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).sys("unshare mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .sys("make / rslave")?;
    mount(
        Some(&exe),
        &exe,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .sys(format!("bind {}", exe.display()))?;
    mount(
        None::<&str>,
        &exe,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .sys(format!("remount {} read-only", exe.display()))?;
    let path = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Init("exe path holds NUL".into()))?;
    let argv: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    envp.push(CString::new(format!("{MARK}=1")).unwrap_or_default());
    let e = nix::unistd::execve(&path, &argv, &envp);
    Err(RuntimeError::sys(
        format!("re-exec {}", exe.display()),
        e.err().unwrap_or(nix::errno::Errno::EINVAL),
    ))
}
