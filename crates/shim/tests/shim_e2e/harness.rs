//! Test helpers: a busybox image directory, OCI bundles, a fake daemon events endpoint, starting
//! the shim the way containerd does, FIFOs, and a guard that leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_api::containerd::runc::v1::Options;
use berth_api::containerd::services::events::ttrpc::v1::events_ttrpc::{Events, EventsServer};
use berth_api::containerd::services::events::ttrpc::v1::{Envelope, ForwardRequest};
use berth_api::containerd::task::v2::task_ttrpc::TaskClient;
use berth_api::containerd::task::v2::{
    ConnectRequest, CreateTaskRequest, DeleteRequest, KillRequest, ShutdownRequest, StartRequest,
    StateRequest, WaitRequest,
};
use berth_api::containerd::types::Mount;
use berth_ttrpc::{CallOptions, Client, Context, PeerCheck, Server, ServerHandle, Status};
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

pub(crate) const NS: &str = "berth-shim-e2e";
pub(crate) const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-berth-v2");

/// The runtime under the shim: `BERTH_SHIM_RUNTIME` if set (e.g. `runc`), else the bundled
/// `berth-runc` built next to the shim (`cargo build --workspace --bins`), else `runc` — the
/// same choice the shim makes when the options name no binary.
pub(crate) fn runtime() -> String {
    if let Ok(b) = std::env::var("BERTH_SHIM_RUNTIME") {
        return b;
    }
    let beside = Path::new(SHIM).with_file_name("berth-runc");
    if beside.is_file() {
        beside.display().to_string()
    } else {
        "runc".to_string()
    }
}

/// A directory holding a busybox root file system (Debian's busybox-static, one link per applet).
pub(crate) fn busybox_image(dir: &Path) {
    let bin = dir.join("bin");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("copy /bin/busybox (apt-get install busybox-static)");
    let out = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
}

/// Writes `config.json` (runc's default spec) for `args` into `bundle`, with an empty `rootfs`
/// directory for the shim to mount on.
pub(crate) fn bundle(bundle: &Path, args: &[&str], terminal: bool, cgroup: &str) {
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let out = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(bundle)
        .output()
        .expect("runc spec (apt-get install runc)");
    assert!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = terminal.into();
    spec["process"]["args"] = args.iter().map(|s| serde_json::Value::from(*s)).collect();
    spec["linux"]["cgroupsPath"] = cgroup.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

/// The `process` object of a bundle's spec with other `args` (for Exec).
pub(crate) fn process_spec(bundle: &Path, args: &[&str], terminal: bool) -> prost_types::Any {
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let mut p = spec["process"].clone();
    p["args"] = args.iter().map(|s| serde_json::Value::from(*s)).collect();
    p["terminal"] = terminal.into();
    prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::to_vec(&p).unwrap(),
    }
}

/// Makes a FIFO.
pub(crate) fn mkfifo(path: &Path) -> String {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo {}", path.display());
    path.to_str().unwrap().to_string()
}

/// The client's read side of an output FIFO, opened before Create as ctr does (non-blocking, so
/// it does not wait for the shim); call [`collect`] after Create.
pub(crate) fn open_output(path: &str) -> pipe::Receiver {
    pipe::OpenOptions::new().open_receiver(path).unwrap()
}

/// Reads an output FIFO to EOF (the shim closes its side once the process's output is drained).
pub(crate) fn collect(mut r: pipe::Receiver) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut out))
            .await
            .expect("output FIFO reaches EOF")
            .expect("read output FIFO");
        out
    })
}

struct Forwarded(mpsc::UnboundedSender<Envelope>);

impl Events for Forwarded {
    async fn forward(&self, _ctx: Context, req: ForwardRequest) -> Result<(), Status> {
        if let Some(env) = req.envelope {
            let _ = self.0.send(env);
        }
        Ok(())
    }
}

/// The daemon's `Events/Forward` endpoint, as containerd serves it on `<address>.ttrpc`.
pub(crate) struct EventSink {
    pub(crate) path: PathBuf,
    rx: mpsc::UnboundedReceiver<Envelope>,
    server: Option<ServerHandle>,
}

impl EventSink {
    pub(crate) fn start(path: PathBuf) -> EventSink {
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = Server::new()
            .register(EventsServer::new(Forwarded(tx)))
            .peer_check(PeerCheck::SameUser)
            .start(listener);
        EventSink {
            path,
            rx,
            server: Some(server),
        }
    }

    /// The next `n` events.
    pub(crate) async fn next(&mut self, n: usize) -> Vec<Envelope> {
        let mut out = Vec::new();
        while out.len() < n {
            let ev = tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for events; got {:?}", topics(&out)))
                .expect("events channel");
            assert_eq!(ev.namespace, NS);
            out.push(ev);
        }
        out
    }

    /// Asserts the next events have these topics, in order, and returns them.
    pub(crate) async fn expect(&mut self, want: &[&str]) -> Vec<Envelope> {
        let got = self.next(want.len()).await;
        assert_eq!(topics(&got), want);
        got
    }

    /// Asserts no event arrives for a moment.
    pub(crate) async fn expect_none(&mut self) {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), self.rx.recv()).await
        {
            panic!("unexpected event {}", ev.topic);
        }
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// The events of a task's init from create to delete.
pub(crate) const INIT_EVENTS: [&str; 4] = [
    "/tasks/create",
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
];

pub(crate) fn topics(evs: &[Envelope]) -> Vec<String> {
    evs.iter().map(|e| e.topic.clone()).collect()
}

/// Decodes an event's payload.
pub(crate) fn payload<M: Message + Default + prost::Name>(env: &Envelope) -> M {
    let any = env.event.as_ref().expect("event payload");
    assert_eq!(any.type_url, M::full_name());
    M::decode(any.value.as_slice()).unwrap()
}

/// One test's world: temp dir, image, bundle, events endpoint, and the shim once started.
/// Dropping it kills what the test started and removes runtime state, mounts and cgroups.
pub(crate) struct World {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) id: String,
    pub(crate) bundle: PathBuf,
    pub(crate) image: PathBuf,
    pub(crate) cgroup: String,
    pub(crate) events: EventSink,
    pub(crate) shim_pid: Option<i32>,
    pub(crate) address: String,
    /// The OCI runtime the shim is told to use (`Options.binary_name`).
    pub(crate) runtime: String,
}

impl World {
    pub(crate) fn new(name: &str) -> World {
        let tmp = tempfile::Builder::new()
            .prefix("berth-shim-e2e-")
            .tempdir()
            .unwrap();
        let id = format!("{name}-{}", std::process::id());
        let image = tmp.path().join("image");
        busybox_image(&image);
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        // The shim logs into `<bundle>/log` (a FIFO under containerd; a plain file will do).
        std::fs::write(bundle.join("log"), b"").unwrap();
        let events = EventSink::start(tmp.path().join("events.sock"));
        World {
            cgroup: format!("/berth-shim-e2e/{id}"),
            id,
            bundle,
            image,
            events,
            shim_pid: None,
            runtime: runtime(),
            address: String::new(),
            tmp,
        }
    }

    /// State of this world's task (`exec_id` "" for its init).
    pub(crate) fn state_req(&self, exec_id: &str) -> StateRequest {
        StateRequest {
            id: self.id.clone(),
            exec_id: exec_id.into(),
        }
    }

    /// Creates this world's task with no stdio and no terminal; its pid.
    pub(crate) async fn create_plain(&self, task: &TaskClient) -> u32 {
        let req = self.create_request("", "", "", false);
        task.create(&opts(), &req).await.unwrap().pid
    }

    /// Start of this world's task or one of its execs.
    pub(crate) fn start_req(&self, exec_id: &str) -> StartRequest {
        StartRequest {
            id: self.id.clone(),
            exec_id: exec_id.into(),
        }
    }

    /// Wait for this world's task or one of its execs.
    pub(crate) fn wait_req(&self, exec_id: &str) -> WaitRequest {
        WaitRequest {
            id: self.id.clone(),
            exec_id: exec_id.into(),
        }
    }

    /// Delete of this world's task or one of its execs.
    pub(crate) fn delete_req(&self, exec_id: &str) -> DeleteRequest {
        DeleteRequest {
            id: self.id.clone(),
            exec_id: exec_id.into(),
        }
    }

    /// Kill of this world's task or one of its execs.
    pub(crate) fn kill_req(&self, exec_id: &str, signal: u32, all: bool) -> KillRequest {
        KillRequest {
            id: self.id.clone(),
            exec_id: exec_id.into(),
            signal,
            all,
        }
    }

    pub(crate) fn t(&self) -> &Path {
        self.tmp.path()
    }

    pub(crate) fn runc_root(&self) -> PathBuf {
        self.t().join("runc")
    }

    /// containerd's `-address` (the daemon's gRPC socket; never dialled by our shim).
    pub(crate) fn daemon_address(&self) -> PathBuf {
        self.t().join("daemon.sock")
    }

    pub(crate) fn options(&self) -> prost_types::Any {
        prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: Options {
                root: self.runc_root().display().to_string(),
                binary_name: self.runtime.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        }
    }

    /// Runs `<shim> <flags> start` from the bundle as containerd does; returns stdout.
    pub(crate) fn start_shim_raw(
        &self,
        env: &[(&str, &str)],
        stdin: &[u8],
    ) -> std::process::Output {
        use std::io::Write;
        let mut cmd = Command::new(SHIM);
        cmd.args(["-namespace", NS, "-address"])
            .arg(self.daemon_address())
            .args(["-publish-binary", "/bin/false", "-id", &self.id, "start"])
            .current_dir(&self.bundle)
            .env("TTRPC_ADDRESS", &self.events.path)
            .env_remove("MAX_SHIM_VERSION")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the shim");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        // Must return promptly: the daemonized server keeps none of our pipes.
        child.wait_with_output().unwrap()
    }

    /// Starts the shim (containerd 1.6 style: plain address on stdout) and connects to it.
    pub(crate) async fn start_shim(&mut self) -> TaskClient {
        let out = self.start_shim_raw(&[], &self.options().encode_to_vec());
        assert!(
            out.status.success(),
            "shim start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.address = String::from_utf8(out.stdout).unwrap().trim().to_string();
        self.connect().await
    }

    /// Connects to `self.address` and records the shim's pid for cleanup.
    pub(crate) async fn connect(&mut self) -> TaskClient {
        let path = self
            .address
            .strip_prefix("unix://")
            .expect("unix:// address")
            .to_string();
        let task = TaskClient::new(Client::connect(&path).await.expect("dial the shim"));
        let c = task
            .connect(
                &opts(),
                &ConnectRequest {
                    id: self.id.clone(),
                },
            )
            .await
            .unwrap();
        assert!(c.shim_pid > 0);
        self.shim_pid = Some(c.shim_pid as i32);
        task
    }

    /// A Create request for this world's bundle with an overlay rootfs over the image.
    pub(crate) fn create_request(
        &self,
        stdout: &str,
        stderr: &str,
        stdin: &str,
        terminal: bool,
    ) -> CreateTaskRequest {
        let upper = self.t().join("upper");
        let work = self.t().join("work");
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        CreateTaskRequest {
            id: self.id.clone(),
            bundle: self.bundle.display().to_string(),
            rootfs: vec![Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![
                    format!("workdir={}", work.display()),
                    format!("upperdir={}", upper.display()),
                    format!("lowerdir={}", self.image.display()),
                ],
            }],
            terminal,
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            options: Some(self.options()),
            ..Default::default()
        }
    }

    /// Shuts the shim down and checks that it exits.
    pub(crate) async fn shutdown(&mut self, task: &TaskClient) {
        let _ = task
            .shutdown(
                &opts(),
                &ShutdownRequest {
                    id: self.id.clone(),
                    now: false,
                },
            )
            .await;
        let pid = self.shim_pid.expect("shim pid");
        assert!(
            wait_gone(pid, Duration::from_secs(10)).await,
            "shim {pid} still running after Shutdown"
        );
        self.shim_pid = None;
    }

    /// Nothing of the container is left: runtime state, rootfs mount, cgroup, socket.
    pub(crate) fn assert_clean(&self) {
        assert!(
            !self.runc_root().join(NS).join(&self.id).exists(),
            "runtime state left behind"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let rootfs = self.bundle.join("rootfs");
        assert!(
            !mounts.contains(rootfs.to_str().unwrap()),
            "rootfs still mounted"
        );
        for ctrl in ["memory", "pids", "cpu,cpuacct", "freezer", "devices"] {
            let dir = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join(self.cgroup.trim_start_matches('/'));
            assert!(!dir.exists(), "cgroup {} left behind", dir.display());
        }
        if let Some(sock) = self.address.strip_prefix("unix://") {
            assert!(!Path::new(sock).exists(), "socket {sock} left behind");
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.bundle.join("log")).unwrap_or_default();
            eprintln!("--- shim log ({}) ---\n{log}", self.id);
        }
        if let Some(pid) = self.shim_pid {
            // The pid the shim reported for itself, if it still names a process working in
            // our bundle.
            berth_runtime::pidfd::signal_if(pid, libc::SIGKILL, |p| works_in(p, &self.bundle));
        }
        let _ = Command::new(&self.runtime)
            .arg("--root")
            .arg(self.runc_root().join(NS))
            .args(["delete", "--force", &self.id])
            .output();
        let rootfs = self.bundle.join("rootfs");
        let c = std::ffi::CString::new(rootfs.to_str().unwrap()).unwrap();
        for _ in 0..4 {
            // SAFETY: c is a valid path; a lazy unmount of our own mount point.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                break;
            }
        }
        let rel = self.cgroup.trim_start_matches('/');
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path().join(rel));
                let _ = std::fs::remove_dir(e.path().join("berth-shim-e2e"));
            }
        }
        if let Some(sock) = self.address.strip_prefix("unix://") {
            let _ = std::fs::remove_file(sock);
        }
    }
}

/// Call options with the namespace, as containerd sends them.
pub(crate) fn opts() -> CallOptions {
    CallOptions::with_timeout(Duration::from_secs(30)).metadata("containerd-namespace-ttrpc", NS)
}

/// Whether process `pid` works in `dir` (a shim runs in its bundle).
pub(crate) fn works_in(pid: i32, dir: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir)
}

pub(crate) fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the pid exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Waits for `pid` to disappear (it is not our child; it may linger as a zombie of its parent).
pub(crate) async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if !alive(pid) || zombie {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
