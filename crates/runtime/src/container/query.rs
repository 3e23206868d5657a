//! `state`, `list`, `ps` and stats.

use super::Runtime;
use crate::cgroups::Stats;
use crate::error::{Result, RuntimeError};
use crate::state::{ContainerState, OciState, Status};

impl Runtime {
    /// runc's `state` JSON.
    pub fn state(&self, id: &str) -> Result<OciState> {
        Ok(self.load(id)?.oci_state(&self.root))
    }

    /// The full kept state (config included).
    pub fn container(&self, id: &str) -> Result<ContainerState> {
        self.load(id)
    }

    /// Every container under the root, sorted by id.
    pub fn list(&self) -> Result<Vec<OciState>> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuntimeError::path("read", &self.root, e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            if let Ok(st) = self.load(&name) {
                out.push(st.oci_state(&self.root));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Pids of the container's processes.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let st = self.load(id)?;
        if st.status(&self.root) == Status::Stopped {
            return Ok(Vec::new());
        }
        let cg = st.cgroup.as_ref().ok_or(RuntimeError::NotRunning)?.open();
        Ok(cg.pids()?)
    }

    /// cgroup statistics.
    pub fn stats(&self, id: &str) -> Result<Stats> {
        let st = self.load(id)?;
        if st.status(&self.root) == Status::Stopped {
            return Err(RuntimeError::NotRunning);
        }
        let cg = st.cgroup.as_ref().ok_or(RuntimeError::NotRunning)?.open();
        Ok(cg.stats()?)
    }
}

/// Tells of a container's OOM kills: cgroup v1's `memory.oom_control` eventfd, or on cgroup v2
/// an inotify watch of `memory.events`, whose `oom_kill` count is compared with the last one.
#[derive(Debug)]
pub struct OomWatch {
    fd: std::os::fd::OwnedFd,
    /// v2: the cgroup directory and the `oom_kill` count seen last.
    events: Option<(std::path::PathBuf, u64)>,
}

impl OomWatch {
    /// The descriptor to poll for readability.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// After the descriptor was readable: takes what it had and answers how many OOM kills
    /// happened since the last call.
    pub fn kills(&mut self) -> u64 {
        let mut buf = [0u8; 4096];
        let _ = nix::unistd::read(&self.fd, &mut buf);
        match &mut self.events {
            None => 1,
            Some((dir, last)) => {
                let now = crate::cgroups::oom_kills(dir).unwrap_or(0);
                let new = now.saturating_sub(*last);
                *last = now;
                new
            }
        }
    }
}

impl Runtime {
    /// A watch of the container's OOM kills; `None` where its cgroup offers none.
    pub fn oom_watch(&self, id: &str) -> Result<Option<OomWatch>> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let st = self.load(id)?;
        match &st.cgroup {
            Some(crate::cgroups::CgroupPaths::V2 { path }) => {
                let events = path.join("memory.events");
                // SAFETY: inotify_init1 takes flags and returns a new descriptor (or -1).
                let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
                if fd < 0 {
                    return Err(RuntimeError::sys(
                        "inotify",
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: a new descriptor nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let c = crate::sys::cstr(&events)
                    .map_err(|e| RuntimeError::path("watch", &events, e))?;
                // SAFETY: a live inotify descriptor and a NUL-terminated path.
                let wd =
                    unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) };
                if wd < 0 {
                    let e = std::io::Error::last_os_error();
                    return Err(RuntimeError::path("watch", &events, e));
                }
                let last = crate::cgroups::oom_kills(path).unwrap_or(0);
                Ok(Some(OomWatch {
                    fd,
                    events: Some((path.clone(), last)),
                }))
            }
            Some(crate::cgroups::CgroupPaths::V1 { paths }) => {
                let Some(mem) = paths.get("memory") else {
                    return Ok(None);
                };
                let ctl = mem.join("memory.oom_control");
                let oom =
                    std::fs::File::open(&ctl).map_err(|e| RuntimeError::path("open", &ctl, e))?;
                let efd = nix::sys::eventfd::EventFd::from_flags(
                    nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
                )
                .map_err(|e| RuntimeError::sys("eventfd", e))?;
                let reg = mem.join("cgroup.event_control");
                std::fs::write(&reg, format!("{} {}", efd.as_raw_fd(), oom.as_raw_fd()))
                    .map_err(|e| RuntimeError::path("write", &reg, e))?;
                Ok(Some(OomWatch {
                    fd: efd.into(),
                    events: None,
                }))
            }
            None => Ok(None),
        }
    }
}
