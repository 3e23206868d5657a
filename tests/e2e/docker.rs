//! Docker on Berth: Debian's dockerd 20.10 with berthd as its containerd and berth-runc as its
//! default runtime (`runtimes` in daemon.json), as an operator would set a node up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::{Daemon, OutputWithin, busybox_layer, ok};

/// A private dockerd inside a berthd's mount namespace (the container root file systems it
/// mounts must be the ones berthd's shims see), with its own data root, exec root, socket,
/// key and cgroup parent, no bridge and no iptables. Stopped on drop (SIGTERM to our child,
/// then SIGKILL), its cgroups removed.
struct Dockerd {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    cgroup: String,
}

impl Dockerd {
    fn start(d: &Daemon, runtimes: &serde_json::Value, default_runtime: &str) -> Dockerd {
        let dir = d.dir.path().join("docker");
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("docker.sock");
        let cgroup = format!("/berth-e2e-docker-{}", std::process::id());
        let config = serde_json::json!({
            "data-root": dir.join("data"),
            "exec-root": dir.join("exec"),
            "pidfile": dir.join("docker.pid"),
            // Its identity key, which dockerd 20.10 would otherwise write to /etc/docker.
            "deprecated-key-path": dir.join("key.json"),
            "hosts": [format!("unix://{}", sock.display())],
            "containerd": d.sock,
            "containerd-namespace": "moby",
            "containerd-plugins-namespace": "moby-plugins",
            "bridge": "none",
            "iptables": false,
            "ip6tables": false,
            "ip-forward": false,
            "ip-masq": false,
            "userland-proxy": false,
            "cgroup-parent": cgroup,
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "storage-driver": "overlay2",
            "runtimes": runtimes,
            "default-runtime": default_runtime,
        });
        std::fs::write(dir.join("daemon.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        // nsenter execs dockerd in place: the child is dockerd itself.
        let child = Command::new("nsenter")
            .args(["-t", &d.pid().to_string(), "-m", "dockerd", "--config-file"])
            .arg(dir.join("daemon.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (apt-get install docker.io)");
        let mut dk = Dockerd {
            child,
            dir,
            sock,
            cgroup,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = dk.child.try_wait() {
                panic!("dockerd exited with {st}:\n{}", dk.log());
            }
            if dk.sock.exists() && dk.docker(&["version"]).status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not start:\n{}",
                dk.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        dk
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", self.dir.join("client"))
            .output_within(Duration::from_secs(120))
            .expect("docker (apt-get install docker.io)")
    }

    /// `docker ARGS` that must succeed: its stdout, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}):\n{}\n---- dockerd.log ----\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "==== dockerd.log, last 40 lines ====\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our child, which try_wait just found running (not reaped).
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Container cgroups below our parent (docker removes them; a failed test may not).
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let parent = e.path().join(self.cgroup.trim_start_matches('/'));
            for c in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                if c.path().is_dir() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A busybox root file system as a tarball for `docker import`.
fn busybox_tarball(dir: &Path) -> PathBuf {
    let (gz, _) = busybox_layer(&[("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")]);
    let p = dir.join("busybox.tar.gz");
    std::fs::write(&p, gz).unwrap();
    p
}

/// dockerd 20.10 with berthd as its containerd and berth-runc as its default runtime: an
/// imported image runs (`run --rm` with its output and exit code), a detached container takes
/// an exec, shows its logs, stops and is removed; berthd held the tasks in docker's `moby`
/// namespace meanwhile, and berth-runc ran them (the Go shim's runc options name it). Docker
/// sends `blockIO.weight = 0` for every container, which this kernel (neither CFQ nor BFQ)
/// has no file for: berth-runc, like runc, does not write a weight of 0.
#[test]
fn docker_runs_containers_on_berthd_with_berth_runc() {
    if Command::new("dockerd").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs docker.io (hack/test.sh installs it)"
        );
        eprintln!("SKIP: no dockerd (apt-get install docker.io)");
        return;
    }
    // dockerd 20.10 always asks for io.containerd.runc.v2: Debian's Go shim, or Berth's shim
    // under that name first on berthd's PATH.
    docker_flow(None);
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        berth_e2e::bin("containerd-shim-berth-v2"),
        bin.path().join("containerd-shim-runc-v2"),
    )
    .unwrap();
    docker_flow(Some(bin.path()));
}

/// The flow of [`docker_runs_containers_on_berthd_with_berth_runc`], with `shim_dir` first on
/// berthd's PATH.
fn docker_flow(shim_dir: Option<&Path>) {
    let path = format!(
        "{}{}",
        shim_dir.map_or(String::new(), |d| format!("{}:", d.display())),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = Daemon::start_for_tasks_with_env(&[("PATH", &path)]);
    let runc = berth_e2e::bin("berth-runc");
    let dk = Dockerd::start(&d, &serde_json::json!({"berth": {"path": runc}}), "berth");
    assert!(
        dk.ok(&["info", "--format", "{{.DefaultRuntime}}"]) == "berth",
        "{}",
        dk.ok(&["info"])
    );
    let tarball = busybox_tarball(d.dir.path());
    dk.ok(&["import", tarball.to_str().unwrap(), "berth-e2e/busybox:1"]);

    // run --rm: output and exit code.
    let out = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "berth-e2e/busybox:1",
        "sh",
        "-c",
        "echo hello-from-docker",
    ]);
    assert!(out.starts_with("hello-from-docker"), "{out}");
    let st = dk.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "berth-e2e/busybox:1",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(st.status.code(), Some(7), "{st:?}");

    // A detached container: exec, logs, berthd's view, stop, rm.
    let id = dk.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "none",
        "--memory",
        "64m",
        "berth-e2e/busybox:1",
        "sh",
        "-c",
        "echo started; exec sleep 1000",
    ]);
    assert_eq!(dk.ok(&["exec", "web", "echo", "exec-ok"]), "exec-ok");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dk.ok(&["logs", "web"]).contains("started") {
        assert!(Instant::now() < deadline, "no log line");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tasks = ok(d.ctr(&["-n", "moby", "task", "ls"]));
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING")),
        "{tasks}"
    );
    // berth-runc ran it: its state (runc's has no `pid_start`) under docker's runtime root.
    let state = std::fs::read_to_string(
        dk.dir
            .join("exec/runtime-runc/moby")
            .join(&id)
            .join("state.json"),
    )
    .unwrap_or_else(|e| panic!("berth-runc's state of {id}: {e}"));
    assert!(state.contains("\"pid_start\""), "{state}");
    let limit = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/memory")
            .join(dk.cgroup.trim_start_matches('/'))
            .join(&id)
            .join("memory.limit_in_bytes"),
    )
    .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    dk.ok(&["stop", "-t", "1", "web"]);
    assert!(
        dk.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])
            .contains("web Exited")
    );
    dk.ok(&["rm", "web"]);
    assert!(dk.ok(&["ps", "-aq"]).is_empty());
    // The shim that ran them (each writes into berthd's log).
    assert_eq!(
        d.log().contains("containerd_shim_berth_v2"),
        shim_dir.is_some(),
        "which shim ran the containers"
    );
    assert!(
        ok(d.ctr(&["-n", "moby", "containers", "ls", "-q"]))
            .trim()
            .is_empty(),
        "docker's containers are gone from berthd too"
    );
}
