//! `delete`: remove a stopped (or, forced, any) container: cgroup, poststop hooks, state.

use super::{Runtime, bad_state, wait_gone};
use crate::cgroups::FreezerState;
use crate::error::{Result, RuntimeError};
use crate::state::Status;

impl Runtime {
    /// Deletes a stopped (or, with `force`, any: killed first) container's state and cgroup.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let st = match self.load(id) {
            Ok(st) => st,
            Err(RuntimeError::NotExist) if force => {
                crate::state::validate_id(id)?;
                let _ = std::fs::remove_dir_all(self.dir(id));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let status = st.status(&self.root);
        match status {
            Status::Stopped => {}
            Status::Created => {
                // SAFETY: kill has no memory effects; the pid is our container's init.
                unsafe { libc::kill(st.pid, libc::SIGKILL) };
            }
            Status::Running | Status::Paused | Status::Creating => {
                if !force {
                    return Err(RuntimeError::Init(format!(
                        "cannot delete container {id} that is not stopped: {status}"
                    )));
                }
                if let Some(cg) = st.cgroup.as_ref().map(|c| c.open()) {
                    for pid in cg.pids().unwrap_or_default() {
                        // SAFETY: as above.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    if status == Status::Paused {
                        cg.freeze(FreezerState::Thawed)?;
                    }
                }
                // SAFETY: as above.
                unsafe { libc::kill(st.pid, libc::SIGKILL) };
            }
        }
        if !wait_gone(&st, 10_000) {
            return Err(bad_state("delete", id, status));
        }
        if let Some(cg) = st.cgroup.as_ref().map(|c| c.open()) {
            cg.destroy()?;
        }
        if !has_mount_namespace(&st.config) {
            // Its mounts were made in our mount namespace, on a bind of the rootfs onto itself:
            // detaching that bind takes them all (runc leaves them behind).
            let _ = nix::mount::umount2(&st.rootfs, nix::mount::MntFlags::MNT_DETACH);
        }
        let poststop = st
            .config
            .hooks()
            .as_ref()
            .and_then(|h| h.poststop().as_ref());
        // Poststop failures are logged, not fatal (runtime spec).
        if let Err(e) = crate::hooks::run_all(poststop, &st.hook_state(Status::Stopped)) {
            eprintln!("warning: poststop hook: {e}");
        }
        std::fs::remove_dir_all(self.dir(id))
            .map_err(|e| RuntimeError::path("remove", self.dir(id), e))
    }
}

/// Whether a container has a mount namespace of its own (new or joined).
fn has_mount_namespace(spec: &oci_spec::runtime::Spec) -> bool {
    let list = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    let mut types = list.into_iter().flatten().map(|n| n.typ());
    types.any(|t| t == oci_spec::runtime::LinuxNamespaceType::Mount)
}
