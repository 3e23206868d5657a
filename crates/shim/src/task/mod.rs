//! The shim's tasks: containers (an init process and its execs), their state machines, and the
//! exit path (reap → drain output → record → publish). One file per verb beside this one.

mod create;
mod delete;
mod exec;
mod kill;
mod lifecycle;
mod query;

pub(crate) use create::runc_options;

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use berth_api::containerd::events::TaskExit;
use berth_api::containerd::v1::types::Status as TaskStatus;
use tokio::sync::{oneshot, watch};

use crate::error::ShimError;
use crate::events::Publisher;
use crate::reaper::{Exit, Reaper};
use crate::runc::Runc;
use crate::stats::Cgroups;
use crate::stdio::{self, ProcessIo, StdioPaths};

/// How long a process's output may stay open after it exited before its exit is published anyway.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
struct ProcState {
    pid: u32,
    status: TaskStatus,
    exit: Option<Exit>,
}

/// The init process or an exec.
#[derive(Debug)]
pub(crate) struct Process {
    /// Empty for the init process.
    pub(crate) exec_id: String,
    pub(crate) stdio: StdioPaths,
    /// An exec's OCI process JSON.
    spec: Vec<u8>,
    // std Mutex: state and io are read and written in short sections, never across an await.
    state: Mutex<ProcState>,
    io: Mutex<ProcessIo>,
    exit_tx: watch::Sender<Option<Exit>>,
    /// Held by Start while it runs the process and publishes the start, and taken by the exit path
    /// before it publishes the exit: a process that dies at once is still reported started first.
    lifecycle: tokio::sync::Mutex<()>,
}

impl Process {
    /// Waits (bounded) for output copies that outlived the exit's grace period: the client
    /// reads to EOF, which comes only once they end (or the shim exits).
    pub(crate) async fn finish_output(&self) {
        let left = lock(&self.io).take_copies();
        if !left.is_empty() {
            let _ = stdio::drain(left, DRAIN_GRACE).await;
        }
    }

    /// Opens its CRI log file again (ReopenContainerLog).
    pub(crate) fn reopen_log(&self) -> std::io::Result<()> {
        lock(&self.io).reopen_log()
    }

    fn new(exec_id: String, stdio: StdioPaths, spec: Vec<u8>) -> Process {
        Process {
            exec_id,
            stdio,
            spec,
            state: Mutex::new(ProcState {
                pid: 0,
                status: TaskStatus::Created,
                exit: None,
            }),
            io: Mutex::new(ProcessIo::default()),
            exit_tx: watch::channel(None).0,
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        lock(&self.state).pid
    }

    pub(crate) fn status(&self) -> TaskStatus {
        lock(&self.state).status
    }

    pub(crate) fn exit(&self) -> Option<Exit> {
        lock(&self.state).exit
    }

    fn set_status(&self, s: TaskStatus) {
        lock(&self.state).status = s;
    }

    fn set_exited(&self, exit: Exit) {
        {
            let mut st = lock(&self.state);
            st.status = TaskStatus::Stopped;
            st.exit = Some(exit);
        }
        self.exit_tx.send_replace(Some(exit));
    }

    /// Waits for the exit (recorded, output drained).
    pub(crate) async fn wait(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(e) => e.unwrap_or(Exit {
                status: 255,
                at: SystemTime::now(),
            }),
            // The sender lives as long as the process; this is only reached on teardown.
            Err(_) => Exit {
                status: 255,
                at: SystemTime::now(),
            },
        }
    }

    pub(crate) fn close_stdin(&self) {
        lock(&self.io).close_stdin();
    }

    pub(crate) fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        lock(&self.io).resize(width, height)
    }
}

/// A container: its bundle, runtime, init process and execs.
#[derive(Debug)]
pub(crate) struct Container {
    pub(crate) id: String,
    pub(crate) bundle: PathBuf,
    pub(crate) runc: Runc,
    pub(crate) init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    rootfs_mounted: bool,
    cgroups: Option<Cgroups>,
    io_uid: u32,
    io_gid: u32,
    exec_seq: AtomicU64,
    /// No PID namespace of its own (the host's, or one it joins): when its init ends, the rest
    /// of its processes are killed, as containerd's Go shim does (`ShouldKillAllOnExit`).
    kill_all_on_exit: bool,
}

/// Whether a bundle's container lacks a new PID namespace of its own (see
/// [`Container::kill_all_on_exit`]); an unreadable spec counts as lacking one, as in the Go shim.
pub(crate) fn kill_all_on_exit(bundle: &std::path::Path) -> bool {
    let Ok(spec) = std::fs::read(bundle.join("config.json")) else {
        return true;
    };
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&spec) else {
        return true;
    };
    let own = spec["linux"]["namespaces"].as_array().is_some_and(|nss| {
        nss.iter()
            .any(|n| n["type"] == "pid" && n["path"].as_str().is_none_or(str::is_empty))
    });
    !own
}

impl Container {
    /// The init process (`exec_id` empty) or an exec.
    pub(crate) fn process(&self, exec_id: &str) -> Result<Arc<Process>, ShimError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("process {exec_id} does not exist")))
    }

    fn has_running_execs(&self) -> bool {
        lock(&self.execs)
            .values()
            .any(|p| matches!(p.status(), TaskStatus::Running | TaskStatus::Paused))
    }

    fn exec_by_pid(&self, pid: u32) -> Option<String> {
        lock(&self.execs)
            .values()
            .find(|p| p.pid() == pid && pid != 0)
            .map(|p| p.exec_id.clone())
    }
}

/// What the shim process holds: its containers and the plumbing they share.
#[derive(Debug)]
pub(crate) struct Shim {
    /// The containerd namespace of its tasks (a warm shim's is set when it is adopted).
    namespace: Mutex<String>,
    /// A warm shim not adopted yet (see [`Shim::adopt`]).
    warm: std::sync::atomic::AtomicBool,
    /// Runtime state root when the runc options give none (`<root>/<namespace>` is used).
    pub(crate) default_root: PathBuf,
    pub(crate) publisher: Publisher,
    pub(crate) reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    shutdown: watch::Sender<bool>,
    /// The socket this shim serves on, as bound: (path, device, inode).
    socket: Mutex<Option<(PathBuf, u64, u64)>>,
}

impl Shim {
    pub(crate) fn new(
        namespace: String,
        default_root: PathBuf,
        publisher: Publisher,
        reaper: Arc<Reaper>,
    ) -> Arc<Shim> {
        Arc::new(Shim {
            namespace: Mutex::new(namespace),
            warm: std::sync::atomic::AtomicBool::new(false),
            default_root,
            publisher,
            reaper,
            containers: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            socket: Mutex::new(None),
        })
    }

    pub(crate) fn namespace(&self) -> String {
        lock(&self.namespace).clone()
    }

    /// Marks this shim warm: started ahead of need, its task's identity still to come.
    pub(crate) fn set_warm(&self) {
        self.warm.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A warm shim that no task has adopted yet.
    pub(crate) fn is_warm(&self) -> bool {
        self.warm.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A warm shim becomes the shim of the task its first Create makes: the task's namespace
    /// (from the request's metadata), its bundle as working directory, and the bundle's `log`
    /// FIFO as standard error, as if `start` had been run for it.
    pub(crate) fn adopt(&self, namespace: Option<&str>, bundle: &str) -> Result<(), ShimError> {
        if !self.warm.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
            *lock(&self.namespace) = ns.to_string();
            self.publisher.set_namespace(ns);
        }
        let bundle = PathBuf::from(bundle);
        std::env::set_current_dir(&bundle)
            .map_err(|e| ShimError::io(format!("entering the bundle {}", bundle.display()), e))?;
        if let Ok(log) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(bundle.join("log"))
        {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto standard error of a descriptor we own; the original is closed
            // when `log` drops, the duplicate (without close-on-exec) stays as fd 2.
            unsafe { libc::dup2(log.as_raw_fd(), 2) };
        }
        tracing::info!(namespace = %self.namespace(), bundle = %bundle.display(), "warm shim adopted");
        Ok(())
    }

    /// Records the socket path this shim serves on (the file as it is now is ours).
    pub(crate) fn own_socket(&self, path: PathBuf) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            *lock(&self.socket) = Some((path, m.dev(), m.ino()));
        }
    }

    /// Unlinks this shim's socket, if the path still names the file it bound: once a shim is
    /// shutting down, a shim for a task of the same id may start at once and bind that path
    /// anew, and that one's socket is not ours to remove.
    pub(crate) fn release_socket(&self) {
        use std::os::unix::fs::MetadataExt;
        let Some((path, dev, ino)) = lock(&self.socket).take() else {
            return;
        };
        if let Ok(m) = std::fs::symlink_metadata(&path)
            && (m.dev(), m.ino()) == (dev, ino)
        {
            let _ = std::fs::remove_file(&path);
        }
    }

    pub(crate) fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not created")))
    }

    pub(crate) fn container_count(&self) -> usize {
        lock(&self.containers).len()
    }

    /// Resolves once Shutdown decided the shim should exit.
    pub(crate) fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Follows a started process to its end: waits for the reaper, drains its output, records the
    /// exit and publishes `/tasks/exit` (after the start event, see [`Process::lifecycle`]).
    fn watch_exit(
        self: &Arc<Self>,
        c: Arc<Container>,
        p: Arc<Process>,
        exited: oneshot::Receiver<Exit>,
    ) {
        let shim = self.clone();
        tokio::spawn(async move {
            let exit = exited.await.unwrap_or(Exit {
                status: 255,
                at: SystemTime::now(),
            });
            if p.exec_id.is_empty() && (c.kill_all_on_exit || c.has_running_execs()) {
                // Without a pid namespace of its own, the container's other processes outlive
                // its init: end them as the Go shim does (the runtime finds them by cgroup).
                if let Err(e) = c.runc.kill(&c.id, libc::SIGKILL as u32, true).await {
                    tracing::debug!(error = %e, "killing the rest of the container");
                }
            }
            let copies = lock(&p.io).take_copies();
            let left = stdio::drain(copies, DRAIN_GRACE).await;
            {
                let mut io = lock(&p.io);
                if !left.is_empty() {
                    // Delete waits for them once more before the shim may go away.
                    tracing::warn!(container = %c.id, "process output still open after its exit; publishing the exit anyway");
                    io.keep_copies(left);
                }
                io.close_stdin();
                io.close_console();
            }
            let _order = p.lifecycle.lock().await;
            p.set_exited(exit);
            let id = if p.exec_id.is_empty() {
                c.id.clone()
            } else {
                p.exec_id.clone()
            };
            tracing::info!(container = %c.id, id = %id, pid = p.pid(), status = exit.status, "process exited");
            shim.publisher.publish(
                "/tasks/exit",
                &TaskExit {
                    container_id: c.id.clone(),
                    id,
                    pid: p.pid(),
                    exit_status: exit.status,
                    exited_at: Some(crate::sys::timestamp(exit.at)),
                },
            );
        });
    }
}
