//! Drives a runc-compatible runtime binary (`runc`, `crun`, `berth-runc`) through its command line:
//! `--root <root> --log <bundle>/log.json --log-format json <command> ...`. When a command fails,
//! the last error the runtime logged during that command becomes the error message.
//!
//! When the runtime is our own `berth-runc`, every verb but `checkpoint` calls its library in this
//! process instead: the same code and the same state directory, without a process per call.
//! `create` and `exec` clone the container's process from the caller, so they go in-process only
//! while the shim is single-threaded and runs from a read-only mount of its binary (set up by
//! `start`, against CVE-2019-5736: until its execve the new process is a copy of the shim);
//! otherwise they run the binary.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::reaper::Reaper;

/// A failed runtime command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuncError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("{}", failed_message(binary, command, message))]
    Failed {
        binary: String,
        command: String,
        status: u32,
        message: String,
    },
    #[error("{binary} {command}: {source}")]
    Io {
        binary: String,
        command: String,
        source: std::io::Error,
    },
    #[error("{binary} {command}: unexpected output: {detail}")]
    Output {
        binary: String,
        command: String,
        detail: String,
    },
}

/// runc's own log lines already start with "runc create failed: ..."; do not say it twice. The
/// runtime is named by its file name: where it is installed tells the reader nothing.
fn failed_message(binary: &str, command: &str, message: &str) -> String {
    if message.contains(&format!("{command} failed")) {
        message.to_string()
    } else {
        let name = std::path::Path::new(binary)
            .file_name()
            .map_or_else(|| binary.into(), |n| n.to_string_lossy());
        format!("{name} {command} failed: {message}")
    }
}

impl RuncError {
    /// The runtime's own message, for matching on "not running" and the like.
    pub(crate) fn message(&self) -> String {
        match self {
            RuncError::Failed { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// The descriptors a process-creating command hands to the new process (`None`: /dev/null).
#[derive(Debug, Default)]
pub(crate) struct ChildStdio {
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
}

fn null_or(fd: Option<OwnedFd>) -> Stdio {
    fd.map_or_else(Stdio::null, Stdio::from)
}

/// The runtime binary when the options name none (`BinaryName` empty): the bundled
/// `berth-runc` installed next to this shim, else `berth-runc` on `PATH`, else `runc`.
pub(crate) fn default_binary() -> String {
    const BUNDLED: &str = "berth-runc";
    let beside = crate::start::shim_exe()
        .and_then(|exe| exe.parent().map(|dir| dir.join(BUNDLED)))
        .filter(|p| p.is_file());
    if let Some(p) = beside {
        return p.to_string_lossy().into_owned();
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(BUNDLED).is_file()));
    if on_path {
        BUNDLED.to_string()
    } else {
        "runc".to_string()
    }
}

/// One container's runtime: binary, state root and log file.
#[derive(Debug, Clone)]
pub(crate) struct Runc {
    pub(crate) binary: String,
    pub(crate) root: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) systemd_cgroup: bool,
    reaper: Arc<Reaper>,
    /// The runtime is `berth-runc`: process-less verbs go through its library.
    in_process: bool,
}

/// Options of `create`.
#[derive(Debug)]
pub(crate) struct CreateOpts<'a> {
    pub(crate) bundle: &'a Path,
    pub(crate) pid_file: &'a Path,
    pub(crate) console_socket: Option<&'a Path>,
    pub(crate) no_pivot: bool,
    pub(crate) no_new_keyring: bool,
}

/// Options of `checkpoint`.
#[derive(Debug, Default)]
pub(crate) struct CheckpointOpts {
    pub(crate) image_path: PathBuf,
    pub(crate) work_path: PathBuf,
    pub(crate) leave_running: bool,
    pub(crate) tcp_established: bool,
    pub(crate) ext_unix_sk: bool,
    pub(crate) shell_job: bool,
    pub(crate) file_locks: bool,
    pub(crate) empty_ns: Vec<String>,
    pub(crate) cgroups_mode: String,
}

impl Runc {
    pub(crate) fn new(
        binary: String,
        root: PathBuf,
        log: PathBuf,
        systemd_cgroup: bool,
        reaper: Arc<Reaper>,
    ) -> Runc {
        let in_process =
            !systemd_cgroup && Path::new(&binary).file_name() == Some("berth-runc".as_ref());
        Runc {
            binary,
            root,
            log,
            systemd_cgroup,
            reaper,
            in_process,
        }
    }

    /// The runtime library, when the verbs that start no process may run here.
    fn library(&self) -> Option<berth_runtime::Runtime> {
        self.in_process
            .then(|| berth_runtime::Runtime::new(&self.root))
    }

    /// The runtime library for `create` and `exec`, which clone this process: only when this
    /// process is single-threaded and its binary cannot be written through the clone.
    fn library_for_clone(&self) -> Option<berth_runtime::Runtime> {
        let single_threaded = std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1);
        if single_threaded && berth_runtime::self_exe_is_readonly() {
            self.library()
        } else {
            None
        }
    }

    /// The descriptors for the new process's 0, 1 and 2 (`/dev/null` where `io` has none),
    /// and what keeps them open until the library returns.
    fn stdio_fds(
        &self,
        command: &str,
        io: &ChildStdio,
    ) -> Result<([std::os::fd::RawFd; 3], std::fs::File), RuncError> {
        use std::os::fd::AsRawFd;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|source| RuncError::Io {
                binary: self.binary.clone(),
                command: command.to_string(),
                source,
            })?;
        let fd = |f: &Option<OwnedFd>| f.as_ref().map_or(null.as_raw_fd(), AsRawFd::as_raw_fd);
        Ok(([fd(&io.stdin), fd(&io.stdout), fd(&io.stderr)], null))
    }

    /// A library error, worded as the binary would have logged it.
    fn library_error(&self, command: &str, e: berth_runtime::RuntimeError) -> RuncError {
        RuncError::Failed {
            binary: self.binary.clone(),
            command: command.to_string(),
            status: 1,
            message: e.to_string(),
        }
    }

    /// The global arguments, then `args`.
    pub(crate) fn args(
        binary: &str,
        root: &Path,
        log: Option<&Path>,
        systemd: bool,
        args: &[OsString],
    ) -> Command {
        let mut cmd = Command::new(binary);
        cmd.arg("--root").arg(root);
        if let Some(log) = log {
            cmd.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        if systemd {
            cmd.arg("--systemd-cgroup");
        }
        cmd.args(args);
        cmd
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Runs one command; `stdio` for commands that create a process (their stdio is the
    /// process's), otherwise output is captured and `input` is fed on stdin. Returns stdout.
    async fn run(
        &self,
        args: Vec<OsString>,
        stdio: Option<ChildStdio>,
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, RuncError> {
        let command = args
            .iter()
            .find(|a| !a.to_string_lossy().starts_with('-'))
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cmd = Runc::args(
            &self.binary,
            &self.root,
            Some(&self.log),
            self.systemd_cgroup,
            &args,
        );
        let captured = stdio.is_none();
        match stdio {
            Some(s) => {
                cmd.stdin(null_or(s.stdin))
                    .stdout(null_or(s.stdout))
                    .stderr(null_or(s.stderr));
            }
            None => {
                cmd.stdin(if input.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            }
        }
        let log_start = self.log_len();
        let io_err = |source| RuncError::Io {
            binary: self.binary.clone(),
            command: command.clone(),
            source,
        };
        let (mut child, exited) =
            self.reaper
                .spawn(&mut cmd)
                .map_err(|source| RuncError::Spawn {
                    binary: self.binary.clone(),
                    source,
                })?;
        // Our copies of the process's descriptors went into `cmd`; drop them now so that the
        // process holds the only ones.
        drop(cmd);
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if captured {
            let feed = async {
                if let (Some(data), Some(pipe)) = (input, child.stdin.take()) {
                    let mut w = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(pipe))?;
                    w.write_all(&data).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let out = async {
                if let Some(p) = child.stdout.take() {
                    let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(p))?;
                    r.read_to_end(&mut stdout).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let err = async {
                if let Some(p) = child.stderr.take() {
                    let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(p))?;
                    r.read_to_end(&mut stderr).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            let (a, b, c) = tokio::join!(feed, out, err);
            // A runtime that exits without reading its stdin gives EPIPE; its status tells.
            if let Err(e) = a {
                tracing::debug!(error = %e, "feeding runtime stdin");
            }
            b.map_err(io_err)?;
            c.map_err(io_err)?;
        }
        let exit = exited
            .await
            .map_err(|_| io_err(std::io::Error::other("the reaper went away")))?;
        if exit.status != 0 {
            let message = last_error(&self.log, log_start)
                .or_else(|| {
                    let s = String::from_utf8_lossy(&stderr).trim().to_string();
                    (!s.is_empty()).then_some(s)
                })
                .unwrap_or_else(|| format!("exit status {}", exit.status));
            return Err(RuncError::Failed {
                binary: self.binary.clone(),
                command,
                status: exit.status,
                message,
            });
        }
        Ok(stdout)
    }

    pub(crate) async fn create(
        &self,
        id: &str,
        o: &CreateOpts<'_>,
        io: ChildStdio,
    ) -> Result<(), RuncError> {
        if let Some(rt) = self.library_for_clone() {
            let (stdio, _null) = self.stdio_fds("create", &io)?;
            let r = rt.create(
                id,
                &berth_runtime::CreateOptions {
                    bundle: o.bundle.to_path_buf(),
                    pid_file: Some(o.pid_file.to_path_buf()),
                    console_socket: o.console_socket.map(Path::to_path_buf),
                    no_pivot: o.no_pivot,
                    no_new_keyring: o.no_new_keyring,
                    preserve_fds: 0,
                    stdio: Some(stdio),
                },
            );
            // Our copies of the process's ends go now: its output ends when it does.
            drop(io);
            return r.map(|_| ()).map_err(|e| self.library_error("create", e));
        }
        let mut a: Vec<OsString> = vec!["create".into(), "--bundle".into(), o.bundle.into()];
        a.push("--pid-file".into());
        a.push(o.pid_file.into());
        if let Some(s) = o.console_socket {
            a.push("--console-socket".into());
            a.push(s.into());
        }
        if o.no_pivot {
            a.push("--no-pivot".into());
        }
        if o.no_new_keyring {
            a.push("--no-new-keyring".into());
        }
        a.push(id.into());
        self.run(a, Some(io), None).await.map(|_| ())
    }

    pub(crate) async fn start(&self, id: &str) -> Result<(), RuncError> {
        if let Some(rt) = self.library() {
            return rt.start(id).map_err(|e| self.library_error("start", e));
        }
        self.run(vec!["start".into(), id.into()], None, None)
            .await
            .map(|_| ())
    }

    pub(crate) async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        io: ChildStdio,
    ) -> Result<(), RuncError> {
        if let Some(rt) = self.library_for_clone() {
            let process: oci_spec::runtime::Process = std::fs::read(process_json)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|detail| RuncError::Output {
                    binary: self.binary.clone(),
                    command: "exec".into(),
                    detail: format!("{}: {detail}", process_json.display()),
                })?;
            let (stdio, _null) = self.stdio_fds("exec", &io)?;
            let r = rt.exec(
                id,
                &berth_runtime::ExecOptions {
                    process,
                    console_socket: console_socket.map(Path::to_path_buf),
                    pid_file: Some(pid_file.to_path_buf()),
                    preserve_fds: 0,
                    stdio: Some(stdio),
                    ignore_paused: false,
                    cgroup: Vec::new(),
                },
            );
            drop(io);
            return r.map(|_| ()).map_err(|e| self.library_error("exec", e));
        }
        let mut a: Vec<OsString> = vec![
            "exec".into(),
            "--detach".into(),
            "--pid-file".into(),
            pid_file.into(),
            "--process".into(),
            process_json.into(),
        ];
        if let Some(s) = console_socket {
            a.push("--console-socket".into());
            a.push(s.into());
        }
        a.push(id.into());
        self.run(a, Some(io), None).await.map(|_| ())
    }

    pub(crate) async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuncError> {
        if let Some(rt) = self.library() {
            return rt
                .kill(id, signal as i32, all)
                .map_err(|e| self.library_error("kill", e));
        }
        let mut a: Vec<OsString> = vec!["kill".into()];
        if all {
            a.push("--all".into());
        }
        a.push(id.into());
        a.push(signal.to_string().into());
        self.run(a, None, None).await.map(|_| ())
    }

    pub(crate) async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        if let Some(rt) = self.library() {
            return rt
                .delete(id, force)
                .map_err(|e| self.library_error("delete", e));
        }
        let mut a: Vec<OsString> = vec!["delete".into()];
        if force {
            a.push("--force".into());
        }
        a.push(id.into());
        self.run(a, None, None).await.map(|_| ())
    }

    pub(crate) async fn pause(&self, id: &str) -> Result<(), RuncError> {
        if let Some(rt) = self.library() {
            return rt.pause(id).map_err(|e| self.library_error("pause", e));
        }
        self.run(vec!["pause".into(), id.into()], None, None)
            .await
            .map(|_| ())
    }

    pub(crate) async fn resume(&self, id: &str) -> Result<(), RuncError> {
        if let Some(rt) = self.library() {
            return rt.resume(id).map_err(|e| self.library_error("resume", e));
        }
        self.run(vec!["resume".into(), id.into()], None, None)
            .await
            .map(|_| ())
    }

    /// `ps --format json`: the pids in the container.
    pub(crate) async fn ps(&self, id: &str) -> Result<Vec<u32>, RuncError> {
        if let Some(rt) = self.library() {
            return rt
                .ps(id)
                .map(|pids| pids.into_iter().map(|p| p as u32).collect())
                .map_err(|e| self.library_error("ps", e));
        }
        let out = self
            .run(
                vec!["ps".into(), "--format".into(), "json".into(), id.into()],
                None,
                None,
            )
            .await?;
        serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(|e| RuncError::Output {
                binary: self.binary.clone(),
                command: "ps".into(),
                detail: e.to_string(),
            })
    }

    /// `update --resources -` with the OCI `LinuxResources` JSON on stdin.
    pub(crate) async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), RuncError> {
        if let Some(rt) = self.library() {
            let r: oci_spec::runtime::LinuxResources = serde_json::from_slice(&resources_json)
                .map_err(|e| RuncError::Output {
                    binary: self.binary.clone(),
                    command: "update".into(),
                    detail: format!("resources: {e}"),
                })?;
            return rt
                .update(id, &r)
                .map_err(|e| self.library_error("update", e));
        }
        self.run(
            vec!["update".into(), "--resources".into(), "-".into(), id.into()],
            None,
            Some(resources_json),
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn checkpoint(&self, id: &str, o: &CheckpointOpts) -> Result<(), RuncError> {
        let mut a: Vec<OsString> = vec![
            "checkpoint".into(),
            "--image-path".into(),
            o.image_path.clone().into(),
            "--work-path".into(),
            o.work_path.clone().into(),
        ];
        if o.leave_running {
            a.push("--leave-running".into());
        }
        if o.tcp_established {
            a.push("--tcp-established".into());
        }
        if o.ext_unix_sk {
            a.push("--ext-unix-sk".into());
        }
        if o.shell_job {
            a.push("--shell-job".into());
        }
        if o.file_locks {
            a.push("--file-locks".into());
        }
        for ns in &o.empty_ns {
            a.push("--empty-ns".into());
            a.push(ns.into());
        }
        if !o.cgroups_mode.is_empty() {
            a.push("--manage-cgroups-mode".into());
            a.push(o.cgroups_mode.clone().into());
        }
        a.push(id.into());
        self.run(a, None, None).await.map(|_| ())
    }
}

/// Which runtime a bundle's container runs under, saved in the bundle at Create so that the
/// `delete` action (run after the shim is gone) finds the same binary and state root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RuntimeRecord {
    pub(crate) binary: String,
    pub(crate) root: PathBuf,
    #[serde(default)]
    pub(crate) systemd_cgroup: bool,
}

impl RuntimeRecord {
    pub(crate) const FILE: &'static str = "shim.json";

    pub(crate) fn save(&self, bundle: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(bundle.join(Self::FILE), data)
    }

    pub(crate) fn load(bundle: &Path) -> Option<RuntimeRecord> {
        let data = std::fs::read(bundle.join(Self::FILE)).ok()?;
        serde_json::from_slice(&data).ok()
    }
}

/// The message of the last `"level":"error"` (or fatal) line the runtime appended to its JSON log
/// after byte `from`.
pub(crate) fn last_error(log: &Path, from: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    // A runaway log is not read whole: the interesting line is near the end.
    f.take(1 << 20).read_to_string(&mut text).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let level = v.get("level")?.as_str()?;
        if level == "error" || level == "fatal" {
            v.get("msg")?.as_str().map(str::to_string)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_line_after_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        let old = "{\"level\":\"error\",\"msg\":\"old failure\",\"time\":\"t\"}\n";
        std::fs::write(
            &log,
            format!(
                "{old}{{\"level\":\"warning\",\"msg\":\"w\"}}\nnot json\n{{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found\"}}\n{{\"level\":\"info\",\"msg\":\"i\"}}\n"
            ),
        )
        .unwrap();
        assert_eq!(
            last_error(&log, 0).as_deref(),
            Some("exec: \"nope\": executable file not found")
        );
        let only_old = dir.path().join("old.json");
        std::fs::write(&only_old, old).unwrap();
        assert_eq!(last_error(&only_old, old.len() as u64), None);
        assert_eq!(last_error(&dir.path().join("missing"), 0), None);
    }
}
