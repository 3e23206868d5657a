//! Attacks: leaked fds and host cwd (CVE-2024-21626), mount targets through symlinks, the
//! runtime binary from inside the container (CVE-2019-5736).

use std::os::fd::AsRawFd;

use serde_json::json;

use crate::util::{Env, unique};

#[test]
fn no_host_fds_reach_the_container() {
    let env = Env::new();
    // An fd of ours without O_CLOEXEC: the runtime inherits it; the container must not.
    let leak = std::fs::File::open(env.tmp.path()).unwrap();
    let fd = leak.as_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on our own fd.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let b = env.sh_bundle("ls /proc/self/fd | sort -n | tr '\\n' ' '");
    let (code, out) = env.run_fg(&b, &unique("fds"));
    assert_eq!(code, 0);
    // 0-2, plus the fd ls opens to read the directory.
    let fds: Vec<i32> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert!(fds.iter().all(|f| *f <= 3), "leaked fds: {out}");
    drop(leak);
}

#[test]
fn cwd_through_a_leaked_fd_is_refused() {
    let env = Env::new();
    let mut b = env.sh_bundle("pwd; ls .. | head -3");
    for fd in 3..9 {
        b.config["process"]["cwd"] = json!(format!("/proc/self/fd/{fd}"));
        b.save();
        let id = unique("cwd");
        env.track(&id);
        let o = env.run(&["run", "--bundle", b.dir.to_str().unwrap(), &id]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !o.status.success() || !out.contains("(unreachable)"),
            "fd {fd}: process started in a host directory: {out}"
        );
    }
    env.assert_no_mounts();
}

#[test]
fn mount_target_symlink_stays_in_rootfs() {
    let env = Env::new();
    let host_dir = env.tmp.path().join("host-only");
    std::fs::create_dir_all(&host_dir).unwrap();
    let mut b = env.sh_bundle("ls /escape/sub && echo mounted");
    std::os::unix::fs::symlink(&host_dir, b.rootfs().join("escape")).unwrap();
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/escape/sub", "type": "tmpfs", "source": "tmpfs"}));
    b.save();
    let (code, out) = env.run_fg(&b, &unique("symlink"));
    assert!(
        !host_dir.join("sub").exists(),
        "mount target created on the host"
    );
    // Either refused or made inside the rootfs (runc and berth-runc both do the latter).
    if code == 0 {
        assert!(out.contains("mounted"));
        assert!(
            b.rootfs()
                .join(host_dir.strip_prefix("/").unwrap())
                .join("sub")
                .exists()
        );
    }
    env.assert_no_mounts();
}

/// The container makes the runtime execute `/proc/self/exe` (a `#!/proc/self/exe` program run
/// by `exec`), grabs `/proc/<pid>/exe` of that process, and tries to open it for writing.
#[test]
fn runtime_binary_cannot_be_overwritten() {
    let env = Env::new();
    let mut b = env.bundle(&["sleep", "1000"]);
    // Host python, read-only, to do what busybox cannot (O_PATH opens, reopen via /proc).
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    for d in ["/usr", "/lib", "/lib64"] {
        mounts.push(
            json!({"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]}),
        );
    }
    b.config["process"]["env"] = json!(["PATH=/bin:/usr/bin"]);
    b.save();
    std::fs::write(b.rootfs().join("evil"), "#!/proc/self/exe\n").unwrap();
    std::fs::set_permissions(
        b.rootfs().join("evil"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The runtime's binary as the attacker will see it: by device and inode (a detached bind
    // mount of it has no meaningful path).
    let st = std::fs::metadata(crate::util::bin()).unwrap();
    std::fs::write(
        b.rootfs().join("attack.py"),
        format!(
            "DEV, INO = {}, {}\n",
            std::os::unix::fs::MetadataExt::dev(&st),
            std::os::unix::fs::MetadataExt::ino(&st)
        ) + r#"
import os, errno, time
deadline = time.time() + 20
caught = None
while time.time() < deadline and caught is None:
    for p in os.listdir('/proc'):
        if not p.isdigit() or p == str(os.getpid()):
            continue
        try:
            st = os.stat('/proc/%s/exe' % p)
            if (st.st_dev, st.st_ino) != (DEV, INO) and 'runc' not in os.readlink('/proc/%s/exe' % p):
                continue
            caught = os.open('/proc/%s/exe' % p, os.O_PATH)
            break
        except OSError:
            pass
if caught is None:
    print('MISSED'); raise SystemExit(0)
result = 'ETXTBSY'
end = time.time() + 5
while time.time() < end:
    try:
        fd = os.open('/proc/self/fd/%d' % caught, os.O_WRONLY)
        os.close(fd)
        result = 'OPENED-FOR-WRITE'
        break
    except OSError as e:
        if e.errno != errno.ETXTBSY:
            result = errno.errorcode[e.errno]
            break
    time.sleep(0.001)
print(result)
"#,
    )
    .unwrap();
    let id = unique("exe");
    env.create(&b, &id);
    env.ok(&["start", &id]);
    let bin = crate::util::bin();
    let before = std::fs::read(&bin).unwrap();
    let mut attacker = env
        .cmd(&["exec", &id, "python3", "/attack.py"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (mut tries, mut refused, mut last_err) = (0, 0, String::new());
    while attacker.try_wait().unwrap().is_none() && tries < 100 {
        let o = env.run(&["exec", &id, "/evil"]);
        last_err = String::from_utf8_lossy(&o.stderr).into_owned();
        if last_err.contains("no such file or directory") {
            refused += 1;
        }
        tries += 1;
    }
    let out = attacker.wait_with_output().unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(verdict, "OPENED-FOR-WRITE");
    if verdict == "MISSED" {
        // runc 1.1 either fails to exec a `#!/proc/self/exe` program or runs itself so briefly
        // (and non-dumpable) that the container cannot even read its exe link. For berth-runc
        // the attacker must get hold of the binary, or the test would prove nothing.
        assert!(
            crate::util::testing_other_runtime() || refused == tries,
            "the attacker never saw the runtime binary run in the container: {last_err}"
        );
        return;
    }
    assert!(
        ["EROFS", "EPERM", "EACCES", "ETXTBSY"].contains(&verdict.as_str()),
        "{verdict}"
    );
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        before,
        "runtime binary changed"
    );
}

#[test]
fn preserve_fds_passes_exactly_those() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let b = env.sh_bundle("cat /proc/self/fd/3; ls /proc/self/fd | sort -n | tr '\\n' ' '");
    let secret = env.tmp.path().join("secret");
    std::fs::write(&secret, "passed-fd\n").unwrap();
    let f = std::fs::File::open(&secret).unwrap();
    let extra = std::fs::File::open(&secret).unwrap();
    let (fd, extra_fd) = (f.as_raw_fd(), extra.as_raw_fd());
    let id = unique("fds");
    env.track(&id);
    let mut cmd = env.cmd(&[
        "run",
        "--preserve-fds",
        "1",
        "--bundle",
        b.dir.to_str().unwrap(),
        &id,
    ]);
    // SAFETY: between fork and exec only dup2/fcntl, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // Via high numbers first, in case the files already sit at 3 or 4.
            let (a, b) = (
                libc::fcntl(fd, libc::F_DUPFD, 100),
                libc::fcntl(extra_fd, libc::F_DUPFD, 100),
            );
            libc::dup2(a, 3);
            libc::dup2(b, 4);
            libc::fcntl(3, libc::F_SETFD, 0);
            libc::fcntl(4, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("passed-fd"));
    let fds: Vec<i32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(fds.contains(&3), "{fds:?}");
    assert!(
        !fds.contains(&5),
        "fd beyond the preserved range leaked: {fds:?}"
    );
    assert!(fds.iter().all(|f| *f <= 4), "{fds:?}");
}

#[test]
fn container_process_starts_with_default_signals() {
    let env = Env::new();
    let b = env.bundle(&["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]);
    let (code, out) = env.run_fg(&b, &unique("sigs"));
    assert_eq!(code, 0);
    let mask = |name: &str| {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{out}");
    // Our runtime (Rust) ignores SIGPIPE itself; the container must not inherit that.
    assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
}
