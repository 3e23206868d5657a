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

impl Runtime {
    /// An eventfd that becomes readable on each OOM kill in the container (cgroup v1's
    /// `memory.oom_control` notification); `None` where the host offers no such notification.
    pub fn oom_notifier(&self, id: &str) -> Result<Option<std::os::fd::OwnedFd>> {
        let st = self.load(id)?;
        let Some(crate::cgroups::CgroupPaths::V1 { paths }) = &st.cgroup else {
            return Ok(None);
        };
        let Some(mem) = paths.get("memory") else {
            return Ok(None);
        };
        let ctl = mem.join("memory.oom_control");
        let oom = std::fs::File::open(&ctl).map_err(|e| RuntimeError::path("open", &ctl, e))?;
        let efd = nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
            .map_err(|e| RuntimeError::sys("eventfd", e))?;
        use std::os::fd::AsRawFd;
        let reg = mem.join("cgroup.event_control");
        std::fs::write(&reg, format!("{} {}", efd.as_raw_fd(), oom.as_raw_fd()))
            .map_err(|e| RuntimeError::path("write", &reg, e))?;
        Ok(Some(efd.into()))
    }
}
