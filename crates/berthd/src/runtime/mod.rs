//! The runtime manager: one shim process per task, started with the shim v2 binary protocol and
//! driven over ttrpc (`containerd.task.v2.Task`).
//!
//! `io.containerd.<name>.<version>` runs `containerd-shim-<name>-<version>` from `$PATH` (so
//! `io.containerd.runc.v2` is Debian's Go shim and `io.containerd.berth.v2` ours); an absolute
//! path runs that binary. Bundles live in `<state>/io.containerd.runtime.v2.task/<ns>/<id>`
//! (`config.json`, `rootfs/`, the `log` FIFO, and the `address` file the shim writes). Shims
//! forward task events to the daemon's ttrpc Events endpoint. At start-up the manager
//! reconnects to every live shim (in parallel) and cleans up after dead ones with the shim's
//! `delete` action, publishing their exit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::containerd::events::{TaskDelete, TaskExit};
use berth_api::containerd::task::v2::task_ttrpc::TaskClient;
use berth_api::containerd::task::v2::{ConnectRequest, DeleteRequest, ShutdownRequest};
use berth_ttrpc::{CallOptions, Client};
use prost::Message;

use crate::errors::TaskError;
use crate::events::Exchange;

mod warm;
use warm::WarmShim;
mod restore;
mod tasks;

/// How long one call to a shim may take (Wait excepted): a hung shim never blocks the others.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Exits found at start-up are published this long after the daemon serves, so that event
/// subscribers (kubelet, ctr events) have reconnected.
pub(crate) const RECOVERED_EXIT_DELAY: Duration = Duration::from_secs(1);
/// How long a shim's `start` or `delete` action may take.
const ACTION_TIMEOUT: Duration = Duration::from_secs(20);

/// A running shim and its task.
#[derive(Debug)]
pub(crate) struct Shim {
    pub(crate) ns: String,
    pub(crate) id: String,
    pub(crate) bundle: PathBuf,
    pub(crate) client: TaskClient,
    binary: PathBuf,
}

impl Shim {
    /// Call options: the namespace header and a deadline (`None` for Wait).
    pub(crate) fn opts(&self, timeout: Option<Duration>) -> CallOptions {
        CallOptions {
            timeout,
            ..Default::default()
        }
        .metadata("containerd-namespace", self.ns.clone())
    }
}

#[derive(Debug)]
pub(crate) struct Runtimes {
    /// Where Create reads a container's record and its rootfs's mounts.
    store: berth_store::Store,
    root: PathBuf,
    /// The OCI runtime's state root given to runc-type shims (`Options.root`), under our own
    /// state directory: two daemons never share it, wherever their sockets are.
    runc_root: PathBuf,
    grpc_address: PathBuf,
    ttrpc_address: PathBuf,
    self_exe: PathBuf,
    events: Arc<Exchange>,
    shims: Mutex<HashMap<(String, String), Arc<Shim>>>,
    /// Stops the copy of each bundle's shim log (see [`follow_log`]).
    logs: Mutex<HashMap<(String, String), tokio::sync::oneshot::Sender<()>>>,
    /// Warm shims: where they wait (`<state>/warm/<id>`), how many to keep, the idle ones,
    /// and the signal that one was taken.
    warm_root: PathBuf,
    warm_target: std::sync::atomic::AtomicUsize,
    warm: Mutex<Vec<WarmShim>>,
    warm_taken: Arc<tokio::sync::Notify>,
}

/// `io.containerd.runc.v2` → `containerd-shim-runc-v2`, resolved in `$PATH`, then (as
/// containerd does) in berthd's own directory, where a build or an install puts Berth's shim.
pub(crate) fn shim_binary(runtime: &str) -> Result<PathBuf, TaskError> {
    if runtime.starts_with('/') {
        let p = PathBuf::from(runtime);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(TaskError::NoRuntime(format!(
                "runtime {runtime:?}: no such file"
            )))
        };
    }
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty() || p.contains('/')) {
        return Err(TaskError::BadRequest(format!(
            "runtime {runtime:?}: want io.containerd.<name>.<version> or an absolute path"
        )));
    }
    let name = format!(
        "containerd-shim-{}-{}",
        parts[parts.len() - 2],
        parts[parts.len() - 1]
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    for dir in std::env::split_paths(&path).chain(own_dir) {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(TaskError::NoRuntime(format!(
        "runtime {runtime:?}: {name} not found in PATH or berthd's directory"
    )))
}

/// A ttrpc connection to the shim socket at `address` (5 s at most).
async fn dial(address: &Path) -> Result<TaskClient, TaskError> {
    let client = tokio::time::timeout(Duration::from_secs(5), Client::connect(address))
        .await
        .map_err(|_| {
            TaskError::ShimUnreachable(format!("shim {}: connect timed out", address.display()))
        })?
        .map_err(|e| TaskError::ShimUnreachable(format!("shim {}: {e}", address.display())))?;
    Ok(TaskClient::new(client))
}

/// Asks a shim without a task (a warm one) to exit now.
async fn shutdown_now(client: &TaskClient) {
    let _ = client
        .shutdown(
            &CallOptions::with_timeout(Duration::from_secs(2)),
            &ShutdownRequest {
                id: String::new(),
                now: true,
            },
        )
        .await;
}

/// The address a shim printed: a plain address, or JSON `{"version":2,"address":...}`.
fn parse_start_output(out: &str) -> Result<PathBuf, String> {
    let out = out.trim();
    let address = if out.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Boot {
            version: u32,
            address: String,
            #[serde(default)]
            protocol: String,
        }
        let b: Boot = serde_json::from_str(out).map_err(|e| format!("start output: {e}"))?;
        if b.version != 2 || (!b.protocol.is_empty() && b.protocol != "ttrpc") {
            return Err(format!(
                "unsupported shim version {} / protocol {:?} (berthd speaks task v2 over ttrpc)",
                b.version, b.protocol
            ));
        }
        b.address
    } else {
        out.to_string()
    };
    let path = address.strip_prefix("unix://").unwrap_or(&address);
    if path.is_empty() || !path.starts_with('/') {
        return Err(format!("start output {out:?} is not a unix socket address"));
    }
    Ok(PathBuf::from(path))
}

/// Creates the `log` FIFO of a bundle and starts copying what the shim writes there to our log,
/// until `stop` fires (then what is already in the FIFO is copied, and the task ends).
fn follow_log(
    bundle: &Path,
    ns: &str,
    id: &str,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let fifo = bundle.join("log");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("NUL in path"))?;
    // SAFETY: a valid NUL-terminated path; mkfifo retains nothing.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    // Read-write: the open never blocks, and the FIFO stays open while the shim restarts its
    // end. The flip side, no EOF, is why the task ends on `stop`.
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo)?;
    let (ns, id) = (ns.to_string(), id.to_string());
    tokio::spawn(async move {
        let emit = |data: &[u8]| {
            for line in String::from_utf8_lossy(data).lines() {
                tracing::info!(namespace = %ns, id = %id, "shim: {line}");
            }
        };
        // Reads what is there into a buffer on the stack: a quiet FIFO (one per container)
        // holds no memory. False at the end of the stream or on an error.
        let drain = |rx: &tokio::net::unix::pipe::Receiver| {
            let mut buf = [0u8; 4096];
            loop {
                match rx.try_read(&mut buf) {
                    Ok(0) => return false,
                    Ok(n) => emit(&buf[..n]),
                    Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
                }
            }
        };
        let mut stop = stop;
        loop {
            tokio::select! {
                r = rx.readable() => if r.is_err() || !drain(&rx) {
                    return;
                },
                _ = &mut stop => {
                    drain(&rx);
                    return;
                }
            }
        }
    });
    Ok(())
}

impl Runtimes {
    pub(crate) fn new(
        store: berth_store::Store,
        state: &Path,
        grpc_address: &Path,
        ttrpc_address: &Path,
        events: Arc<Exchange>,
    ) -> Runtimes {
        Runtimes {
            store,
            root: state.join("io.containerd.runtime.v2.task"),
            runc_root: state.join("runc"),
            grpc_address: grpc_address.to_path_buf(),
            ttrpc_address: ttrpc_address.to_path_buf(),
            self_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("berthd")),
            events,
            shims: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            warm_root: state.join("warm"),
            warm_target: std::sync::atomic::AtomicUsize::new(0),
            warm: Mutex::new(Vec::new()),
            warm_taken: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn bundle(&self, ns: &str, id: &str) -> PathBuf {
        self.root.join(ns).join(id)
    }

    /// The shim of task `id`, if it has one.
    pub(crate) fn get(&self, ns: &str, id: &str) -> Option<Arc<Shim>> {
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_string(), id.to_string()))
            .cloned()
    }

    /// The runtime options a task of `runtime` is created with: the client's, and for the
    /// runc-type shims (containerd's Go shim, Berth's) `root` set to this daemon's own runc
    /// root when the client named none. Otherwise a shim derives it from the daemon's socket
    /// directory (`<dir>/runc`), which two daemons with sockets in one directory would share:
    /// same-named containers of one namespace would collide in it.
    pub(crate) fn options_for(
        &self,
        runtime: &str,
        options: Option<prost_types::Any>,
    ) -> Result<Option<prost_types::Any>, TaskError> {
        use berth_api::containerd::runc::v1::Options;
        const TYPE: &str = "containerd.runc.v1.Options";
        let runc_type = matches!(
            runtime,
            "io.containerd.runc.v2" | "io.containerd.runc.v1" | "io.containerd.berth.v2"
        );
        let of_type = |a: &prost_types::Any| a.type_url.rsplit('/').next() == Some(TYPE);
        if !runc_type || options.as_ref().is_some_and(|a| !of_type(a)) {
            return Ok(options);
        }
        let (mut opts, type_url) = match &options {
            Some(a) => (
                Options::decode(a.value.as_slice())
                    .map_err(|e| TaskError::BadRequest(format!("options: decoding {TYPE}: {e}")))?,
                a.type_url.clone(),
            ),
            None => (Options::default(), TYPE.to_string()),
        };
        if !opts.root.is_empty() {
            return Ok(options);
        }
        opts.root = self.runc_root.display().to_string();
        Ok(Some(prost_types::Any {
            type_url,
            value: opts.encode_to_vec(),
        }))
    }

    /// Whether container `id` has a task: a shim serves it, or its bundle is there (a shim
    /// that outlived a restart and is not reconnected yet, or one being started or deleted).
    pub(crate) fn has_task(&self, ns: &str, id: &str) -> bool {
        self.get(ns, id).is_some() || self.bundle(ns, id).exists()
    }

    /// The shims of namespace `ns`.
    pub(crate) fn list(&self, ns: &str) -> Vec<Arc<Shim>> {
        let mut v: Vec<Arc<Shim>> = self
            .shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.ns == ns)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Copies the bundle's shim log into ours (replacing an earlier copy of the same bundle).
    fn start_log(&self, bundle: &Path, ns: &str, id: &str) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        follow_log(bundle, ns, id, rx)?;
        let old = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.to_string(), id.to_string()), tx);
        if let Some(old) = old {
            let _ = old.send(());
        }
        Ok(())
    }

    /// Ends the copy of a bundle's shim log, once what the shim wrote is copied.
    fn stop_log(&self, ns: &str, id: &str) {
        let tx = self
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ns.to_string(), id.to_string()));
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }

    fn forget(&self, ns: &str, id: &str) {
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ns.to_string(), id.to_string()));
    }

    /// The shim binary's command line for `action` (`start`, `delete`), with extra `flags`
    /// before it.
    fn action(
        &self,
        binary: &Path,
        ns: &str,
        id: &str,
        bundle: &Path,
        action: &str,
        flags: &[&str],
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("-namespace")
            .arg(ns)
            .arg("-address")
            .arg(&self.grpc_address)
            .arg("-publish-binary")
            .arg(&self.self_exe)
            .arg("-id")
            .arg(id);
        if action == "delete" {
            cmd.arg("-bundle").arg(bundle);
        }
        cmd.args(flags);
        cmd.arg(action)
            .current_dir(bundle)
            .env("TTRPC_ADDRESS", &self.ttrpc_address)
            .env("GRPC_ADDRESS", &self.grpc_address)
            .env("NAMESPACE", ns)
            .env("MAX_SHIM_VERSION", "2");
        cmd
    }

    /// Makes the bundle, starts the shim and connects to it. `spec` is the OCI spec JSON,
    /// `options` the runtime options (an encoded `Any`, or empty).
    pub(crate) async fn start_shim(
        &self,
        ns: &str,
        id: &str,
        runtime: &str,
        spec: &[u8],
        options: Option<prost_types::Any>,
    ) -> Result<Arc<Shim>, TaskError> {
        if self.get(ns, id).is_some() {
            return Err(TaskError::TaskExists(format!("task {id:?}")));
        }
        let binary = shim_binary(runtime)?;
        let bundle = self.bundle(ns, id);
        if bundle.exists() {
            return Err(TaskError::TaskExists(format!(
                "task {id:?}: bundle {} exists",
                bundle.display()
            )));
        }
        std::fs::create_dir_all(bundle.join("rootfs"))
            .map_err(|e| TaskError::Bundle(format!("bundle {}: {e}", bundle.display())))?;
        let result = self.start_in(ns, id, &binary, &bundle, spec, options).await;
        match result {
            Ok(shim) => Ok(shim),
            Err(e) => {
                self.stop_log(ns, id);
                let _ = std::fs::remove_dir_all(&bundle);
                Err(e)
            }
        }
    }

    async fn start_in(
        &self,
        ns: &str,
        id: &str,
        binary: &Path,
        bundle: &Path,
        spec: &[u8],
        options: Option<prost_types::Any>,
    ) -> Result<Arc<Shim>, TaskError> {
        std::fs::write(bundle.join("config.json"), spec)
            .map_err(|e| TaskError::Bundle(format!("writing config.json: {e}")))?;
        self.start_log(bundle, ns, id)
            .map_err(|e| TaskError::Bundle(format!("log fifo: {e}")))?;
        let _ = std::fs::write(
            bundle.join("shim-binary-path"),
            binary.as_os_str().as_encoded_bytes(),
        );
        if let Some(shim) = self
            .adopt_warm(ns, id, binary, bundle, options.as_ref())
            .await
        {
            return Ok(shim);
        }
        let stdin = options.map(|o| o.encode_to_vec()).unwrap_or_default();
        let mut cmd = self.action(binary, ns, id, bundle, "start", &[]);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|e| TaskError::ShimStart(format!("starting {}: {e}", binary.display())))?;
        if let Some(mut i) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            let _ = i.write_all(&stdin).await;
        }
        let out = tokio::time::timeout(ACTION_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| TaskError::ShimTimedOut(format!("{} start: timed out", binary.display())))?
            .map_err(|e| TaskError::ShimStart(format!("{} start: {e}", binary.display())))?;
        if !out.status.success() {
            return Err(TaskError::ShimStart(format!(
                "{} start failed: {}",
                binary.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let address = parse_start_output(&String::from_utf8_lossy(&out.stdout))
            .map_err(|e| TaskError::ShimStart(format!("{}: {e}", binary.display())))?;
        let shim = self.connect(ns, id, bundle, binary, &address).await?;
        Ok(shim)
    }

    async fn connect(
        &self,
        ns: &str,
        id: &str,
        bundle: &Path,
        binary: &Path,
        address: &Path,
    ) -> Result<Arc<Shim>, TaskError> {
        let client = dial(address).await?;
        self.attach(ns, id, bundle, binary, client, CALL_TIMEOUT)
            .await
    }

    /// Task `id`'s shim on `client`: asked to Connect (it answers while it lives), then known
    /// as the task's.
    async fn attach(
        &self,
        ns: &str,
        id: &str,
        bundle: &Path,
        binary: &Path,
        client: TaskClient,
        timeout: Duration,
    ) -> Result<Arc<Shim>, TaskError> {
        let shim = Arc::new(Shim {
            ns: ns.to_string(),
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            client,
            binary: binary.to_path_buf(),
        });
        shim.client
            .connect(
                &shim.opts(Some(timeout)),
                &ConnectRequest { id: id.to_string() },
            )
            .await
            .map_err(TaskError::Shim)?;
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.to_string(), id.to_string()), shim.clone());
        Ok(shim)
    }

    /// Stops a task's shim after its task was deleted, and removes the bundle.
    pub(crate) async fn stop_shim(&self, shim: &Shim) {
        self.stop_shim_after(shim, false).await;
    }

    /// Stops a shim. After its task was deleted and it acknowledged Shutdown, nothing is left
    /// for its `delete` action (containerd, too, runs it only after a dead shim): the bundle
    /// goes without another process.
    async fn stop_shim_after(&self, shim: &Shim, task_deleted: bool) {
        let down = shim
            .client
            .shutdown(
                &shim.opts(Some(Duration::from_secs(5))),
                &ShutdownRequest {
                    id: shim.id.clone(),
                    now: false,
                },
            )
            .await;
        self.forget(&shim.ns, &shim.id);
        if task_deleted && down.is_ok() {
            self.remove_bundle(&shim.ns, &shim.id, &shim.bundle);
        } else {
            self.cleanup_bundle(&shim.ns, &shim.id, &shim.bundle, &shim.binary)
                .await;
        }
    }

    /// Runs the shim's `delete` action (kills what is left, unmounts) and removes the bundle.
    /// Returns the `DeleteResponse` it printed, if any.
    async fn cleanup_bundle(
        &self,
        ns: &str,
        id: &str,
        bundle: &Path,
        binary: &Path,
    ) -> Option<berth_api::containerd::task::v2::DeleteResponse> {
        let mut resp = None;
        if bundle.join("rootfs").exists() || bundle.join("address").exists() {
            let mut cmd = self.action(binary, ns, id, bundle, "delete", &[]);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            if let Ok(child) = tokio::process::Command::from(cmd).spawn()
                && let Ok(Ok(out)) =
                    tokio::time::timeout(ACTION_TIMEOUT, child.wait_with_output()).await
            {
                resp =
                    berth_api::containerd::task::v2::DeleteResponse::decode(out.stdout.as_slice())
                        .ok();
            }
        }
        self.remove_bundle(ns, id, bundle);
        resp
    }

    /// Unmounts what the shim left mounted, stops copying its log, removes the bundle.
    fn remove_bundle(&self, ns: &str, id: &str, bundle: &Path) {
        // The rootfs may still be mounted if the shim could not unmount it.
        let rootfs = bundle.join("rootfs");
        if let Ok(c) = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid path; umount2 retains nothing.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        self.stop_log(ns, id);
        let _ = std::fs::remove_dir_all(bundle);
    }

    /// Deletes the task of a shim (the init process), then stops the shim.
    pub(crate) async fn delete_task(
        &self,
        shim: &Shim,
    ) -> Result<berth_api::containerd::task::v2::DeleteResponse, TaskError> {
        let r = shim
            .client
            .delete(
                &shim.opts(Some(CALL_TIMEOUT)),
                &DeleteRequest {
                    id: shim.id.clone(),
                    exec_id: String::new(),
                },
            )
            .await
            .map_err(TaskError::Shim)?;
        self.stop_shim_after(shim, true).await;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_output_forms() {
        assert_eq!(
            parse_start_output("unix:///run/containerd/s/abc\n").unwrap(),
            PathBuf::from("/run/containerd/s/abc")
        );
        assert_eq!(
            parse_start_output(r#"{"version":2,"address":"unix:///x/s","protocol":"ttrpc"}"#)
                .unwrap(),
            PathBuf::from("/x/s")
        );
        assert!(
            parse_start_output(r#"{"version":3,"address":"unix:///x","protocol":"ttrpc"}"#)
                .is_err()
        );
        assert!(parse_start_output("").is_err());
        assert!(parse_start_output("relative/path").is_err());
    }

    #[test]
    fn runtime_names_map_to_shim_binaries() {
        let e = crate::errors::task_status(shim_binary("io.containerd.nosuch.v9").unwrap_err());
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(
            e.message().contains("containerd-shim-nosuch-v9"),
            "{}",
            e.message()
        );
        assert_eq!(
            crate::errors::task_status(shim_binary("bad").unwrap_err()).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            crate::errors::task_status(shim_binary("/no/such/shim").unwrap_err()).code(),
            tonic::Code::NotFound
        );
    }
}
