//! Reaping: the shim is a child subreaper, so both the runtime commands it runs and the container
//! processes that get re-parented to it end up as its children. One task collects every exit with
//! `waitpid(-1)` on SIGCHLD and hands each status to whoever subscribed to that pid; exits nobody
//! asked for yet (a container process can exit before its pid file is read) are kept until asked.
//!
//! Nothing else may wait for children (so no `tokio::process`, no `Child::wait`).

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub(crate) status: u32,
    pub(crate) at: SystemTime,
}

/// Unclaimed exits kept at most (orphans nobody will ask about are dropped, oldest first).
const MAX_UNCLAIMED: usize = 1024;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, Exit>,
}

/// Distributes child exits.
#[derive(Default)]
pub(crate) struct Reaper {
    // std Mutex: held only to insert/remove in the maps, never across an await. Spawning and
    // registering under the same lock means an exit can never be reaped between the two.
    state: Mutex<State>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

fn decode(status: libc::c_int) -> Option<u32> {
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status) as u32)
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status) as u32)
    } else {
        None
    }
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `cmd` and subscribes to its exit.
    pub(crate) fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut st = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        st.waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Subscribes to the exit of `pid`, which is already our child (or re-parented to us). If it
    /// has already been reaped, the receiver is ready at once.
    pub(crate) fn subscribe(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let mut st = self.lock();
        let (tx, rx) = oneshot::channel();
        if let Some(exit) = st.unclaimed.remove(&pid) {
            let _ = tx.send(exit);
        } else {
            st.waiters.insert(pid, tx);
        }
        rx
    }

    /// Collects every exited child and dispatches the statuses.
    pub(crate) fn reap(&self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid writes the status into a live integer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let Some(code) = decode(status) else { continue };
            let exit = Exit {
                status: code,
                at: SystemTime::now(),
            };
            let mut st = self.lock();
            match st.waiters.remove(&pid) {
                Some(tx) => {
                    if tx.send(exit).is_err() {
                        tracing::debug!(pid, "exit of a process nobody waits for any more");
                    }
                }
                None => {
                    if st.unclaimed.len() >= MAX_UNCLAIMED
                        && let Some(oldest) = st
                            .unclaimed
                            .iter()
                            .min_by_key(|(_, e)| e.at)
                            .map(|(p, _)| *p)
                    {
                        st.unclaimed.remove(&oldest);
                    }
                    st.unclaimed.insert(pid, exit);
                }
            }
        }
    }

    /// Reaps on every SIGCHLD, forever. `sig` is the SIGCHLD stream, created before anything was
    /// spawned; one reap runs first, so no exit that happened earlier is missed.
    pub(crate) async fn run(self: std::sync::Arc<Self>, mut sig: tokio::signal::unix::Signal) {
        loop {
            self.reap();
            if sig.recv().await.is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(decode(3 << 8), Some(3));
        assert_eq!(decode(9), Some(137));
        assert_eq!(decode(0x7f), None); // stopped
    }
}
