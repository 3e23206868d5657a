//! `update`: new cgroup limits for a live container.

use oci_spec::runtime::LinuxResources;

use super::Runtime;
use crate::error::{Result, RuntimeError};
use crate::state::Status;

impl Runtime {
    /// Applies `r` (fields left `None` stay as they are) and records it in the state.
    pub fn update(&self, id: &str, r: &LinuxResources) -> Result<()> {
        super::create::check_resources(r)?;
        let mut st = self.load(id)?;
        if st.status(&self.root) == Status::Stopped {
            return Err(RuntimeError::NotRunning);
        }
        let cg = st.cgroup.as_ref().ok_or(RuntimeError::NotRunning)?.open();
        cg.set(r)?;
        let mut linux = st.config.linux().clone().unwrap_or_default();
        let mut cur = linux.resources().clone().unwrap_or_default();
        if r.memory().is_some() {
            cur.set_memory(*r.memory());
        }
        if r.cpu().is_some() {
            cur.set_cpu(r.cpu().clone());
        }
        if r.pids().is_some() {
            cur.set_pids(*r.pids());
        }
        if r.block_io().is_some() {
            cur.set_block_io(r.block_io().clone());
        }
        linux.set_resources(Some(cur));
        st.config.set_linux(Some(linux));
        st.save(&self.root)
    }
}
