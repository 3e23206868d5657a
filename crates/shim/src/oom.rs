//! OOM notifications. cgroup v1: an eventfd registered through `cgroup.event_control` against
//! `memory.oom_control` fires on every OOM in the cgroup (and once more when the cgroup is
//! removed, which ends the watch). cgroup v2: an inotify watch of `memory.events`, whose
//! `oom_kill` count is compared with the last one read (the watch ends with the file).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

use crate::sys;

/// A registered OOM watch, not yet running.
#[derive(Debug)]
pub(crate) struct OomWatch {
    dir: PathBuf,
    event: AsyncFd<OwnedFd>,
    // Kept open for as long as the registration should live (v1).
    _control: Option<std::fs::File>,
}

impl OomWatch {
    /// Registers for OOM events of the memory cgroup at `dir`.
    pub(crate) fn register(dir: &Path) -> std::io::Result<OomWatch> {
        let control = std::fs::File::open(dir.join("memory.oom_control"))?;
        let event = sys::eventfd()?;
        let mut ctl = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.event_control"))?;
        // One write: the kernel parses each write(2) to this file on its own.
        ctl.write_all(format!("{} {}", event.as_raw_fd(), control.as_raw_fd()).as_bytes())?;
        Ok(OomWatch {
            dir: dir.to_path_buf(),
            event: sys::async_fd(event)?,
            _control: Some(control),
        })
    }

    /// Registers for OOM kills in the cgroup v2 directory `dir`.
    pub(crate) fn register_v2(dir: &Path) -> std::io::Result<OomWatch> {
        // SAFETY: inotify_init1 takes flags and returns a new descriptor (or -1).
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let path = sys::cstr(&dir.join("memory.events"))?;
        // SAFETY: a live inotify descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OomWatch {
            dir: dir.to_path_buf(),
            event: sys::async_fd(fd)?,
            _control: None,
        })
    }

    /// Calls `on_oom` for every OOM kill until the cgroup goes away.
    pub(crate) async fn run(self, on_oom: impl Fn()) {
        if self._control.is_some() {
            return self.run_v1(on_oom).await;
        }
        let mut last = berth_runtime::cgroups::oom_kills(&self.dir).unwrap_or(0);
        loop {
            let Ok(mut guard) = self.event.readable().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let r = guard.try_io(|fd| {
                // SAFETY: reads inotify records into a live buffer of its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "reading the memory.events watch");
                return;
            }
            let Some(now) = berth_runtime::cgroups::oom_kills(&self.dir) else {
                return;
            };
            for _ in last..now {
                on_oom();
            }
            last = now;
        }
    }

    /// v1: calls `on_oom` for every OOM until the cgroup goes away.
    async fn run_v1(self, on_oom: impl Fn()) {
        loop {
            let mut guard = match self.event.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "oom eventfd");
                    return;
                }
            };
            let mut count = [0u8; 8];
            let r = guard.try_io(|fd| {
                // SAFETY: reads the 8-byte eventfd counter into a live 8-byte buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match r {
                Ok(Ok(8)) => {}
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the oom eventfd");
                    return;
                }
                Err(_would_block) => continue,
            }
            if !self.dir.join("memory.oom_control").exists() {
                return;
            }
            on_oom();
        }
    }
}
