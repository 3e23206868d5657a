//! Process file descriptors: a handle on one process that a freed and reused PID can never
//! redirect to another.
//!
//! A PID read from a file, a socket peer or `/proc` names whichever process holds that number
//! when it is used; a signal sent seconds later may reach a stranger. A pidfd opened from the
//! PID refers to the process that held it at that moment, for good: once that process is gone
//! its signals fail with `ESRCH`. So the safe way to signal a process found by some property
//! is: pin it ([`Pidfd::open`]), check the property, signal through the pidfd ([`signal_if`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pinned process (`pidfd_open(2)`, Linux 5.3).
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// Pins the process that holds `pid` now.
    pub fn open(pid: i32) -> io::Result<Pidfd> {
        if pid <= 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just returned to us, owned by nobody else.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sends `sig` to the pinned process; `ESRCH` once it has exited.
    pub fn send_signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: a pidfd we own, no siginfo (the kernel fills one as for kill(2)), no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit (a zombie counts as exited); true if it has.
    pub fn wait_exit(&self, timeout: std::time::Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, ms) > 0 }
    }
}

impl AsRawFd for Pidfd {
    /// The descriptor, readable (for poll and epoll) once the process has exited.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Sends `sig` to the process holding `pid` only if `is_ours(pid)` holds once it is pinned: the
/// check reads `/proc/<pid>` of the pinned process (or of a successor that passes it too, in
/// which case the pinned one is gone and nothing is sent). True when the signal was sent.
pub fn signal_if(pid: i32, sig: i32, is_ours: impl FnOnce(i32) -> bool) -> bool {
    let Ok(fd) = Pidfd::open(pid) else {
        return false;
    };
    is_ours(pid) && fd.send_signal(sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn signals_reach_the_pinned_process_and_no_other() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id() as i32;
        let fd = Pidfd::open(pid).expect("pidfd");
        assert!(!fd.wait_exit(Duration::ZERO));
        assert!(!signal_if(pid, libc::SIGKILL, |_| false), "check refused");
        assert!(!fd.wait_exit(Duration::from_millis(50)), "still running");
        assert!(signal_if(pid, libc::SIGKILL, |p| p == pid));
        assert!(fd.wait_exit(Duration::from_secs(5)));
        let st = child.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL)
        );
        // Reaped: the pidfd no longer reaches anything, whoever holds the number now.
        let e = fd.send_signal(libc::SIGKILL).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
        assert!(Pidfd::open(0).is_err() && Pidfd::open(-1).is_err());
    }
}
