//! The container's terminal: a pty made inside the container's devpts, its master sent over the
//! console socket (one SCM_RIGHTS fd, as runc does), its slave made the controlling terminal.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use crate::error::{Result, RuntimeError};

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// A new pty pair from /dev/ptmx of the current root; returns (master, slave, slave path).
pub(crate) fn open_pty() -> Result<(OwnedFd, OwnedFd, PathBuf)> {
    let master = nix::fcntl::open(
        "/dev/ptmx",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| RuntimeError::sys("open /dev/ptmx", e))?;
    let mut unlock: libc::c_int = 0;
    let mut n: libc::c_uint = 0;
    // SAFETY: the pointers are to live locals of the types the ioctls expect.
    unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) < 0
            || libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) < 0
        {
            return Err(RuntimeError::sys(
                "pty ioctl",
                std::io::Error::last_os_error(),
            ));
        }
    }
    // SAFETY: TIOCGPTPEER returns a new fd for the slave side.
    let sfd = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if sfd < 0 {
        return Err(RuntimeError::sys(
            "open pty slave",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh fd from the kernel.
    let slave = unsafe { OwnedFd::from_raw_fd(sfd) };
    Ok((master, slave, PathBuf::from(format!("/dev/pts/{n}"))))
}

/// Sets the window size, if the spec gives one.
pub(crate) fn set_size(fd: &OwnedFd, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: ws is a valid winsize.
    unsafe { tiocswinsz(fd.as_raw_fd(), &ws) }
        .map_err(|e| RuntimeError::sys("set console size", e))?;
    Ok(())
}

/// Makes `slave` stdin/stdout/stderr and the controlling terminal of a new session.
pub(crate) fn become_tty(slave: &OwnedFd) -> Result<()> {
    nix::unistd::setsid().map_err(|e| RuntimeError::sys("setsid", e))?;
    // SAFETY: TIOCSCTTY takes an int; fd is our slave.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(RuntimeError::sys(
            "set controlling tty",
            std::io::Error::last_os_error(),
        ));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard fds.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(RuntimeError::sys(
                "dup2 tty",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}
