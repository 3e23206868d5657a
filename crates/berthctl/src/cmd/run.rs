//! `berthctl run`: a container from an image, as `ctr run` makes one: an OCI spec from
//! containerd's defaults and the image config, a snapshot over the image's top layer, the
//! container record, then the task, with its stdio through FIFOs (or a terminal).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_api::containerd::services::containers::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, container::Runtime,
};
use berth_api::containerd::services::images::v1::GetImageRequest;
use berth_api::containerd::services::images::v1::images_client::ImagesClient;
use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_api::containerd::services::leases::v1::{CreateRequest, DeleteRequest};
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::snapshots::v1::{
    PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use berth_api::containerd::services::tasks::v1::tasks_client::TasksClient;
use berth_api::containerd::services::tasks::v1::{
    CreateTaskRequest, DeleteTaskRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use berth_image::media::{
    PlatformSpec, chain_ids, config_diff_ids, manifest_parts, select_manifest,
};
use serde_json::{Value, json};

use crate::client::Conn;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The image (its name in this namespace).
    image: String,
    /// The container id.
    id: String,
    /// The command and its arguments (default: the image's entrypoint and cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
    /// Remove the container (and its snapshot) when it exits.
    #[arg(long)]
    rm: bool,
    /// Start it and return (no stdio).
    #[arg(short, long)]
    detach: bool,
    /// Give it a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Keep stdin open and copy ours to it.
    #[arg(short, long)]
    interactive: bool,
    /// Environment variables (`KEY=value`).
    #[arg(long = "env")]
    env: Vec<String>,
    /// Bind mounts: `type=bind,src=/host,dst=/container,options=rbind:ro`.
    #[arg(long = "mount")]
    mounts: Vec<String>,
    /// Use the host's network namespace.
    #[arg(long)]
    net_host: bool,
    /// Memory limit in bytes.
    #[arg(long)]
    memory_limit: Option<i64>,
    /// CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// User (`uid[:gid]`).
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory.
    #[arg(long)]
    cwd: Option<String>,
    /// Runtime: `io.containerd.berth.v2` (Berth's shim and berth-runc), `io.containerd.runc.v2`
    /// (containerd's Go shim and runc), or a shim's absolute path.
    #[arg(long, env = "BERTH_RUNTIME", default_value = "io.containerd.berth.v2")]
    runtime: String,
    /// Snapshotter.
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = "overlayfs")]
    snapshotter: String,
    /// Print how long each step took (milliseconds, to stderr) when done.
    #[arg(long)]
    timings: bool,
    /// Directory for the stdio FIFOs, which the shim must see too (default: the temporary
    /// directory); a directory of their own is made in it and removed afterwards.
    #[arg(long)]
    fifo_dir: Option<PathBuf>,
}

async fn read_blob(conn: &Conn, digest: &str) -> anyhow::Result<Vec<u8>> {
    super::images::read_blob(conn, digest).await
}

/// The image's config JSON and its top chain id.
async fn image_config(conn: &Conn, name: &str) -> anyhow::Result<(Value, String)> {
    let img = ImagesClient::new(conn.channel.clone())
        .get(conn.req(GetImageRequest { name: name.into() }))
        .await?
        .into_inner()
        .image
        .context("no image in the answer")?;
    let target = img.target.context("image without a target")?;
    let mut manifest = target.digest.clone();
    if berth_image::media::is_index(&target.media_type) {
        let index = read_blob(conn, &manifest).await?;
        manifest = select_manifest(&index, &PlatformSpec::host())?
            .context("no manifest for this platform")?
            .digest
            .to_string();
    }
    let (config, _) = manifest_parts(&read_blob(conn, &manifest).await?)?;
    let bytes = read_blob(conn, config.digest.as_str()).await?;
    let chain = chain_ids(&config_diff_ids(&bytes)?);
    let top = chain.last().context("image without layers")?.to_string();
    Ok((serde_json::from_slice(&bytes)?, top))
}

fn parse_mount(s: &str) -> anyhow::Result<Value> {
    let mut kv: HashMap<&str, &str> = HashMap::new();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--mount {s:?}: want key=value pairs"))?;
        kv.insert(k, v);
    }
    let dst = kv
        .get("dst")
        .or(kv.get("destination"))
        .with_context(|| format!("--mount {s:?}: dst is required"))?;
    let src = kv
        .get("src")
        .or(kv.get("source"))
        .copied()
        .unwrap_or("none");
    let ty = kv.get("type").copied().unwrap_or("bind");
    let options: Vec<&str> = kv
        .get("options")
        .map(|o| o.split(':').collect())
        .unwrap_or_else(|| if ty == "bind" { vec!["rbind"] } else { vec![] });
    Ok(json!({"destination": dst, "type": ty, "source": src, "options": options}))
}

/// containerd's default spec (`oci.WithDefaultSpec`), the image config, and the flags.
fn build_spec(a: &Args, ns: &str, image: &Value) -> anyhow::Result<Value> {
    let cfg = image.get("config").cloned().unwrap_or(Value::Null);
    let strings = berth_runtime::defaults::strings;
    let mut args = a.args.clone();
    if args.is_empty() {
        args = strings(cfg.get("Entrypoint"));
        args.extend(strings(cfg.get("Cmd")));
    }
    anyhow::ensure!(!args.is_empty(), "no command: give one, the image has none");
    for e in &a.env {
        anyhow::ensure!(e.contains('='), "--env {e:?}: want KEY=value");
    }
    let env = berth_runtime::defaults::env(
        strings(cfg.get("Env"))
            .into_iter()
            .chain(a.env.iter().cloned()),
    );
    let cwd = a
        .cwd
        .clone()
        .or_else(|| {
            cfg.get("WorkingDir")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "/".into());
    let user = a
        .user
        .clone()
        .or_else(|| cfg.get("User").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    let (uid, gid) = if user.is_empty() {
        (0, 0)
    } else {
        let (u, g) = user.split_once(':').unwrap_or((&user, ""));
        let uid: u32 = u
            .parse()
            .with_context(|| format!("user {user:?}: only numeric uid[:gid] is supported"))?;
        let gid: u32 = if g.is_empty() {
            uid
        } else {
            g.parse().with_context(|| format!("user {user:?}: gid"))?
        };
        (uid, gid)
    };
    let caps = berth_runtime::defaults::CAPABILITIES;
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if !a.net_host {
        namespaces.push(json!({"type": "network"}));
    }
    let mut mounts = berth_runtime::defaults::mounts(false);
    mounts.extend([
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ]);
    if a.net_host {
        for f in ["/etc/hosts", "/etc/resolv.conf"] {
            if Path::new(f).exists() {
                mounts.push(json!({"destination": f, "type": "bind", "source": f, "options": ["rbind", "ro"]}));
            }
        }
    }
    for m in &a.mounts {
        mounts.push(parse_mount(m)?);
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    // The terminal is made at our size: the process may ask for it before the first resize.
    let console_size = window_size()
        .filter(|_| a.tty)
        .map(|(w, h)| json!({"height": h, "width": w}));
    if let Some(m) = a.memory_limit {
        anyhow::ensure!(m > 0, "--memory-limit: must be positive");
        resources["memory"] = json!({"limit": m});
    }
    if let Some(c) = a.cpus {
        anyhow::ensure!(c > 0.0, "--cpus: must be positive");
        let period: u64 = 100_000;
        resources["cpu"] = json!({"quota": (c * period as f64) as i64, "period": period});
    }
    let mut spec = json!({
        "ociVersion": "1.1.0",
        "process": {
            "terminal": a.tty,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": if a.net_host { Value::Null } else { json!(a.id) },
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/{ns}/{}", a.id),
            "namespaces": namespaces,
            "maskedPaths": berth_runtime::defaults::MASKED_PATHS,
            "readonlyPaths": berth_runtime::defaults::READONLY_PATHS
        }
    });
    if let Some(size) = console_size {
        spec["process"]["consoleSize"] = size;
    }
    Ok(spec)
}

/// Milliseconds per step of a run, for `--timings`.
struct Timings {
    on: bool,
    last: std::time::Instant,
    steps: Vec<(&'static str, f64)>,
}

impl Timings {
    fn new(on: bool) -> Timings {
        let start = *crate::STARTED.get_or_init(std::time::Instant::now);
        Timings {
            on,
            last: start,
            steps: Vec::new(),
        }
    }

    /// Ends step `name` now.
    fn step(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.steps
            .push((name, (now - self.last).as_secs_f64() * 1000.0));
        self.last = now;
    }

    fn print(&self) {
        if !self.on {
            return;
        }
        let total: f64 = self.steps.iter().map(|s| s.1).sum();
        for (name, ms) in &self.steps {
            eprintln!("{name:>24} {ms:8.2} ms");
        }
        eprintln!("{:>24} {total:8.2} ms", "total");
    }
}

fn mkfifo(p: &Path) -> anyhow::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid NUL-terminated path; mkfifo retains nothing.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mkfifo {}", p.display()));
    }
    Ok(())
}

/// Our terminal in raw mode until dropped.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a properly sized, initialised termios.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the attributes read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

fn window_size() -> Option<(u32, u32)> {
    // SAFETY: TIOCGWINSZ fills a winsize struct we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0)
            .then_some((u32::from(ws.ws_col), u32::from(ws.ws_row)))
    }
}

/// Our read end of an output FIFO, opened before the shim's write end exists: a reader opened
/// non-blocking, and a write end of our own that keeps it from seeing end of file until the
/// shim has opened its end (see [`OutFifo::writer_attached`]).
struct OutFifo {
    reader: std::fs::File,
    placeholder: std::fs::File,
}

impl OutFifo {
    fn open(path: &Path) -> anyhow::Result<OutFifo> {
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let placeholder = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // Reads block from here on; end of file comes when the last writer has gone.
        set_blocking(&reader)?;
        Ok(OutFifo {
            reader,
            placeholder,
        })
    }

    /// Copies to `to` until end of file, in a thread of its own; the returned end of the
    /// placeholder is to be dropped once the shim holds its write end (after Tasks.Create).
    fn copy_to(
        self,
        mut to: impl Write + Send + 'static,
    ) -> (std::fs::File, std::thread::JoinHandle<()>) {
        let mut reader = self.reader;
        let copy = std::thread::spawn(move || {
            let mut buf = [0u8; 32 * 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = to.flush();
            }
        });
        (self.placeholder, copy)
    }
}

fn set_blocking(f: &std::fs::File) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// containerd's identifier rule for the container id, checked before anything is made (the
/// lease and the snapshot are named after it), so that the error names the id.
fn check_id(id: &str) -> anyhow::Result<()> {
    let valid = id.len() <= 76
        && id
            .split(['.', '_', '-'])
            .all(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric()));
    anyhow::ensure!(
        valid,
        "container id {id:?}: must be letters and digits joined by single '.', '_' or '-', \
         at most 76 characters"
    );
    Ok(())
}

pub(crate) async fn run(conn: &Conn, ns: &str, a: Args) -> anyhow::Result<i32> {
    let mut t = Timings::new(a.timings);
    t.step("start, connect");
    check_id(&a.id)?;
    anyhow::ensure!(
        !(a.rm && a.detach),
        "--rm and --detach cannot be used together"
    );
    // The snapshot and the container under a lease, so GC cannot take the snapshot in between;
    // the image's config is read meanwhile (neither needs the other).
    let mut leases = LeasesClient::new(conn.channel.clone());
    let lease_req = conn.req(CreateRequest {
        id: format!("run-{}-{}", a.id, std::process::id()),
        labels: Default::default(),
    });
    let (image, lease) = tokio::join!(image_config(conn, &a.image), leases.create(lease_req));
    let lease = lease?.into_inner().lease.context("no lease")?.id;
    let spec = match image.and_then(|(config, top)| Ok((build_spec(&a, ns, &config)?, top))) {
        Ok(s) => s,
        Err(e) => {
            let _ = leases
                .delete(conn.req(DeleteRequest {
                    id: lease,
                    sync: false,
                }))
                .await;
            return Err(e);
        }
    };
    let (spec, top) = spec;
    t.step("image config, lease");
    let mut snaps = SnapshotsClient::new(conn.channel.clone());
    let made = async {
        snaps
            .prepare(conn.req_lease(
                PrepareSnapshotRequest {
                    snapshotter: a.snapshotter.clone(),
                    key: a.id.clone(),
                    parent: top.clone(),
                    labels: Default::default(),
                },
                &lease,
            )?)
            .await?;
        t.step("snapshot prepare");
        ContainersClient::new(conn.channel.clone())
            .create(conn.req(CreateContainerRequest {
                container: Some(Container {
                    id: a.id.clone(),
                    image: a.image.clone(),
                    runtime: Some(Runtime {
                        name: a.runtime.clone(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                        value: serde_json::to_vec(&spec)?,
                    }),
                    snapshotter: a.snapshotter.clone(),
                    snapshot_key: a.id.clone(),
                    ..Default::default()
                }),
            }))
            .await?;
        t.step("container create");
        anyhow::Ok(())
    }
    .await;
    // The lease has done its work once the container holds the snapshot: let it go while the
    // task starts (the container and snapshot stay whatever the lease's end does).
    let lease_gone = {
        let req = conn.req(DeleteRequest {
            id: lease,
            sync: false,
        });
        tokio::spawn(async move { leases.delete(req).await })
    };
    if let Err(e) = made {
        let _ = lease_gone.await;
        return Err(e);
    }

    let result = run_task(conn, &a, &mut t).await;
    if a.rm {
        // Both at once: neither needs the other, and the task (which had the snapshot mounted)
        // is gone.
        let mut containers = ContainersClient::new(conn.channel.clone());
        let _ = tokio::join!(
            containers.delete(conn.req(DeleteContainerRequest { id: a.id.clone() })),
            snaps.remove(conn.req(RemoveSnapshotRequest {
                snapshotter: a.snapshotter.clone(),
                key: a.id.clone(),
            }))
        );
        t.step("container, snapshot rm");
    }
    let _ = lease_gone.await;
    t.print();
    result
}

/// Sends our terminal's size to the task now and at each SIGWINCH, until dropped.
fn follow_window_size(conn: &Conn, id: &str) -> Option<tokio::task::JoinHandle<()>> {
    let mut winch =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()?;
    let (conn, id) = (conn.clone(), id.to_string());
    Some(tokio::spawn(async move {
        let mut t = TasksClient::new(conn.channel.clone());
        let mut last = None;
        loop {
            let now = window_size();
            if let Some((w, h)) = now.filter(|_| now != last) {
                last = now;
                let _ = t
                    .resize_pty(conn.req(ResizePtyRequest {
                        container_id: id.clone(),
                        exec_id: String::new(),
                        width: w,
                        height: h,
                    }))
                    .await;
            }
            if winch.recv().await.is_none() {
                return;
            }
        }
    }))
}

async fn run_task(conn: &Conn, a: &Args, t: &mut Timings) -> anyhow::Result<i32> {
    let mut tasks = TasksClient::new(conn.channel.clone());
    let (mut stdin, mut stdout, mut stderr) = (String::new(), String::new(), String::new());
    let fifo_dir = a
        .fifo_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("berthctl-{}-{}", a.id, std::process::id()));
    let mut copies = Vec::new();
    // Our write ends of the output FIFOs, held until the shim has opened its own.
    let mut placeholders = Vec::new();
    if !a.detach {
        std::fs::create_dir_all(&fifo_dir).with_context(|| format!("{}", fifo_dir.display()))?;
        let out = fifo_dir.join("stdout");
        mkfifo(&out)?;
        stdout = out.display().to_string();
        let (w, c) = OutFifo::open(&out)?.copy_to(std::io::stdout());
        placeholders.push(w);
        copies.push(c);
        if !a.tty {
            let err = fifo_dir.join("stderr");
            mkfifo(&err)?;
            stderr = err.display().to_string();
            let (w, c) = OutFifo::open(&err)?.copy_to(std::io::stderr());
            placeholders.push(w);
            copies.push(c);
        }
        if a.interactive || a.tty {
            let inp = fifo_dir.join("stdin");
            mkfifo(&inp)?;
            stdin = inp.display().to_string();
            let p = inp.clone();
            std::thread::spawn(move || {
                if let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).open(&p) {
                    let mut buf = [0u8; 4096];
                    let mut input = std::io::stdin();
                    while let Ok(n) = input.read(&mut buf) {
                        if n == 0 || f.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            });
        }
    }
    t.step("fifos");
    let created = tasks
        .create(conn.req(CreateTaskRequest {
            container_id: a.id.clone(),
            stdin,
            stdout,
            stderr,
            terminal: a.tty,
            ..Default::default()
        }))
        .await;
    // The shim holds its write ends now (or never will): the copies end when it lets go.
    drop(placeholders);
    let created = match created {
        Ok(c) => c.into_inner(),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&fifo_dir);
            return Err(e.into());
        }
    };
    t.step("task create");
    let mut waiter = tasks.clone();
    let wait_req = conn.req(WaitRequest {
        container_id: a.id.clone(),
        exec_id: String::new(),
    });
    let wait = tokio::spawn(async move { waiter.wait(wait_req).await });
    let _raw = a.tty.then(RawTerminal::enter);
    tasks
        .start(conn.req(StartRequest {
            container_id: a.id.clone(),
            exec_id: String::new(),
        }))
        .await?;
    t.step("task start");
    if a.detach {
        println!("{} {}", a.id, created.pid);
        return Ok(0);
    }
    let resizes = if a.tty {
        follow_window_size(conn, &a.id)
    } else {
        None
    };
    let status = wait.await??.into_inner().exit_status;
    t.step("task wait");
    if let Some(r) = resizes {
        r.abort();
    }
    // The output is whole when the copies reach end of file: the shim closes its ends once
    // the process's output has drained. A process that left a child holding its output open
    // keeps them going: the task's delete ends that, and the copies with it.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        for c in copies {
            let _ = c.join();
        }
        let _ = done_tx.send(());
    });
    let mut done_rx = done_rx;
    let drained = tokio::time::timeout(std::time::Duration::from_secs(2), &mut done_rx)
        .await
        .is_ok();
    t.step("output drained");
    drop(_raw);
    let _ = tasks
        .delete(conn.req(DeleteTaskRequest {
            container_id: a.id.clone(),
        }))
        .await;
    if !drained {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), done_rx).await;
    }
    t.step("task delete");
    let _ = std::fs::remove_dir_all(&fifo_dir);
    Ok(status as i32)
}
