//! Interop: Debian's containerd 1.6 runs containers through our shim
//! (`ctr run --runtime io.containerd.berth.v2`, the shim found on PATH).
//!
//! containerd 1.6 hard-codes paths under /run, so it runs in a private mount namespace with a
//! temporary directory bound over /run; its root, state and sockets live in the test's temp dir.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

/// The containerd namespaces of the tests, one each: a namespace is also the cgroup parent of
/// its containers (`/<ns>/<id>`), which a test's clean-up empties.
const CNS: &str = "berth-interop";
const CNS_RUNC: &str = "berth-interop-rc";
const IMAGE: &str = "berth.test/busybox:latest";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn tar_file(b: &mut tar::Builder<impl std::io::Write>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

/// An OCI image-layout archive of a one-layer busybox image, for `ctr images import`.
fn busybox_archive(path: &Path) {
    let mut raw = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw);
        for d in ["bin/", "tmp/", "etc/"] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, d, std::io::empty()).unwrap();
        }
        tar_file(
            &mut b,
            "bin/busybox",
            &std::fs::read("/bin/busybox").unwrap(),
            0o755,
        );
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for a in String::from_utf8_lossy(&list.stdout).lines() {
            if a.is_empty() || a == "busybox" {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, format!("bin/{a}"), "busybox")
                .unwrap();
        }
        b.finish().unwrap();
    }
    let diff_id = sha256(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let layer = gz.finish().unwrap();
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "latest"},
        }],
    }))
    .unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    tar_file(
        &mut b,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    );
    tar_file(&mut b, "index.json", &index, 0o644);
    for blob in [&manifest, &config, &layer] {
        tar_file(
            &mut b,
            &format!("blobs/sha256/{}", &sha256(blob)[7..]),
            blob,
            0o644,
        );
    }
    b.finish().unwrap();
}

/// A private containerd, and everything it started, killed and removed on drop.
struct Containerd {
    dir: tempfile::TempDir,
    child: std::process::Child,
    pid: u32,
    sock: PathBuf,
    /// The namespace ctr works in.
    ns: &'static str,
}

impl Containerd {
    fn start(ns: &'static str) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("berth-ctrd-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("run")).unwrap();
        std::fs::create_dir_all(d.join("fifo")).unwrap();
        let sock = d.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{r}\"\nstate = \"{s}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{a}\"\n[ttrpc]\n  address = \"{a}.ttrpc\"\n",
            r = d.join("root").display(),
            s = d.join("state").display(),
            a = sock.display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let shim_dir = Path::new(crate::harness::SHIM).parent().unwrap();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let script = format!(
            "mount --bind {run} /run && exec containerd --config {cfg}",
            run = d.join("run").display(),
            cfg = d.join("config.toml").display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd (apt-get install containerd)");
        let c = Containerd {
            pid: child.id(),
            child,
            dir,
            sock,
            ns,
        };
        let until = Instant::now() + Duration::from_secs(20);
        while !c.sock.exists() {
            assert!(
                Instant::now() < until,
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(["-n", self.ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n--- containerd log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr <args>` on a terminal (ctr -t needs a console on its stdin: script(1) gives it one);
    /// the exit status and what the terminal showed.
    fn ctr_on_a_tty(&self, args: &str) -> (bool, String) {
        let cmd = format!(
            "ctr --address {} -n {} {args}",
            self.sock.display(),
            self.ns
        );
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `ctr task exec --exec-id <exec_id> <id> <args>`.
    fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Output {
        let fifo = self.fifo_dir();
        let mut all = vec![
            "task",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            exec_id,
            id,
        ];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    /// [`Containerd::exec`] that must succeed; its stdout.
    fn exec_ok(&self, id: &str, exec_id: &str, args: &[&str]) -> String {
        let out = self.exec(id, exec_id, args);
        assert!(
            out.status.success(),
            "exec {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A foreground `ctr run` ended with `code` and printed `stdout`.
    fn assert_exit(&self, out: &Output, code: i32, stdout: &str) {
        assert_eq!(
            out.status.code(),
            Some(code),
            "ctr run: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), stdout);
    }

    fn assert_no_rootfs_mounts(&self) {
        let mounts: Vec<String> = self
            .mounts()
            .into_iter()
            .filter(|m| m.contains("rootfs"))
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    }

    /// SIGKILL to a task, wait until it stopped, remove task and container.
    fn kill_and_remove(&self, id: &str) {
        self.ok(&["task", "kill", "-s", "SIGKILL", id]);
        let until = Instant::now() + Duration::from_secs(10);
        while task_status(self, id) != "STOPPED" {
            assert!(Instant::now() < until, "task {id} did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.ok(&["task", "rm", id]);
        self.ok(&["containers", "rm", id]);
    }

    fn fifo_dir(&self) -> String {
        self.dir.path().join("fifo").display().to_string()
    }

    /// Our shims serving this containerd: processes whose command line names its socket.
    fn shims(&self) -> Vec<i32> {
        self.shims_named("containerd-shim-berth-v2")
    }

    /// Shims of a binary name serving this containerd.
    fn shims_named(&self, name: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if self.is_shim(pid, name) {
                out.push(pid);
            }
        }
        out
    }

    /// Whether process `pid` is a shim of binary `name` whose command line names our socket.
    fn is_shim(&self, pid: i32, name: &str) -> bool {
        let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let mut cmd = Vec::new();
        let _ = f.read_to_end(&mut cmd);
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        cmd.contains(name) && cmd.contains(&self.sock.display().to_string())
    }

    /// Mounts under this containerd's directories, as its mount namespace sees them.
    fn mounts(&self) -> Vec<String> {
        let info =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid)).unwrap_or_default();
        let d = self.dir.path().display().to_string();
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&d))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for name in ["containerd-shim-berth-v2", "containerd-shim-runc-v2"] {
            for pid in self.shims_named(name) {
                // A shim of this containerd (which the test started), found by its socket, and
                // checked again once pinned.
                berth_runtime::pidfd::signal_if(pid, libc::SIGKILL, |p| self.is_shim(p, name));
            }
        }
        // Our shim's runtime root, and the Go shim's (/run/containerd/runc in containerd's view).
        for runc_root in [
            self.dir.path().join("runc").join(self.ns),
            self.dir.path().join("run/containerd/runc").join(self.ns),
        ] {
            if let Ok(entries) = std::fs::read_dir(&runc_root) {
                for e in entries.flatten() {
                    let _ = Command::new(crate::harness::runtime())
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "--force"])
                        .arg(e.file_name())
                        .output();
                }
            }
        }
        // The containerd the test started (our child); its mounts go with its namespace.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let cg = Path::new("/sys/fs/cgroup");
        if let Ok(entries) = std::fs::read_dir(cg) {
            for e in entries.flatten() {
                if let Ok(ids) = std::fs::read_dir(e.path().join(self.ns)) {
                    for id in ids.flatten() {
                        let _ = std::fs::remove_dir(id.path());
                    }
                }
                let _ = std::fs::remove_dir(e.path().join(self.ns));
            }
        }
    }
}

fn task_status(c: &Containerd, id: &str) -> String {
    c.ok(&["task", "ls"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn containerd_runs_containers_through_our_shim() {
    let c = Containerd::start(CNS);
    let archive = c.dir.path().join("busybox.tar");
    busybox_archive(&archive);
    c.ok(&["images", "import", archive.to_str().unwrap()]);
    let rt = "io.containerd.berth.v2";
    let fifo = c.fifo_dir();
    // `ctr run <how> <id> <args>` of the test image through our shim.
    let run = |how: &str, id: &str, args: &[&str]| {
        let mut all = vec!["run", how, "--fifo-dir", &fifo, "--runtime", rt, IMAGE, id];
        all.extend_from_slice(args);
        c.ctr(&all)
    };

    // Foreground run: output and exit code come back through ctr.
    let script = "echo hi from berth; echo to-stderr >&2; exit 3";
    let out = run("--rm", "fg", &["sh", "-c", script]);
    c.assert_exit(&out, 3, "hi from berth\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));

    // Detached: ls, exec, pause/resume, ps, metrics, kill, rm.
    let out = run("-d", "bg", &["sleep", "1000"]);
    assert!(out.status.success(), "ctr run -d: {}", c.log());
    assert_eq!(task_status(&c, "bg"), "RUNNING");
    assert_eq!(c.shims().len(), 1, "one berth shim serves the container");
    let out = c.exec_ok("bg", "e1", &["sh", "-c", "echo exec-out"]);
    assert_eq!(out, "exec-out\n");
    let out = c.exec("bg", "e2", &["sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9));
    c.ok(&["task", "pause", "bg"]);
    assert_eq!(task_status(&c, "bg"), "PAUSED");
    c.ok(&["task", "resume", "bg"]);
    assert_eq!(task_status(&c, "bg"), "RUNNING");
    let ps = c.ok(&["task", "ps", "bg"]);
    assert!(ps.lines().count() >= 2, "task ps: {ps}");
    let metrics = c.ok(&["task", "metrics", "bg"]);
    assert!(metrics.contains(memory_metric()), "task metrics: {metrics}");
    c.kill_and_remove("bg");

    // A terminal.
    let (ok, text) = c.ctr_on_a_tty(&format!(
        "run --rm -t --fifo-dir {fifo} --runtime {rt} {IMAGE} tty sh -c 'tty; exit 0'"
    ));
    assert!(ok, "ctr run -t: {text}\n{}", c.log());
    assert!(text.contains("/dev/pts/"), "ctr run -t output: {text:?}");

    // Churn: run/rm cycles, then nothing may be left.
    for i in 0..10 {
        let id = format!("churn{i}");
        let out = run("--rm", &id, &["true"]);
        assert!(
            out.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Nothing left: no shim, no mount, no container.
    let until = Instant::now() + Duration::from_secs(10);
    while !c.shims().is_empty() {
        assert!(
            Instant::now() < until,
            "shims left running: {:?}",
            c.shims()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.assert_no_rootfs_mounts();
    assert_eq!(c.ok(&["containers", "ls", "-q"]).trim(), "");
    for ctrl in ["memory", "pids"] {
        let dir = Path::new("/sys/fs/cgroup").join(ctrl).join(c.ns);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "cgroups left in {}: {left:?}",
            dir.display()
        );
    }
}

/// The other direction of runtime interop: Debian's `containerd-shim-runc-v2` with `BinaryName` =
/// our `berth-runc` (`ctr run --runc-binary`), foreground and detached, with and without a terminal.
#[test]
fn the_go_shim_runs_containers_with_berth_runc() {
    let berth_runc = Path::new(crate::harness::SHIM).with_file_name("berth-runc");
    assert!(
        berth_runc.is_file(),
        "build berth-runc (cargo build --workspace --bins)"
    );
    let br = berth_runc.to_str().unwrap();
    let c = Containerd::start(CNS_RUNC);
    let archive = c.dir.path().join("busybox.tar");
    busybox_archive(&archive);
    c.ok(&["images", "import", archive.to_str().unwrap()]);
    let fifo = c.fifo_dir();
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--runc-binary", br, "--fifo-dir", &fifo];
        all.extend_from_slice(args);
        c.ctr(&all)
    };

    let out = run(&[
        "--rm",
        IMAGE,
        "rc-fg",
        "sh",
        "-c",
        "echo hi from berth-runc; exit 3",
    ]);
    c.assert_exit(&out, 3, "hi from berth-runc\n");

    let out = run(&["-d", IMAGE, "rc-bg", "sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(task_status(&c, "rc-bg"), "RUNNING");
    // It is berth-runc's state (runc's has no `pid_start`) that the Go shim keeps.
    let state = c
        .dir
        .path()
        .join("run/containerd/runc")
        .join(c.ns)
        .join("rc-bg/state.json");
    let state = std::fs::read_to_string(&state).unwrap_or_default();
    assert!(state.contains("\"pid_start\""), "{state}");
    let out = c.exec_ok("rc-bg", "e1", &["sh", "-c", "echo exec-out"]);
    assert_eq!(out, "exec-out\n");
    let st = c.exec("rc-bg", "e2", &["/no/such/binary"]);
    assert!(!st.status.success());
    assert!(
        String::from_utf8_lossy(&st.stderr).contains("no such file or directory"),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (_, text) = c.ctr_on_a_tty(&format!(
        "task exec -t --fifo-dir {fifo} --exec-id t1 rc-bg sh -c 'tty; echo exec-tty'"
    ));
    assert!(
        text.contains("/dev/pts/") && text.contains("exec-tty"),
        "{text}"
    );
    c.ok(&["task", "pause", "rc-bg"]);
    assert_eq!(task_status(&c, "rc-bg"), "PAUSED");
    c.ok(&["task", "resume", "rc-bg"]);
    assert_eq!(task_status(&c, "rc-bg"), "RUNNING");
    let metrics = c.ok(&["task", "metrics", "rc-bg"]);
    assert!(metrics.contains(memory_metric()), "{metrics}");
    c.kill_and_remove("rc-bg");

    let (ok, text) = c.ctr_on_a_tty(&format!(
        "run --runc-binary {br} --rm -t --fifo-dir {fifo} {IMAGE} rc-tty sh -c 'tty; exit 0'"
    ));
    assert!(ok, "ctr run -t: {text}\n{}", c.log());
    assert!(text.contains("/dev/pts/"), "{text:?}");

    let until = Instant::now() + Duration::from_secs(10);
    while !c.shims_named("containerd-shim-runc-v2").is_empty() {
        assert!(Instant::now() < until, "Go shims left running");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.ok(&["containers", "ls", "-q"]).trim(), "");
    c.assert_no_rootfs_mounts();
}

/// The memory line `ctr task metrics` prints: v1 metrics' name, or v2's on a cgroup v2-only
/// host (the shims pack what the host has).
fn memory_metric() -> &'static str {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "memory.usage "
    } else {
        "memory.usage_in_bytes"
    }
}
