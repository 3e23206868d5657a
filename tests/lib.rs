//! Helpers for Berth's end-to-end tests: run `berthd` as a process in a temporary root, drive it
//! with `ctr` and `berthctl`, and clean up everything a test started, by PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use berth_runtime::pidfd::signal_if;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/e2e-<hash> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary; panics with a hint if it was not built.
/// The host has cgroup v2 alone (a unified hierarchy at /sys/fs/cgroup).
pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The memory line `ctr task metrics` prints: v1 metrics' name, or v2's on a cgroup v2-only
/// host (the shims pack what the host has).
pub fn memory_metric() -> &'static str {
    if cgroup_v2() {
        "memory.usage "
    } else {
        "memory.usage_in_bytes"
    }
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

/// A `berthd` process with its own root, state directory and socket.
#[derive(Debug)]
pub struct Daemon {
    /// Temporary directory holding root, state, socket and log.
    pub dir: tempfile::TempDir,
    /// The gRPC socket.
    pub sock: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    config: String,
    /// Runs in a private mount namespace with `<dir>/run` bound over `/run` (for containerd's
    /// Go shim, which insists on `/run/containerd`).
    private_run: bool,
    /// Extra environment for the daemon (and so for the shims it starts).
    env: Vec<(String, String)>,
    /// How each earlier run of this daemon ended (for the report of a failed test).
    runs: Vec<String>,
    /// Length of the log when the current run started.
    log_start: usize,
    /// [`Daemon::finish`] ran.
    finished: bool,
}

impl Daemon {
    /// Starts a daemon with the embedded defaults and temporary paths.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts a daemon that runs containers: in a private mount namespace with a temporary
    /// directory over `/run`, so shims and container mounts stay out of the host's.
    pub fn start_for_tasks() -> Daemon {
        Daemon::start_for_tasks_with_env(&[])
    }

    /// As [`Daemon::start_for_tasks`], with extra environment variables for the daemon.
    pub fn start_for_tasks_with_env(env: &[(&str, &str)]) -> Daemon {
        Daemon::start_for_tasks_with("", env)
    }

    /// As [`Daemon::start_for_tasks`], with a configuration file's text and environment.
    pub fn start_for_tasks_with(config: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_for_tasks_full(config, env, None)
    }

    /// As [`Daemon::start_for_tasks_with_env`], serving on `sock` (somewhere the test chose,
    /// e.g. a directory shared with another daemon's socket) instead of in its own directory.
    pub fn start_for_tasks_at(sock: &Path, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_for_tasks_full("", env, Some(sock.to_path_buf()))
    }

    fn start_for_tasks_full(config: &str, env: &[(&str, &str)], sock: Option<PathBuf>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("run")).expect("run dir");
        let sock = sock.unwrap_or_else(|| dir.path().join("berthd.sock"));
        let mut d = Daemon {
            dir,
            sock,
            child: None,
            extra_args: Vec::new(),
            config: config.to_string(),
            private_run: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            runs: Vec::new(),
            log_start: 0,
            finished: false,
        };
        d.spawn();
        d
    }

    /// A directory for ctr's FIFOs (`--fifo-dir`).
    pub fn fifo_dir(&self) -> PathBuf {
        let p = self.dir.path().join("fifo");
        std::fs::create_dir_all(&p).expect("fifo dir");
        p
    }

    /// Starts a daemon with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Daemon {
        Daemon::start_with_config("", args)
    }

    /// Starts a daemon with a configuration file's text and extra arguments. Paths given as flags
    /// (root, state, address) override the file.
    pub fn start_with_config(config: &str, args: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .expect("tempdir");
        let sock = dir.path().join("berthd.sock");
        let mut d = Daemon {
            dir,
            sock,
            child: None,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            config: config.to_string(),
            private_run: false,
            env: Vec::new(),
            runs: Vec::new(),
            log_start: 0,
            finished: false,
        };
        d.spawn();
        d
    }

    /// The root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("berthd.log")).unwrap_or_default()
    }

    /// Waits until the daemon has logged a finished garbage collection: called right after a
    /// start, the one every start schedules (it would take unleased, unlabelled things a test
    /// makes before it runs).
    pub fn wait_startup_collection(&self) {
        wait_for("the start-up garbage collection", || {
            self.log()
                .get(self.log_start..)
                .is_some_and(|l| l.contains("garbage collected"))
        });
    }

    /// PID of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("berthd.log"))
            .expect("log file");
        self.log_start = log.metadata().map_or(0, |m| m.len() as usize);
        // By default an empty config file: the daemon runs on its embedded defaults plus our flags.
        std::fs::write(self.dir.path().join("config.toml"), &self.config).expect("config file");
        let mut cmd = if self.private_run {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount --bind '{}' /run && exec \"$0\" \"$@\"",
                    self.dir.path().join("run").display()
                ))
                .arg(bin("berthd"));
            c
        } else {
            Command::new(bin("berthd"))
        };
        let child = cmd
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .args(["--root", &self.root().display().to_string()])
            .args([
                "--state",
                &self.dir.path().join("state").display().to_string(),
            ])
            .args(["--address", &self.sock.display().to_string()])
            .args(["--log-level", "debug"])
            .args(&self.extra_args)
            .env_remove("BERTH_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning berthd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("berthd exited with {st} before serving:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "berthd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on the PID of our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                self.runs
                    .push(format!("stopped by the test (SIGTERM): {st}"));
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.runs
                    .push("did not stop on SIGTERM within 20 s: killed".to_string());
                panic!("berthd did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the daemon (a crash).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        self.runs.push("killed by the test (SIGKILL)".to_string());
    }

    /// Starts the daemon again on the same root, state and socket.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        self.spawn();
    }

    /// Runs Debian's `ctr` against this daemon.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_ADDRESS")
            .output_within(CLIENT_LIMIT)
            .expect("running ctr (apt-get install containerd)")
    }

    /// Runs `berthctl` against this daemon.
    pub fn berthctl(&self, args: &[&str]) -> Output {
        Command::new(bin("berthctl"))
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .env_remove("BERTH_NAMESPACE")
            .env_remove("BERTH_ADDRESS")
            .output_within(CLIENT_LIMIT)
            .expect("running berthctl")
    }

    /// A gRPC channel to the daemon.
    pub async fn channel(&self) -> Channel {
        channel_to(&self.sock).await
    }
}

/// A gRPC channel to the unix socket `sock` (berthd's, or containerd's).
pub async fn channel_to(sock: &Path) -> Channel {
    let path = sock.to_path_buf();
    Endpoint::try_from("http://berthd.local")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", sock.display()))
}

impl Daemon {
    /// Waits up to 20 s for [`Daemon::leftover_pids`] to be empty (a shim exits just after it
    /// answers Shutdown, not before); fails listing what is left.
    pub fn assert_no_leftover_pids(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self.leftover_pids();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "processes left behind: {left:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PIDs of the processes this daemon's tasks left: shims (their working directory is a
    /// bundle under our state dir) and container inits (the bundles' `init.pid`).
    /// The sockets of this daemon's warm shims (idle shims started ahead of need, each in
    /// `state/warm/<id>`, whose `address` file names its socket).
    pub fn warm_sockets(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("state/warm"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
            .map(|a| PathBuf::from(a.trim().trim_start_matches("unix://")))
            .collect()
    }

    pub fn leftover_pids(&self) -> Vec<i32> {
        let bundles = self.dir.path().join("state/io.containerd.runtime.v2.task");
        let mut pids = Vec::new();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if std::fs::read_link(p.path().join("cwd")).is_ok_and(|c| c.starts_with(&bundles)) {
                    pids.push(pid);
                }
            }
        }
        if let Ok(nss) = std::fs::read_dir(&bundles) {
            for ns in nss.flatten() {
                for b in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    if let Ok(pid) = std::fs::read_to_string(b.path().join("init.pid"))
                        && let Ok(pid) = pid.trim().parse::<i32>()
                    {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }
}

impl Daemon {
    /// SIGKILLs what this daemon's tasks left: each candidate of [`Daemon::leftover_pids`] is
    /// pinned by a pidfd and signalled only if it is still ours: a shim working in one of our
    /// bundles, a child of such a shim, or a process whose root file system was mounted from
    /// under our directory (a container whose shim is gone). A PID from a stale `init.pid` that
    /// the kernel gave to somebody else fails all three.
    fn kill_leftovers(&self) {
        let bundles = self.dir.path().join("state/io.containerd.runtime.v2.task");
        let mut candidates = self.leftover_pids();
        // Warm shims (idle, no task yet) wait in `state/warm/<id>`; they end with their daemon,
        // and are only signalled here if one is still there.
        let warm = self.dir.path().join("state/warm");
        let warm_pids: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|p| p.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|&pid| cwd_under(pid, &warm))
            .collect();
        candidates.extend(&warm_pids);
        let shims: Vec<i32> = candidates
            .iter()
            .copied()
            .filter(|&p| cwd_under(p, &bundles))
            .collect();
        let pinned: Vec<_> = candidates
            .into_iter()
            .filter_map(|pid| {
                let fd = berth_runtime::pidfd::Pidfd::open(pid).ok()?;
                let ours = cwd_under(pid, &bundles)
                    || cwd_under(pid, &warm)
                    || parent_of(pid).is_some_and(|pp| shims.contains(&pp))
                    || root_mounted_from(pid, self.dir.path());
                ours.then_some(fd)
            })
            .collect();
        for fd in &pinned {
            let _ = fd.send_signal(libc::SIGKILL);
        }
    }

    /// Prints what a failed test needs to know about this daemon: how each of its runs ended
    /// (a signal or an exit code), the tail of its log and of its shims' lines in it (shims
    /// write into the daemon's log through each bundle's `log` FIFO); the whole log is copied to
    /// `target/<profile>/e2e-logs/`.
    fn report(&self, now: &str) {
        let log = self.log();
        // Debug and trace lines (HTTP/2 frames, sled's I/O) would bury the story.
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                let head = l.get(..l.len().min(64)).unwrap_or(l);
                !head.contains("DEBUG") && !head.contains("TRACE")
            })
            .collect();
        let tail = |v: &[&str], n: usize| v[v.len().saturating_sub(n)..].join("\n");
        let shim_lines: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("shim: "))
            .collect();
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .replace("::", "-");
        let kept = bin_dir().join("e2e-logs").join(format!(
            "{test}-{}.log",
            self.dir
                .path()
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        ));
        let kept = std::fs::create_dir_all(kept.parent().expect("parent"))
            .and_then(|_| std::fs::write(&kept, &log))
            .map(|_| kept.display().to_string())
            .unwrap_or_else(|e| format!("not kept: {e}"));
        let mut runs = self.runs.clone();
        runs.push(now.to_string());
        eprintln!(
            "==== berthd in {}: {} run(s) ====\n{}\n---- berthd.log, last 60 of {} lines above debug level (all of it: {kept}) ----\n{}\n---- shim lines in it, last 30 of {} ----\n{}\n====",
            self.dir.path().display(),
            runs.len(),
            runs.iter()
                .enumerate()
                .map(|(i, r)| format!("  run {}: {r}", i + 1))
                .collect::<Vec<_>>()
                .join("\n"),
            lines.len(),
            tail(&lines, 60),
            shim_lines.len(),
            tail(&shim_lines, 30),
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Daemon {
    /// What dropping it does, once: reports a failed test's daemon, kills it and what its
    /// tasks left, unmounts what it left under its directory. For holders that must undo more
    /// after their daemon's processes are gone (cgroups).
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let panicking = std::thread::panicking();
        // A daemon that exited while the test still held it died during the test: that is a
        // failure of its own, reported with its exit status.
        let died = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(st) = died {
            self.report(&format!("exited by itself during the test: {st}"));
        } else if panicking {
            self.report(if self.child.is_some() {
                "running when the test failed (killed now)"
            } else {
                "not running when the test failed"
            });
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_leftovers();
        // What a daemon killed mid-apply left mounted here (a restarted one removes them), so
        // that the directory can go.
        for m in mounts_under(self.dir.path()).iter().rev() {
            if let Ok(c) = std::ffi::CString::new(m.as_str()) {
                // SAFETY: a valid path; MNT_DETACH never blocks on users.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if let Some(st) = died
            && !panicking
        {
            panic!(
                "berthd ({}) died during the test: {st} (report above)",
                self.dir.path().display()
            );
        }
    }
}

/// Mount points under `dir` in this mount namespace, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&*dir))
        .map(str::to_owned)
        .collect()
}

/// Whether process `pid` works in a directory under `dir` (a shim runs in its bundle).
pub fn cwd_under(pid: i32, dir: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c.starts_with(dir))
}

/// Whether the root file system of process `pid` was mounted from under `dir` (a container of a
/// daemon rooted there: its `/` is an overlay or bind mount of a snapshot or bundle in `dir`).
pub fn root_mounted_from(pid: i32, dir: &Path) -> bool {
    let dir = dir.display().to_string();
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(4) == Some("/") && l.contains(&dir))
    })
}

/// The parent of process `pid`, from `/proc/<pid>/stat`.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces and parentheses; the fields after it follow the last ')'.
    stat.get(stat.rfind(')')? + 2..)?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Waits up to 20 s for `f` to hold, looking every 50 ms; the test fails naming `what` if it
/// never does. For what the daemon does in its own time (a scheduled garbage collection, an
/// exit event), instead of a fixed sleep.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long one client command may take before its test fails (so a hang fails one test
/// instead of the whole suite's time budget).
pub const CLIENT_LIMIT: Duration = Duration::from_secs(240);

/// `Command::output` with a time limit: the command is killed and the test fails after `limit`.
pub trait OutputWithin {
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output> {
        use std::io::Read;
        fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        }
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = read_all(child.stdout.take().expect("piped stdout"));
        let err = read_all(child.stderr.take().expect("piped stderr"));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{self:?} did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }
}

/// `ctr events` (or `berthctl events`) against a daemon in the background, its lines collected.
/// [`Events::sync`] makes the subscription's state known instead of guessed: it publishes a
/// probe event (creating and removing a uniquely named namespace) and waits until the probe
/// arrives, so everything published before it has arrived too. Stopped on drop (our child).
#[derive(Debug)]
pub struct Events {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    /// How much of `seen` [`Events::sync`] has returned.
    returned: usize,
    sock: PathBuf,
    probes: u32,
}

impl Events {
    /// Starts `ctr events` (`cmd` "ctr") or `berthctl events` ("berthctl") and waits until it
    /// receives events.
    pub fn start(d: &Daemon, cmd: &str) -> Events {
        use std::io::BufRead;
        let mut c = match cmd {
            "ctr" => Command::new("ctr"),
            _ => Command::new(bin("berthctl")),
        };
        let mut child = c
            .arg("--address")
            .arg(&d.sock)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("events client");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut e = Events {
            child,
            lines: rx,
            seen: Vec::new(),
            returned: 0,
            sock: d.sock.clone(),
            probes: 0,
        };
        e.sync();
        // What arrived before the subscription was known to be in place counts too.
        e.returned = 0;
        e
    }

    /// Publishes a probe event and waits (up to 20 s) until it arrives; returns the lines that
    /// came before it and after what the last call returned, the probes' own lines left out.
    /// Until the first probe arrives the subscription may not be in place yet, so it is
    /// repeated every half second.
    pub fn sync(&mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.probes += 1;
            let probe = format!("events-probe-{}-{}", std::process::id(), self.probes);
            let ns = |verb: &str| {
                Command::new("ctr")
                    .arg("--address")
                    .arg(&self.sock)
                    .args(["namespaces", verb, &probe])
                    .output_within(CLIENT_LIMIT)
                    .expect("ctr namespaces")
            };
            ok(ns("create"));
            ok(ns("rm"));
            let retry = Instant::now() + Duration::from_millis(500);
            loop {
                let wait = retry
                    .min(deadline)
                    .saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(wait) {
                    Ok(l) if l.contains(&probe) => {
                        // Its remove event follows; it is dropped with the next call's lines.
                        let out = self.seen[self.returned..]
                            .iter()
                            .filter(|l| !l.contains("events-probe-"))
                            .cloned()
                            .collect();
                        self.returned = self.seen.len();
                        return out;
                    }
                    Ok(l) => self.seen.push(l),
                    Err(_) if Instant::now() < deadline => break,
                    Err(_) => panic!("the event probe never arrived; saw {:#?}", self.seen),
                }
            }
        }
    }

    /// Waits (up to 20 s) until lines containing each of `needles` have arrived; returns every
    /// line so far.
    pub fn wait_for(&mut self, needles: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut missing: Vec<&str> = needles
            .iter()
            .copied()
            .filter(|n| !self.seen.iter().any(|l| l.contains(n)))
            .collect();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    missing.retain(|n| !l.contains(n));
                    self.seen.push(l);
                }
                Err(_) => panic!("events never showed {missing:?}; saw {:#?}", self.seen),
            }
        }
        self.seen.clone()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stdout of a command that must succeed.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr of a command that must fail.
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs shell command `line` on a terminal of its own (`script`'s pty): its output, and its
/// standard output as text without carriage returns.
pub fn on_a_pty(line: &str) -> (Output, String) {
    let out = Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    (out, text)
}

/// A count from environment variable `name` (a test's size knob), else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Adds the namespace header to a request.
pub fn with_ns<T>(ns: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().expect("header value"));
    r
}

/// Applets linked into test root file systems.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "true", "false", "echo", "sleep", "cat", "ls", "env", "id", "hostname",
];

/// Writes an OCI bundle at `bundle`: a busybox root file system (from Debian's busybox-static)
/// and runc's default `config.json`, with `args` as the process and `cgroups_path` set.
pub fn busybox_bundle(bundle: &Path, args: &[&str], cgroups_path: &str) {
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dirs");
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copy /bin/busybox (apt-get install busybox-static)");
    for a in BUSYBOX_APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).expect("applet link");
    }
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
        serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("json");
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = args.iter().map(|s| serde_json::Value::from(*s)).collect();
    spec["linux"]["cgroupsPath"] = cgroups_path.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json"))
        .expect("write config.json");
}

/// Removes cgroup `path` from every v1 hierarchy (and the v2 mount), with every empty cgroup
/// under it, deepest first, if a test left them (a cgroup with processes stays).
pub fn remove_cgroup(path: &str) {
    let rel = path.trim_start_matches('/');
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            remove_cgroup_tree(&e.path().join(rel));
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The cgroups under `path` in the memory hierarchy (v1), or the v2 mount: what containers
/// deleted by a test should not have left.
pub fn cgroup_children(path: &str) -> Vec<String> {
    let rel = path.trim_start_matches('/');
    ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"]
        .iter()
        .flat_map(|root| {
            std::fs::read_dir(Path::new(root).join(rel))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().display().to_string())
        .collect()
}

/// Removes the cgroup a test's containers live under (their namespace's, `/<ns>`) when
/// dropped, even when the test fails.
#[derive(Debug)]
pub struct CgroupCleanup(pub &'static str);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        remove_cgroup(self.0);
    }
}

/// sha256 digest string of `data`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A test image written as an OCI image layout archive.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The name it is imported under (`io.containerd.image.name`).
    pub name: String,
    /// Manifest digest (the image target).
    pub manifest: String,
    /// Manifest size.
    pub manifest_size: i64,
    /// Config digest.
    pub config: String,
    /// Layer digests, in order.
    pub layers: Vec<String>,
    /// Total of manifest, config and layer sizes (what `ctr images ls` shows).
    pub total_size: i64,
}

fn tar_file(b: &mut tar::Builder<impl std::io::Write>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).expect("tar entry");
}

/// A gzip layer holding busybox and applet links, plus `extra` files.
pub fn busybox_layer(extra: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    let mut raw = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw);
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_mtime(0);
        dir.set_size(0);
        b.append_data(&mut dir.clone(), "bin/", std::io::empty())
            .expect("dir");
        let bb =
            std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
        tar_file(&mut b, "bin/busybox", &bb, 0o755);
        for a in BUSYBOX_APPLETS {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_mtime(0);
            h.set_size(0);
            b.append_link(&mut h, format!("bin/{a}"), "busybox")
                .expect("link");
        }
        for (p, d) in extra {
            tar_file(&mut b, p, d, 0o644);
        }
        b.finish().expect("tar");
    }
    gzip_layer(&raw)
}

/// A gzip layer of `files` (path, contents; mode 0644): the blob and its diff id.
pub fn files_layer(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    let mut raw = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw);
        for (p, d) in files {
            tar_file(&mut b, p, d, 0o644);
        }
        b.finish().expect("tar");
    }
    gzip_layer(&raw)
}

/// A tar compressed as a layer blob: the blob and the tar's digest (its diff id).
fn gzip_layer(raw: &[u8]) -> (Vec<u8>, String) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, raw).expect("gzip");
    (gz.finish().expect("gzip"), sha256(raw))
}

/// Writes an OCI layout archive of a busybox image named `name` at `path`. `extra` files go in a
/// second layer (so images can differ and share the busybox layer).
pub fn busybox_oci_archive(path: &Path, name: &str, extra: &[(&str, &[u8])]) -> TestImage {
    let mut layers = vec![busybox_layer(&[])];
    if !extra.is_empty() {
        layers.push(files_layer(extra));
    }
    let layers: Vec<(Vec<u8>, String, &str)> = layers
        .into_iter()
        .map(|(l, d)| (l, d, "application/vnd.oci.image.layer.v1.tar+gzip"))
        .collect();
    oci_archive(path, name, &layers)
}

/// Writes an OCI layout archive of an image named `name` made of `layers` (blob, diff id, media
/// type), for this host's platform.
pub fn oci_archive(path: &Path, name: &str, layers: &[(Vec<u8>, String, &str)]) -> TestImage {
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.1.clone()).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).expect("json");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": layers.iter().map(|(l, _, mt)| serde_json::json!({
            "mediaType": mt, "digest": sha256(l), "size": l.len()
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).expect("json");
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    });
    let file = std::fs::File::create(path).expect("archive file");
    let mut b = tar::Builder::new(file);
    tar_file(
        &mut b,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    );
    tar_file(
        &mut b,
        "index.json",
        &serde_json::to_vec(&index).expect("json"),
        0o644,
    );
    let mut blobs: Vec<&[u8]> = vec![&manifest, &config];
    blobs.extend(layers.iter().map(|(l, _, _)| l.as_slice()));
    for blob in blobs {
        let d = sha256(blob);
        tar_file(&mut b, &format!("blobs/sha256/{}", &d[7..]), blob, 0o644);
    }
    b.finish().expect("archive");
    TestImage {
        name: name.to_string(),
        manifest: sha256(&manifest),
        manifest_size: manifest.len() as i64,
        config: sha256(&config),
        total_size: (manifest.len()
            + config.len()
            + layers.iter().map(|l| l.0.len()).sum::<usize>()) as i64,
        layers: layers.iter().map(|(l, _, _)| sha256(l)).collect(),
    }
}

/// Every blob file in a daemon root's content store: digest → size, each checked against its name.
/// A blob the daemon's garbage collector removes while this looks is left out.
pub fn blobs_on_disk(root: &Path) -> std::collections::BTreeMap<String, u64> {
    let dir = root.join("content/blobs/sha256");
    let mut out = std::collections::BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let data = match std::fs::read(e.path()) {
                Ok(d) => d,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => panic!("read blob {}: {err}", e.path().display()),
            };
            let d = sha256(&data);
            assert_eq!(
                d,
                format!("sha256:{name}"),
                "blob file {} holds other bytes",
                e.path().display()
            );
            out.insert(d, data.len() as u64);
        }
    }
    out
}

/// Debian's `docker-registry` on a free loopback port with temporary storage; stopped by PID.
#[derive(Debug)]
pub struct Registry {
    _dir: tempfile::TempDir,
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    secure: Option<Secure>,
}

/// Credentials and certificates of a registry started with [`Registry::start_secure`].
#[derive(Debug, Clone)]
pub struct Secure {
    /// User name accepted by the registry's htpasswd file.
    pub user: String,
    /// Its password.
    pub password: String,
    /// PEM file of the test CA that signed the registry's certificate.
    pub ca: PathBuf,
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (ca_key, ca, key, csr, cert, ext) = (
        dir.join("ca.key"),
        dir.join("ca.crt"),
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.crt"),
        dir.join("ext.cnf"),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=berth test CA", "-keyout"])
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
        "openssl CA",
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        "openssl CSR",
    );
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("ext");
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-out")
            .arg(&cert)
            .arg("-extfile")
            .arg(&ext),
        "openssl sign",
    );
    (ca, cert, key)
}

impl Registry {
    /// Starts a registry and waits until it answers.
    pub fn start() -> Registry {
        Registry::spawn(None).0
    }

    /// Starts a registry that wants basic auth (htpasswd, bcrypt) over TLS with a test CA.
    pub fn start_secure() -> (Registry, Secure) {
        let (r, s) = Registry::spawn(Some(()));
        (r, s.expect("secure registry"))
    }

    fn spawn(secure: Option<()>) -> (Registry, Option<Secure>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let host = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        let mut sec = None;
        if secure.is_some() {
            let (ca, cert, key) = test_certificates(dir.path());
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            let (user, password) = ("berth".to_string(), "s3cret-pw".to_string());
            // bcrypt, which the registry requires, from the C library's crypt(3).
            let hash = run_ok(
                Command::new("python3").args([
                    "-W",
                    "ignore",
                    "-c",
                    "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                    &password,
                ]),
                "bcrypt hash",
            );
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}\n", hash.trim())).expect("htpasswd");
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            ));
            sec = Some(Secure { user, password, ca });
        }
        std::fs::write(&cfg, yaml).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        (
            Registry {
                _dir: dir,
                child,
                host,
                secure: sec.clone(),
            },
            sec,
        )
    }

    /// Pushes an OCI archive as `<host>/<repo>`.
    pub fn push(&self, archive: &Path, repo: &str) -> String {
        let reference = format!("{}/{repo}", self.host);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"]);
        if let Some(s) = &self.secure {
            cmd.arg(format!("--dest-creds={}:{}", s.user, s.password));
        }
        let out = cmd
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .expect("skopeo (apt-get install skopeo)");
        assert!(
            out.status.success(),
            "skopeo push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on loopback that slows down (or stalls) what the upstream sends: for tests of
/// interrupted, resumed and stalled downloads. Stops accepting when dropped.
#[derive(Debug)]
pub struct SlowProxy {
    /// `127.0.0.1:<port>` to connect to instead of the upstream.
    pub host: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowProxy {
    /// Forwards to `upstream`, sending at most `bytes_per_sec` downstream per connection, and
    /// nothing more after `stall_after` bytes of one response connection (if given).
    pub fn start(upstream: &str, bytes_per_sec: u64, stall_after: Option<u64>) -> SlowProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let host = listener.local_addr().expect("addr").to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let upstream = upstream.to_string();
        let stop2 = stop.clone();
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let (client, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let stop3 = stop2.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut sent = 0u64;
                    let started = Instant::now();
                    loop {
                        if stop3.load(Ordering::Relaxed) {
                            return;
                        }
                        if stall_after.is_some_and(|s| sent >= s) {
                            // Hold the connection open, sending nothing.
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        let n = match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        let due = Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        SlowProxy { host, stop }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Builds an OCI archive with `hack/mkimage.py`, one gzip layer per directory.
pub fn mkimage(out: &Path, name: &str, dirs: &[&Path]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/mkimage.py");
    let status = Command::new("python3")
        .arg(script)
        .arg(out)
        .arg(name)
        .args(dirs)
        .stdout(Stdio::null())
        .status()
        .expect("python3");
    assert!(status.success(), "mkimage.py failed");
}

/// Debian's containerd, private: its own root, state and socket, run in a private mount
/// namespace with a temp dir over `/run` (containerd 1.6 insists on `/run/containerd`), the CRI
/// plugin disabled. Stopped by PID.
#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// Its gRPC socket.
    pub sock: PathBuf,
}

impl Containerd {
    /// Starts it and waits for its socket.
    pub fn start() -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-containerd-")
            .tempdir()
            .expect("tempdir");
        let p = dir.path();
        let sock = p.join("containerd.sock");
        std::fs::create_dir_all(p.join("run")).expect("run dir");
        let cfg = p.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}.ttrpc\"\n",
                p.join("root").display(),
                p.join("state").display(),
                sock.display(),
                sock.display()
            ),
        )
        .expect("containerd config");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind '{}' /run && exec containerd --config '{}'",
                p.join("run").display(),
                cfg.display()
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p.join("containerd.log")).expect("log"))
            .spawn()
            .expect("containerd (apt-get install containerd)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd { dir, child, sock }
    }

    /// Runs `ctr` against it.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_ADDRESS")
            .output()
            .expect("running ctr")
    }

    /// Its root directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Reaps it if it has exited (after which its PID must not be signalled).
        let exited = self.child.try_wait().ok().flatten();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "==== containerd in {} ({}) ====\n{}\n====",
                self.dir.path().display(),
                exited.map_or("running when the test failed".to_string(), |st| format!(
                    "exited during the test: {st}"
                )),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        if exited.is_some() {
            return;
        }
        // SAFETY: kill(2) on the PID of a child we started and have not reaped (try_wait above
        // found it running), so the PID is still its own.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mount made by running a `mount` command line (as `ctr snapshots mounts` prints one),
/// unmounted on drop.
#[derive(Debug)]
pub struct CmdMount {
    target: PathBuf,
}

impl CmdMount {
    /// Runs `cmdline` (a `mount ...` command) with `sh`; `target` is where it mounts.
    pub fn run(cmdline: &str, target: &Path) -> CmdMount {
        std::fs::create_dir_all(target).expect("mount point");
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmdline)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{cmdline}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        CmdMount {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for CmdMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.target).status();
    }
}
