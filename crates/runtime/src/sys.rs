//! Thin wrappers over the syscalls nix does not cover (or covers awkwardly): clone without a
//! new stack, openat2, capset, close_range, and the parent/child sync socket.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use crate::error::{Result, RuntimeError};

/// In a new child: makes `fds` (descriptors ≥ 3) its stdin, stdout and stderr; exits the child
/// (status 127) if that fails. `None` keeps what it has.
pub(crate) fn child_stdio(fds: Option<[libc::c_int; 3]>) {
    let Some(fds) = fds else { return };
    for (target, fd) in (0..).zip(fds) {
        // SAFETY: dup2 on descriptors the caller handed us.
        if unsafe { libc::dup2(fd, target) } < 0 {
            // SAFETY: ends only this child, without running the parent's exit handlers.
            unsafe { libc::_exit(127) };
        }
    }
}

/// `clone(2)` with fork semantics (no new stack) plus namespace flags. Returns 0 in the child.
///
/// # Safety
/// The caller must be single-threaded, as for `fork`.
pub(crate) unsafe fn clone_fork(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: with a null stack the child runs on a copy-on-write copy of our stack, exactly
    // like fork(2); the caller guarantees no other thread holds locks we would inherit.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as libc::pid_t)
    }
}

/// `clone3(2)` with fork semantics, namespace `flags`, and the child born in the cgroup2
/// directory `cgroup` (`CLONE_INTO_CGROUP`, Linux 5.7+). Returns 0 in the child.
///
/// # Safety
/// As [`clone_fork`].
pub(crate) unsafe fn clone_fork_into(flags: libc::c_int, cgroup: RawFd) -> io::Result<libc::pid_t> {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: u64::from(flags as u32) | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup as u64,
    };
    // SAFETY: a null stack means fork semantics, as in clone_fork; args outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as libc::pid_t)
    }
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub(crate) const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub(crate) const RESOLVE_IN_ROOT: u64 = 0x10;

pub(crate) fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// `openat2(2)`: `flags` are O_* flags, `resolve` RESOLVE_* flags.
pub(crate) fn openat2(dirfd: RawFd, path: &Path, flags: i32, resolve: u64) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: c and how outlive the call; the kernel reads exactly size_of::<OpenHow>() bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The magic-link path of an fd, usable as a mount source or target.
pub(crate) fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Marks every fd from `first` up as close-on-exec.
pub(crate) fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range only changes fd flags.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `capset(2)` for the calling thread, with 64-bit masks.
pub(crate) fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let hdr = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and two data structs are live for the call, as capset v3 expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const CapHeader, data.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `prctl` with integer arguments.
pub(crate) fn prctl(op: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: every prctl we issue takes integer arguments only.
    let rc = unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// The parent/child channel: a SOCK_SEQPACKET pair, one message per step.
#[derive(Debug)]
pub(crate) struct SyncSocket(pub(crate) OwnedFd);

/// Messages on the sync socket.
pub(crate) mod msg {
    /// Parent → child: ids mapped and cgroup joined, go on.
    pub(crate) const GO: &[u8] = b"go";
    /// Parent → child: you are in your cgroup now (cgroup namespace may be made).
    pub(crate) const JOINED: &[u8] = b"joined";
    /// Child → parent: mounts done, run prestart/createRuntime hooks.
    pub(crate) const HOOKS: &[u8] = b"hooks";
    /// Parent → child: hooks done.
    pub(crate) const HOOKS_DONE: &[u8] = b"hooks-done";
    /// Child → parent: all set up, now waiting on the exec fifo (or about to execve for exec).
    pub(crate) const READY: &[u8] = b"ready";
    /// Child → parent: prefix of an error message.
    pub(crate) const ERR: u8 = b'E';
}

impl SyncSocket {
    pub(crate) fn pair() -> Result<(SyncSocket, SyncSocket)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| RuntimeError::sys("socketpair", e))?;
        Ok((SyncSocket(a), SyncSocket(b)))
    }

    pub(crate) fn send(&self, m: &[u8]) -> io::Result<()> {
        nix::sys::socket::send(self.0.as_raw_fd(), m, MsgFlags::MSG_NOSIGNAL)
            .map(drop)
            .map_err(io::Error::from)
    }

    /// Receives one message; an empty one means the peer is gone.
    pub(crate) fn recv(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 8192];
        loop {
            match nix::sys::socket::recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for `want`; an error message from the child becomes `RuntimeError::Init`.
    pub(crate) fn expect(&self, want: &[u8]) -> Result<()> {
        let m = self
            .recv()
            .map_err(|e| RuntimeError::sys("read from container init", e))?;
        if m == want {
            return Ok(());
        }
        if m.first() == Some(&msg::ERR) {
            return Err(RuntimeError::Init(String::from_utf8_lossy(&m[1..]).into()));
        }
        if m.is_empty() {
            return Err(RuntimeError::Init(
                "the process exited before it was set up".into(),
            ));
        }
        Err(RuntimeError::Init(format!(
            "unexpected message {:?}",
            String::from_utf8_lossy(&m)
        )))
    }
}

/// Sends one fd (and a payload) over a unix socket with SCM_RIGHTS.
pub(crate) fn send_fd(sock: impl AsFd, payload: &[u8], fd: RawFd) -> io::Result<()> {
    let iov = [io::IoSlice::new(payload)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(drop)
    .map_err(io::Error::from)
}

/// Receives one fd sent with SCM_RIGHTS (for tests and the console-socket side of `run`).
pub fn recv_fd(sock: impl AsFd) -> io::Result<(Vec<u8>, OwnedFd)> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut got = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel installed these fds in our table for us.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                got.get_or_insert(owned);
            }
        }
    }
    let n = msg.bytes;
    buf.truncate(n);
    let fd = got.ok_or_else(|| io::Error::other("no fd in message"))?;
    Ok((buf, fd))
}
