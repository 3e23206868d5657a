//! Protection of the runtime binary from the container (runc CVE-2019-5736).
//!
//! The new process is a fork of this binary, so until its execve `/proc/<pid>/exe` is our
//! binary; a container can also make us execute `/proc/self/exe` (a `#!/proc/self/exe`
//! entrypoint). Either way a container process can get hold of the binary through the magic
//! link and, once it stops running, open it for writing. The fix used here: before any
//! container process is made, the CLI clones a detached, read-only bind mount of its own binary
//! (open_tree + mount_setattr, attached to no mount namespace) and re-executes from it
//! (execveat). From then on the exe link of this process and of every child points into a
//! read-only mount, so an open for writing fails with EROFS, and nothing is copied: the cost is
//! three syscalls and one execve per `create`/`run`/`exec`, no mount namespace or propagation
//! is changed (a container's bidirectional volumes need the host's shared propagation), and
//! nothing is left on the host (the detached mount goes with the last process holding it). A
//! binary that already lives on a read-only mount skips all of it.
//!
//! Why not runc's sealed-memfd copy: it copies the whole binary on every start (runc later
//! cached it for this reason), and a copy created once would need a process to hold it.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::statvfs::{FsFlags, statvfs};

use crate::error::{Result, RuntimeError};

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
    let fd = readonly_clone(&exe)?;
    let empty = c"";
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
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envpp: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envpp.push(std::ptr::null());
    // SAFETY: execveat with AT_EMPTY_PATH runs the file `fd` refers to; argv and envp are
    // NULL-terminated arrays of NUL-terminated strings that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            empty.as_ptr(),
            argp.as_ptr(),
            envpp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(RuntimeError::sys(
        format!("re-exec {}", exe.display()),
        nix::errno::Errno::last(),
    ))
}

/// A detached, read-only bind mount of the file `path` (open_tree + mount_setattr), as an
/// `O_PATH` descriptor (close-on-exec). It is attached to no mount namespace, so no mount
/// propagation is involved (a container's bidirectional volumes need the host's shared
/// propagation left alone), and it goes away with the last descriptor or process using it.
/// Executing it (execveat, or `/proc/self/fd/N`) runs the file from a mount nobody can write
/// through; `/proc/<pid>/exe` then reads as `/`.
pub fn readonly_clone(path: &std::path::Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Init("exe path holds NUL".into()))?;
    // SAFETY: open_tree reads a NUL-terminated path and returns a new descriptor (or -1).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(RuntimeError::sys(
            format!("open_tree {}", path.display()),
            nix::errno::Errno::last(),
        ));
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    // A lone file's mount has nothing below it: "recursive" is just this mount.
    berth_mount::set_recursive(fd.as_fd(), libc::MOUNT_ATTR_RDONLY, 0)
        .map_err(|e| RuntimeError::sys(format!("mount_setattr read-only {}", path.display()), e))?;
    Ok(fd)
}
