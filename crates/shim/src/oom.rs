//! OOM notifications from a cgroup v1 memory controller: an eventfd registered through
//! `cgroup.event_control` against `memory.oom_control` fires on every OOM in the cgroup (and once
//! more when the cgroup is removed, which ends the watch).

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
    // Kept open for as long as the registration should live.
    _control: std::fs::File,
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
            _control: control,
        })
    }

    /// Calls `on_oom` for every OOM until the cgroup goes away.
    pub(crate) async fn run(self, on_oom: impl Fn()) {
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
