//! Create: mount the rootfs, prepare stdio, `runc create`, follow the init process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use berth_api::containerd::events::{TaskCreate, TaskIo, TaskOom};
use berth_api::containerd::runc::v1::Options;
use berth_api::containerd::task::v2::CreateTaskRequest;
use prost::Message;

use super::{Container, Process, Shim, lock};
use crate::error::ShimError;
use crate::mount;
use crate::oom::OomWatch;
use crate::runc::{CreateOpts, Runc, RuntimeRecord};
use crate::stats::Cgroups;
use crate::stdio::{PreparedIo, StdioPaths};

/// How long the runtime may take to hand over the pty after `create`/`exec` returned.
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

/// Decodes the runc options Any (`containerd.runc.v1.Options`); other option types (CRI's generic
/// `runtimeoptions.v1.Options`) and none at all mean the defaults.
pub(crate) fn runc_options(any: Option<&prost_types::Any>) -> Result<Options, ShimError> {
    let Some(any) = any else {
        return Ok(Options::default());
    };
    match any.type_url.rsplit('/').next().unwrap_or_default() {
        "containerd.runc.v1.Options" => Options::decode(any.value.as_slice()).map_err(|e| {
            ShimError::InvalidArgument(format!("decoding containerd.runc.v1.Options: {e}"))
        }),
        // What containerd's Go client sends for a runtime not named io.containerd.runc.*.
        "containerd.linux.runc.CreateOptions" => CreateOptions::decode(any.value.as_slice())
            .map(|c| Options {
                no_pivot_root: c.no_pivot_root,
                no_new_keyring: c.no_new_keyring,
                shim_cgroup: c.shim_cgroup,
                io_uid: c.io_uid,
                io_gid: c.io_gid,
                ..Default::default()
            })
            .map_err(|e| {
                ShimError::InvalidArgument(format!(
                    "decoding containerd.linux.runc.CreateOptions: {e}"
                ))
            }),
        _ => {
            if !any.type_url.is_empty() {
                tracing::info!(type_url = %any.type_url, "ignoring runtime options of another type");
            }
            Ok(Options::default())
        }
    }
}

/// containerd's `containerd.linux.runc.CreateOptions` (the v1 Linux runtime's options type,
/// `runtime/linux/runctypes`), as far as a shim v2 uses it.
#[derive(Clone, PartialEq, prost::Message)]
struct CreateOptions {
    #[prost(bool, tag = "1")]
    no_pivot_root: bool,
    #[prost(bool, tag = "8")]
    no_new_keyring: bool,
    #[prost(string, tag = "9")]
    shim_cgroup: String,
    #[prost(uint32, tag = "10")]
    io_uid: u32,
    #[prost(uint32, tag = "11")]
    io_gid: u32,
}

/// containerd's identifier rule: alphanumeric runs joined by single `.`, `_` or `-`, at most 76
/// characters. The id becomes a runtime argument, so nothing that looks like a flag gets through.
fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 76
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !b
            .windows(2)
            .any(|w| !w[0].is_ascii_alphanumeric() && !w[1].is_ascii_alphanumeric())
}

pub(crate) fn read_pid_file(path: &Path) -> Result<u32, ShimError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ShimError::io(format!("reading {}", path.display()), e))?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            ShimError::io(
                format!("reading {}", path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad pid {:?}", text.trim()),
                ),
            )
        })
}

/// Runs a process-creating runtime command, collecting the pty master when there is a terminal.
pub(crate) async fn run_with_console<F>(
    prepared: &PreparedIo,
    command: F,
) -> Result<Option<std::os::fd::OwnedFd>, ShimError>
where
    F: std::future::Future<Output = Result<(), crate::runc::RuncError>>,
{
    let Some(console) = &prepared.console else {
        command.await?;
        return Ok(None);
    };
    let receive = console.receive();
    tokio::pin!(receive);
    tokio::pin!(command);
    let mut master = None;
    let mut done = false;
    while !done {
        tokio::select! {
            r = &mut command => { r?; done = true; }
            m = &mut receive, if master.is_none() => {
                master = Some(m.map_err(|e| ShimError::io("receiving the pty from the runtime", e))?);
            }
        }
    }
    if let Some(m) = master {
        return Ok(Some(m));
    }
    match tokio::time::timeout(CONSOLE_WAIT, receive).await {
        Ok(Ok(m)) => Ok(Some(m)),
        Ok(Err(e)) => Err(ShimError::io("receiving the pty from the runtime", e)),
        Err(_) => Err(ShimError::io(
            "receiving the pty from the runtime",
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the runtime never sent it"),
        )),
    }
}

impl Shim {
    pub(crate) async fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<u32, ShimError> {
        if !valid_id(&req.id) {
            return Err(ShimError::InvalidArgument(format!(
                "container id {:?} is not a valid identifier",
                req.id
            )));
        }
        if lock(&self.containers).contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring a task from a checkpoint is not supported by this shim".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() || !bundle.join("config.json").is_file() {
            return Err(ShimError::InvalidArgument(format!(
                "bundle {:?} is not an absolute path to a directory with config.json",
                req.bundle
            )));
        }
        let opts = runc_options(req.options.as_ref())?;
        let root = if opts.root.is_empty() {
            self.default_root.clone()
        } else {
            PathBuf::from(&opts.root)
        }
        .join(self.namespace());
        let record = RuntimeRecord {
            binary: if opts.binary_name.is_empty() {
                crate::runc::default_binary()
            } else {
                opts.binary_name.clone()
            },
            root: root.clone(),
            systemd_cgroup: opts.systemd_cgroup,
        };
        record
            .save(&bundle)
            .map_err(|e| ShimError::io("writing the bundle's runtime record", e))?;
        let runc = Runc::new(
            record.binary,
            root,
            bundle.join("log.json"),
            record.systemd_cgroup,
            self.reaper.clone(),
        );

        let rootfs = bundle.join("rootfs");
        let mounted = !req.rootfs.is_empty();
        if mounted {
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| ShimError::io(format!("creating {}", rootfs.display()), e))?;
            mount::mount_all(&req.rootfs, &rootfs)?;
        }
        let undo = |runc: Runc, id: String| async move {
            if let Err(e) = runc.delete(&id, true).await {
                tracing::debug!(error = %e, "cleaning up after a failed create");
            }
            if mounted {
                mount::unmount_all(&rootfs);
            }
        };

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut prepared = match PreparedIo::new(&paths, opts.io_uid, opts.io_gid) {
            Ok(p) => p,
            Err(e) => {
                undo(runc, req.id.clone()).await;
                return Err(e.into());
            }
        };
        let pid_file = bundle.join("init.pid");
        let child = std::mem::take(&mut prepared.child);
        let console_path = prepared.console.as_ref().map(|c| c.path().to_path_buf());
        let created = run_with_console(
            &prepared,
            runc.create(
                &req.id,
                &CreateOpts {
                    bundle: &bundle,
                    pid_file: &pid_file,
                    console_socket: console_path.as_deref(),
                    no_pivot: opts.no_pivot_root,
                    no_new_keyring: opts.no_new_keyring,
                },
                child,
            ),
        )
        .await;
        let master = match created {
            Ok(m) => m,
            Err(e) => {
                undo(runc, req.id.clone()).await;
                return Err(e);
            }
        };
        let pid = match read_pid_file(&pid_file) {
            Ok(p) => p,
            Err(e) => {
                undo(runc, req.id.clone()).await;
                return Err(e);
            }
        };
        let exited = self.reaper.subscribe(pid as i32);
        let io = match prepared.start(master) {
            Ok(io) => io,
            Err(e) => {
                undo(runc, req.id.clone()).await;
                return Err(e.into());
            }
        };

        let init = Arc::new(Process::new(String::new(), paths.clone(), Vec::new()));
        lock(&init.state).pid = pid;
        *lock(&init.io) = io;
        let cgroups = Cgroups::of_pid(pid).ok();
        let container = Arc::new(Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            runc,
            init: init.clone(),
            execs: Default::default(),
            rootfs_mounted: mounted,
            cgroups: cgroups.clone(),
            io_uid: opts.io_uid,
            io_gid: opts.io_gid,
            exec_seq: AtomicU64::new(0),
            kill_all_on_exit: super::kill_all_on_exit(&bundle),
        });
        lock(&self.containers).insert(req.id.clone(), container.clone());

        self.publisher.publish(
            "/tasks/create",
            &TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIo {
                    stdin: paths.stdin,
                    stdout: paths.stdout,
                    stderr: paths.stderr,
                    terminal: paths.terminal,
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
            },
        );
        let watch = match cgroups.as_ref() {
            Some(c) => match (c.memory(), c.v2_only()) {
                (Some(mem), _) => Some(OomWatch::register(mem)),
                (None, Some(dir)) => Some(OomWatch::register_v2(dir)),
                (None, None) => None,
            },
            None => None,
        };
        if let Some(watch) = watch {
            match watch {
                Ok(w) => {
                    let publisher = self.publisher.clone();
                    let id = req.id.clone();
                    tokio::spawn(w.run(move || {
                        tracing::info!(container = %id, "out of memory");
                        publisher.publish(
                            "/tasks/oom",
                            &TaskOom {
                                container_id: id.clone(),
                            },
                        );
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch for OOM"),
            }
        }
        self.watch_exit(container, init, exited);
        tracing::info!(container = %req.id, pid, "created");
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn identifiers() {
        for ok in ["a", "c1", "my-container_1.2", "x".repeat(76).as_str()] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            "--help",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "ä",
            "x".repeat(77).as_str(),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
