//! `pause` and `resume`: the freezer.

use super::{Runtime, bad_state};
use crate::cgroups::FreezerState;
use crate::error::{Result, RuntimeError};
use crate::state::Status;

impl Runtime {
    /// Freezes a running container's processes.
    pub fn pause(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        match st.status(&self.root) {
            Status::Running | Status::Created => {}
            Status::Stopped => return Err(RuntimeError::NotRunning),
            s => return Err(bad_state("pause", id, s)),
        }
        let cg = st.cgroup.as_ref().ok_or(RuntimeError::NotRunning)?.open();
        Ok(cg.freeze(FreezerState::Frozen)?)
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        match st.status(&self.root) {
            Status::Paused => {}
            Status::Stopped => return Err(RuntimeError::NotRunning),
            s => {
                return Err(RuntimeError::Init(format!(
                    "container {id} is not paused: {s}"
                )));
            }
        }
        let cg = st.cgroup.as_ref().ok_or(RuntimeError::NotRunning)?.open();
        Ok(cg.freeze(FreezerState::Thawed)?)
    }
}
