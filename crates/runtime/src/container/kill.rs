//! `kill`: signal the init, or every process of the container.

use nix::sys::signal::Signal;

use super::Runtime;
use crate::cgroups::FreezerState;
use crate::error::{Result, RuntimeError};
use crate::state::Status;

impl Runtime {
    /// Sends `sig` (a raw number: real-time signals have no `Signal`) to the init, or with `all`
    /// to every process in the container's cgroup.
    pub fn kill(&self, id: &str, sig: i32, all: bool) -> Result<()> {
        let st = self.load(id)?;
        let status = st.status(&self.root);
        if status == Status::Stopped && !all {
            return Err(RuntimeError::NotRunning);
        }
        if all {
            let Some(cg) = st.cgroup.as_ref().map(|c| c.open()) else {
                return Err(RuntimeError::NotRunning);
            };
            let pids = cg.pids()?;
            if pids.is_empty() && status == Status::Stopped {
                return Err(RuntimeError::NotRunning);
            }
            for pid in pids {
                // SAFETY: kill has no memory effects; the pids are in our container's cgroup.
                unsafe { libc::kill(pid, sig) };
            }
            if sig == Signal::SIGKILL as i32 && status == Status::Paused {
                // A frozen process only dies once thawed.
                cg.freeze(FreezerState::Thawed)?;
            }
            return Ok(());
        }
        // SAFETY: as above; st.init_alive() was checked through status.
        if unsafe { libc::kill(st.pid, sig) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Err(RuntimeError::NotRunning);
            }
            return Err(RuntimeError::sys("kill", e));
        }
        Ok(())
    }
}

/// Parses a signal given by number or by name (with or without "SIG").
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(RuntimeError::Spec(format!("invalid signal {s:?}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    if let Some(rt) = name.strip_prefix("SIGRTMIN") {
        let base = libc::SIGRTMIN();
        let off: i32 = if rt.is_empty() {
            0
        } else {
            rt.trim_start_matches('+')
                .parse()
                .map_err(|_| RuntimeError::Spec(format!("invalid signal {s:?}")))?
        };
        return Ok(base + off);
    }
    name.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| RuntimeError::Spec(format!("invalid signal {s:?}")))
}
