//! Delete: forget an exited exec, or tear the container down (runtime state, rootfs mount).

use std::time::{Duration, SystemTime};

use berth_api::containerd::events::TaskDelete;
use berth_api::containerd::v1::types::Status as TaskStatus;

use super::{Shim, lock};
use crate::error::ShimError;
use crate::mount;
use crate::reaper::Exit;

/// How long a created (never started) init may take to die after the runtime deleted it.
const CREATED_EXIT_WAIT: Duration = Duration::from_secs(10);

fn running() -> ShimError {
    ShimError::FailedPrecondition("cannot delete a running process".into())
}

impl Shim {
    /// Returns the process's pid and exit.
    pub(crate) async fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, Exit), ShimError> {
        let c = self.container(id)?;
        let p = c.process(exec_id)?;
        if !exec_id.is_empty() {
            let status = p.status();
            if status == TaskStatus::Running || status == TaskStatus::Paused {
                return Err(running());
            }
            p.finish_output().await;
            lock(&c.execs).remove(exec_id);
            let exit = p.exit().unwrap_or(Exit {
                status: 0,
                at: SystemTime::UNIX_EPOCH,
            });
            return Ok((p.pid(), exit));
        }
        match p.status() {
            TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => return Err(running()),
            TaskStatus::Created => {
                // The init waits in the runtime for a start that will not come: the runtime
                // kills it; its exit comes through the reaper like any other.
                c.runc.delete(id, true).await?;
                if tokio::time::timeout(CREATED_EXIT_WAIT, p.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(container = %id, "created init did not exit after delete");
                }
            }
            _ => {
                if let Err(e) = c.runc.delete(id, false).await {
                    let m = e.message();
                    if !m.contains("does not exist") && !m.contains("not exist") {
                        return Err(e.into());
                    }
                }
            }
        }
        p.finish_output().await;
        if c.rootfs_mounted {
            mount::unmount_all(&c.bundle.join("rootfs"));
        }
        lock(&self.containers).remove(id);
        let exit = p.exit().unwrap_or(Exit {
            status: 255,
            at: SystemTime::now(),
        });
        let pid = p.pid();
        self.publisher.publish(
            "/tasks/delete",
            &TaskDelete {
                container_id: id.to_string(),
                pid,
                exit_status: exit.status,
                exited_at: Some(crate::sys::timestamp(exit.at)),
                id: String::new(),
            },
        );
        tracing::info!(container = %id, "deleted");
        Ok((pid, exit))
    }
}
