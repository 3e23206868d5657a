//! The OCI runtime spec case by case, as runc 1.1 behaves: each test passes unchanged against
//! Debian's runc (`BERTH_RUNC_BIN=/usr/sbin/runc`).

use serde_json::json;

use crate::util::{Env, unique};

/// procfs or sysfs over a symlink could land, with the paths masked under it, anywhere: create
/// fails with runc's words and mounts nothing where the link points.
#[test]
fn proc_or_sys_on_a_symlink_is_refused() {
    for dir in ["proc", "sys"] {
        let env = Env::new();
        let b = env.sh_bundle("true");
        let elsewhere = b.rootfs().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let at = b.rootfs().join(dir);
        std::fs::remove_dir(&at).unwrap();
        std::os::unix::fs::symlink("/elsewhere", &at).unwrap();
        let id = unique("link");
        env.track(&id);
        let err = env.fail(&["run", "--bundle", b.dir.to_str().unwrap(), &id]);
        let fs = if dir == "proc" { "proc" } else { "sysfs" };
        let want = format!("filesystem \\\"{fs}\\\" must be mounted on ordinary directory");
        assert!(err.contains(&want), "{dir}: {err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "{dir}");
        env.assert_no_mounts();
    }
}

/// A failed command reports as runc does: without `--log`, a logrus line on stderr (text, or
/// JSON with `--log-format json`); with `--log`, the line in the file and the bare message on
/// stderr.
#[test]
fn errors_are_reported_as_runc_reports_them() {
    let env = Env::new();
    let missing = env.tmp.path().join("no-bundle");
    let bundle = missing.to_str().unwrap();
    let err = env.fail(&["run", "--bundle", bundle, &unique("err")]);
    let line = err.lines().last().unwrap_or_default();
    assert!(line.starts_with("time=\""), "{err}");
    assert!(line.contains(" level=error msg=\""), "{err}");

    let log = env.tmp.path().join("log.json");
    let o = env.run(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "run",
        "--bundle",
        bundle,
        &unique("err"),
    ]);
    assert!(!o.status.success());
    let logged = std::fs::read_to_string(&log).unwrap();
    let entry: serde_json::Value = serde_json::from_str(logged.lines().last().unwrap()).unwrap();
    assert_eq!(entry["level"], "error", "{logged}");
    let msg = entry["msg"].as_str().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.trim_end(), msg, "stderr has the bare message");
    let t = entry["time"].as_str().unwrap();
    assert!(
        t.ends_with('Z') && t.len() == 20,
        "RFC 3339 to the second: {t}"
    );

    let err = env.fail(&[
        "--log-format",
        "json",
        "run",
        "--bundle",
        bundle,
        &unique("err"),
    ]);
    let entry: serde_json::Value = serde_json::from_str(err.trim_end()).unwrap();
    assert_eq!(entry["level"], "error", "{err}");
}

/// Network sysctls go into the container's own network namespace before its root and
/// /proc/sys become read-only (runc's default spec: a read-only root).
#[test]
fn network_sysctls_with_a_read_only_root() {
    let env = Env::new();
    let mut b = env.sh_bundle("cat /proc/sys/net/ipv4/ip_forward");
    b.config["root"]["readonly"] = json!(true);
    b.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    b.save();
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let (code, out) = env.run_fg(&b, &unique("fwd"));
    assert_eq!((code, out.trim()), (0, "1"));
    let after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(host, after, "the host's value is untouched");
}

/// `linux.devices` of type `p` are made as FIFOs; only block and character devices get
/// device-cgroup rules.
#[test]
fn fifo_devices_are_made_and_not_given_cgroup_rules() {
    let env = Env::new();
    let mut b = env.sh_bundle("ls -l /dev/myfifo");
    b.config["linux"]["devices"] = json!([
        {"path": "/dev/myfifo", "type": "p", "major": 0, "minor": 0, "fileMode": 0o640, "uid": 0, "gid": 0}
    ]);
    b.save();
    let (code, out) = env.run_fg(&b, &unique("fifo"));
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("prw-r-----"), "{out}");
}

/// Without a mount namespace the container shares ours: its mounts are made here and its init
/// only chroots into the rootfs. Masked or read-only paths cannot be kept to it then, so they
/// are refused with runc's words.
#[test]
fn no_mount_namespace_shares_the_callers() {
    let env = Env::new();
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let mut b = env.sh_bundle("readlink /proc/self/ns/mnt; ls /");
    let namespaces = b.config["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "mount");
    b.save();
    let id = unique("nomnt");
    env.track(&id);
    let o = env.run(&["run", "--bundle", b.dir.to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unable to restrict sys entries without a private MNT namespace"),
        "{err}"
    );
    assert!(!o.status.success());

    b.config["linux"]["maskedPaths"] = json!([]);
    b.config["linux"]["readonlyPaths"] = json!([]);
    b.save();
    let (code, out) = env.run_fg(&b, &unique("nomnt"));
    // runc leaves the container's mounts in our namespace; Berth's delete detaches them.
    let _ = nix::mount::umount2(&b.rootfs(), nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(code, 0, "{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), ours.to_str(), "{out}");
    let listed: Vec<&str> = lines.collect();
    assert!(
        listed.contains(&"bin") && listed.contains(&"proc"),
        "the rootfs is /: {out}"
    );
    env.assert_no_mounts();
}

/// runc's recursive mount options (`rro`, `rnosuid`, `rnodev`, `rnoexec`, `rnoatime`, ...)
/// apply to the bind and to every mount below it (mount_setattr with AT_RECURSIVE).
#[test]
fn recursive_mount_attributes_reach_submounts() {
    let env = Env::new();
    let src = env.tmp.path().join("vol");
    let sub = src.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    struct Detach(std::path::PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _sub = Detach(sub.clone());
    let script = "touch /vol/sub/x 2>/dev/null && echo writable; \
                  grep ' /vol' /proc/self/mountinfo | cut -d' ' -f5,6";
    let mut b = env.sh_bundle(script);
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({
        "destination": "/vol", "type": "bind", "source": src,
        "options": ["rbind", "rro", "rnosuid", "rnodev", "rnoexec", "rnoatime"]
    }));
    b.save();
    let (code, out) = env.run_fg(&b, &unique("rattr"));
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("writable"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "the bind and its submount: {out}");
    for l in lines {
        let (_, opts) = l.split_once(' ').unwrap();
        let opts: Vec<&str> = opts.split(',').collect();
        for want in ["ro", "nosuid", "nodev", "noexec", "noatime"] {
            assert!(opts.contains(&want), "{want} missing: {l}");
        }
    }
    env.assert_no_mounts_but(&sub);
}

/// runc's exec: `--env` replaces a variable of the spec's (one entry, its place kept), HOME
/// comes from the container's /etc/passwd or is `/`, `--cap` adds a capability to every set,
/// a paused container is refused (exit 255, runc's words) unless `--ignore-paused`, and
/// `--cgroup` runs the process in an existing sub-cgroup (every controller's, or the named
/// ones'); delete removes such sub-cgroups with the container's.
#[test]
fn exec_options_as_runc_reads_them() {
    let env = Env::new();
    let mut b = env.bundle(&["sleep", "1000"]);
    b.config["process"]["env"] = json!(["PATH=/bin", "FOO=spec", "BAR=1"]);
    b.save();
    let id = unique("execopt");
    env.create(&b, &id);
    env.ok(&["start", &id]);
    // The environment the exec'd process was given (no shell to add to it).
    let environ = ["cat", "/proc/self/environ"];
    let out = env.ok(&[&["exec", "--env", "FOO=exec", &id][..], &environ].concat());
    let vars: Vec<&str> = out.split_terminator('\0').collect();
    assert_eq!(
        vars,
        ["PATH=/bin", "FOO=exec", "BAR=1", "HOME=/root"],
        "{out}"
    );
    let out = env.ok(&[&["exec", "--user", "4321", &id][..], &environ].concat());
    let home = out.split_terminator('\0').any(|l| l == "HOME=/");
    assert!(home, "no passwd entry: HOME=/: {out:?}");

    let caps = |extra: &[&str]| {
        let mut args = vec!["exec"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&id, "grep", "CapEff", "/proc/self/status"]);
        let out = env.ok(&args);
        u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    const SYS_ADMIN: u64 = 1 << 21;
    assert_eq!(caps(&[]) & SYS_ADMIN, 0);
    assert_ne!(caps(&["--cap", "CAP_SYS_ADMIN"]) & SYS_ADMIN, 0);

    env.ok(&["pause", &id]);
    let o = env.run(&["exec", &id, "true"]);
    assert_eq!(o.status.code(), Some(255));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot exec in a paused container"), "{err}");
    env.ok(&["resume", &id]);

    // A sub-cgroup in every hierarchy of the container's, then (v1) one in pids alone.
    let v2 = crate::util::cgroup_v2();
    let hierarchies: Vec<String> = if v2 {
        vec![format!("/sys/fs/cgroup{}", b.cgroup)]
    } else {
        std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .flatten()
            .map(|e| e.path().join(b.cgroup.trim_start_matches('/')))
            .filter(|p| p.is_dir())
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    };
    for h in &hierarchies {
        std::fs::create_dir(format!("{h}/sub")).unwrap();
        // A v1 cpuset cgroup takes no process until it has cpus and memory nodes.
        for f in ["cpuset.cpus", "cpuset.mems"].into_iter().filter(|_| !v2) {
            if let Ok(v) = std::fs::read_to_string(format!("{h}/{f}")) {
                std::fs::write(format!("{h}/sub/{f}"), v).unwrap();
            }
        }
    }
    let pid_file = env.tmp.path().join("sub.pid");
    let pf = pid_file.to_str().unwrap();
    let member = |args: &[&str]| {
        let mut all = vec!["exec", "-d", "--pid-file", pf];
        all.extend_from_slice(args);
        all.extend_from_slice(&[&id, "sleep", "100"]);
        env.ok(&all);
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap()
    };
    let lines = member(&["--cgroup", "sub"]);
    let in_sub = |l: &&str| l.ends_with(&format!("{}/sub", b.cgroup));
    let ours: Vec<&str> = lines.lines().filter(|l| l.contains(&b.cgroup)).collect();
    assert!(!ours.is_empty() && ours.iter().all(in_sub), "{lines}");
    if !v2 {
        let pids = |l: &&str| l.split(':').nth(1) == Some("pids");
        let lines = member(&["--cgroup", "pids:sub"]);
        for l in lines.lines().filter(|l| l.contains(&b.cgroup)) {
            assert_eq!(in_sub(&l), pids(&l), "only pids moves: {lines}");
        }
    }
    env.ok(&["kill", "--all", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    env.ok(&["delete", &id]);
    for h in &hierarchies {
        assert!(!std::path::Path::new(h).exists(), "{h} left behind");
    }
}

/// A startContainer hook without an `env` of its own runs with the container process's
/// environment (runc runs it from the init with Go's inherited environment); one that fails
/// after start is reported on the process's stderr and the process does not run.
#[test]
fn start_container_hooks_inherit_the_process_environment() {
    let env = Env::new();
    let mut b = env.sh_bundle("echo ran");
    b.config["process"]["env"] = json!(["PATH=/bin", "FOO=proc"]);
    b.config["hooks"] = json!({"startContainer": [
        {"path": "/bin/sh", "args": ["sh", "-c", "env > /hook.env"]}
    ]});
    b.save();
    let (code, out) = env.run_fg(&b, &unique("hookenv"));
    assert_eq!((code, out.trim()), (0, "ran"));
    let seen = std::fs::read_to_string(b.rootfs().join("hook.env")).unwrap();
    let vars: Vec<&str> = seen.lines().collect();
    for want in ["PATH=/bin", "FOO=proc", "HOME=/root"] {
        assert!(vars.contains(&want), "{want} missing: {seen}");
    }

    b.config["root"]["readonly"] = json!(true);
    b.save();
    let id = unique("hookfail");
    env.track(&id);
    let o = env.run(&["run", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stdout).contains("ran"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Read-only file system"),
        "the hook's error is shown: {err}"
    );
}

/// The device cgroup (v1's devices.allow/deny, v2's eBPF filter) refuses a device node the
/// rules do not allow, even to a process that may create it; allowed ones open.
#[test]
fn the_device_cgroup_refuses_what_the_rules_do_not_allow() {
    let env = Env::new();
    let script = "mknod /tmp/mem c 1 1 && (head -c1 /tmp/mem >/dev/null 2>&1 || echo mem-denied); \
                  mknod /tmp/zero c 1 5 && head -c1 /tmp/zero | wc -c";
    let mut b = env.sh_bundle(script);
    for set in ["bounding", "effective", "permitted"] {
        let caps = b.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap();
        caps.push(json!("CAP_MKNOD"));
    }
    b.save();
    let (code, out) = env.run_fg(&b, &unique("devcg"));
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["mem-denied", "1"], "{out}");
}
