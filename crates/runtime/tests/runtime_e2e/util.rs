//! A small DSL for the end-to-end tests: a private state root, busybox bundles, and the
//! runtime binary (ours, or the one `BERTH_RUNC_BIN` names, e.g. /usr/sbin/runc).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

static N: AtomicUsize = AtomicUsize::new(0);

/// The runtime under test.
pub(crate) fn bin() -> PathBuf {
    std::env::var_os("BERTH_RUNC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth-runc")))
}

/// True when `BERTH_RUNC_BIN` points the tests at another runtime.
pub(crate) fn testing_other_runtime() -> bool {
    std::env::var_os("BERTH_RUNC_BIN").is_some()
}

/// The host has cgroup v2 alone (a unified hierarchy at /sys/fs/cgroup).
pub(crate) fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// A unique name for ids and cgroups.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's world: a temp dir holding the state root and bundles. Dropping it force-deletes
/// every container it made.
pub(crate) struct Env {
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) root: PathBuf,
    ids: std::sync::Mutex<Vec<String>>,
}

pub(crate) struct Bundle {
    pub(crate) dir: PathBuf,
    pub(crate) config: Value,
    pub(crate) cgroup: String,
}

impl Bundle {
    pub(crate) fn save(&self) {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    pub(crate) fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// A cgroup file of this bundle's container, named as on cgroup v1; on a v2 host the
    /// file that holds the same setting is read and given in v1's terms (memory.max for
    /// memory.limit_in_bytes, cgroup.freeze for freezer.state).
    pub(crate) fn cgroup_file(&self, ctrl: &str, file: &str) -> String {
        let read = |p: String| {
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("read {p}: {e}"))
                .trim()
                .to_string()
        };
        if !cgroup_v2() {
            return read(format!("/sys/fs/cgroup/{ctrl}{}/{file}", self.cgroup));
        }
        let dir = format!("/sys/fs/cgroup{}", self.cgroup);
        match file {
            "memory.limit_in_bytes" => read(format!("{dir}/memory.max")),
            "freezer.state" => match read(format!("{dir}/cgroup.freeze")).as_str() {
                "1" => "FROZEN".into(),
                _ => "THAWED".into(),
            },
            f => read(format!("{dir}/{f}")),
        }
    }

    /// `pid` is in this bundle's cgroup in every hierarchy (v1 controllers, named ones and the
    /// unified one of a hybrid host).
    pub(crate) fn assert_member(&self, pid: i64) {
        self.assert_cgroup_lines(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap());
    }

    /// Every line of a `/proc/<pid>/cgroup` text names this bundle's cgroup.
    pub(crate) fn assert_cgroup_lines(&self, text: &str) {
        // v1: a line per hierarchy; v2: the one `0::` line.
        let min = if cgroup_v2() { 1 } else { 2 };
        assert!(text.lines().count() >= min, "{text}");
        for line in text.lines() {
            let path = line.splitn(3, ':').nth(2).unwrap_or_default();
            assert!(
                path.ends_with(&self.cgroup),
                "outside {} in {line:?}:\n{text}",
                self.cgroup
            );
        }
    }

    pub(crate) fn cgroup_exists(&self) -> bool {
        if cgroup_v2() {
            return Path::new(&format!("/sys/fs/cgroup{}", self.cgroup)).exists();
        }
        ["memory", "pids", "cpu", "freezer", "devices"]
            .iter()
            .any(|c| Path::new(&format!("/sys/fs/cgroup/{c}{}", self.cgroup)).exists())
    }

    pub(crate) fn args(&mut self, args: &[&str]) -> &mut Self {
        self.config["process"]["args"] = json!(args);
        self.save();
        self
    }
}

impl Env {
    pub(crate) fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("berth-rt-e2e")
            .tempdir()
            .unwrap();
        // Container root in a user namespace must be able to reach the rootfs.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().join("state");
        Env {
            tmp,
            root,
            ids: Default::default(),
        }
    }

    /// A busybox bundle whose process runs `args`.
    pub(crate) fn bundle(&self, args: &[&str]) -> Bundle {
        let dir = self.tmp.path().join(unique("bundle"));
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let cgroup = format!("/{}", unique("berth-e2e"));
        // `berth-runc spec`'s mounts (runc's), with a process and Linux section of our own.
        let status = Command::new(bin())
            .arg("spec")
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "berth-runc spec");
        let spec = std::fs::read(dir.join("config.json")).unwrap();
        let mut config: serde_json::Value = serde_json::from_slice(&spec).unwrap();
        let caps = [
            "CAP_AUDIT_WRITE",
            "CAP_KILL",
            "CAP_NET_BIND_SERVICE",
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_SETUID",
            "CAP_SETGID",
        ];
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["process"]["env"] = json!(["PATH=/bin", "TERM=xterm"]);
        config["process"]["capabilities"] =
            json!({"bounding": caps, "effective": caps, "permitted": caps});
        config["root"]["readonly"] = json!(false);
        config["hostname"] = json!("berth");
        config["linux"] = json!({
            "cgroupsPath": cgroup,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        });
        let b = Bundle {
            dir,
            config,
            cgroup,
        };
        b.save();
        b
    }

    /// A busybox bundle whose process runs `script` in `sh -c`.
    pub(crate) fn sh_bundle(&self, script: &str) -> Bundle {
        self.bundle(&["sh", "-c", script])
    }

    /// Records `id` for cleanup.
    pub(crate) fn track(&self, id: &str) {
        self.ids.lock().unwrap().push(id.to_string());
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// Runs to completion. Output goes through files, not pipes: a created container's init
    /// inherits our stdio and would keep a pipe open until it exits.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let out_path = self.tmp.path().join(unique("stdout"));
        let err_path = self.tmp.path().join(unique("stderr"));
        let status = self
            .cmd(args)
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .unwrap();
        let o = Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(out_path);
        let _ = std::fs::remove_file(err_path);
        o
    }

    /// Runs and expects success; returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs and expects failure; returns stderr.
    pub(crate) fn fail(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "{args:?} unexpectedly succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub(crate) fn create(&self, b: &Bundle, id: &str) {
        self.track(id);
        self.ok(&["create", "--bundle", b.dir.to_str().unwrap(), id]);
    }

    /// `run` in the foreground; returns (exit code, stdout).
    pub(crate) fn run_fg(&self, b: &Bundle, id: &str) -> (i32, String) {
        self.track(id);
        let o = self.run(&["run", "--bundle", b.dir.to_str().unwrap(), id]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    pub(crate) fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub(crate) fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Waits until the status is `want` (up to 5 s).
    pub(crate) fn wait_status(&self, id: &str, want: &str) {
        for _ in 0..500 {
            let o = self.run(&["state", id]);
            if o.status.success() {
                let v: Value = serde_json::from_slice(&o.stdout).unwrap();
                if v["status"] == want {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{id} never reached {want}: {}", self.status(id));
    }

    /// No mount in our namespace refers to this temp dir.
    pub(crate) fn assert_no_mounts(&self) {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = self.tmp.path().to_str().unwrap();
        assert!(!mi.contains(p), "mounts left behind under {p}");
    }

    /// As [`Env::assert_no_mounts`], but for the test's own mount at `ours`.
    pub(crate) fn assert_no_mounts_but(&self, ours: &Path) {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = self.tmp.path().to_str().unwrap();
        let ours = ours.to_str().unwrap();
        let left: Vec<&str> = mi
            .lines()
            .filter(|l| l.contains(p) && !l.contains(ours))
            .collect();
        assert!(left.is_empty(), "mounts left behind under {p}: {left:?}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for id in self.ids.lock().map(|v| v.clone()).unwrap_or_default() {
            let _ = self.cmd(&["delete", "--force", &id]).output();
        }
    }
}

/// Ids that both runtimes accept as names (the others fail before any state exists).
pub(crate) fn validate_like_runc(id: &str) -> bool {
    !id.contains('/') && !id.contains("..")
}
