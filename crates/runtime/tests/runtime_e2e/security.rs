//! seccomp, user namespaces, masked and read-only paths, capabilities.

use serde_json::json;

use crate::util::{Env, unique};

#[test]
fn seccomp_denies_a_syscall() {
    let env = Env::new();
    let mut b = env.sh_bundle("mkdir /tmp/a; echo rc=$?; echo still-alive");
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    b.save();
    let (code, out) = env.run_fg(&b, &unique("seccomp"));
    assert_eq!(code, 0);
    assert_eq!(out, "rc=1\nstill-alive\n");
    assert!(!b.rootfs().join("tmp/a").exists());
    // An allow-list profile with an argument condition: personality(0xffffffff) allowed,
    // everything listed allowed, the rest ENOSYS... kept small: kill on getppid.
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]
    });
    b.config["process"]["args"] = json!(["sh", "-c", "echo $PPID"]);
    b.save();
    // busybox sh reads its parent pid at start-up: the filter kills it with SIGSYS.
    let (code, _) = env.run_fg(&b, &unique("seccomp"));
    assert_eq!(code, 128 + 31);
}

#[test]
fn user_namespace_maps_root() {
    let env = Env::new();
    let mut b = env
        .sh_bundle("id -u; cat /proc/self/uid_map; cat /proc/self/gid_map; cat /proc/self/cgroup");
    b.config["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}
    ]);
    b.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.save();
    let (code, out) = env.run_fg(&b, &unique("userns"));
    assert_eq!(code, 0, "{out}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], vec!["0"]);
    assert_eq!(lines[1], vec!["0", "100000", "65536"]);
    assert_eq!(lines[2], vec!["0", "100000", "65536"]);
    b.assert_cgroup_lines(&out.lines().skip(3).collect::<Vec<_>>().join("\n"));
}

#[test]
fn masked_and_readonly_paths_and_caps() {
    let env = Env::new();
    let b = env.sh_bundle("wc -c < /proc/timer_list; echo 1 > /proc/sys/kernel/domainname && echo sys-writable; grep CapBnd /proc/self/status; grep NoNewPrivs /proc/self/status");
    let (code, out) = env.run_fg(&b, &unique("mask"));
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "0", "timer_list is masked: {out}");
    assert!(!out.contains("sys-writable"), "{out}");
    // CAP_CHOWN(0) CAP_DAC_OVERRIDE(1) CAP_KILL(5) CAP_SETGID(6) CAP_SETUID(7)
    // CAP_NET_BIND_SERVICE(10) CAP_AUDIT_WRITE(29)
    assert!(out.contains("CapBnd:\t00000000200004e3"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

#[test]
fn readonly_root_and_process_user() {
    let env = Env::new();
    let mut b =
        env.sh_bundle("touch /x 2>/dev/null && echo root-writable; id -u; id -g; id -G; umask");
    b.config["root"]["readonly"] = json!(true);
    b.config["process"]["user"] =
        json!({"uid": 1000, "gid": 1001, "additionalGids": [5, 7], "umask": 63});
    b.save();
    let (code, out) = env.run_fg(&b, &unique("ro"));
    assert_eq!(code, 0);
    assert!(!out.contains("root-writable"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "1001");
    assert!(
        lines[2].split_whitespace().any(|g| g == "5")
            && lines[2].split_whitespace().any(|g| g == "7"),
        "{out}"
    );
    assert_eq!(lines[3], "0077");
}

#[test]
fn seccomp_notify_hands_the_listener_to_the_agent() {
    let env = Env::new();
    let sock = env.tmp.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut b =
        env.sh_bundle("echo started; mkdir /tmp/n 2>/dev/null || echo mkdir-failed; echo done");
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": sock,
        "listenerMetadata": "agent-meta",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.save();
    let agent = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let (payload, fd) = berth_runtime::recv_fd(&conn).unwrap();
        // Closing the listener makes the pending and future notified calls fail (ENOSYS).
        drop(fd);
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap()
    });
    let (code, out) = env.run_fg(&b, &unique("notify"));
    let payload = agent.join().unwrap();
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "started\nmkdir-failed\ndone\n");
    assert_eq!(payload["fds"], json!(["seccompFd"]));
    assert_eq!(payload["metadata"], "agent-meta");
    assert!(payload["pid"].as_i64().unwrap() > 0, "{payload}");
    assert!(!b.rootfs().join("tmp/n").exists());
}

#[test]
fn time_namespace_offsets() {
    if crate::util::testing_other_runtime() {
        // runc 1.1 predates time namespaces (runtime-spec 1.2).
        return;
    }
    let env = Env::new();
    let mut b = env.sh_bundle("cut -d. -f1 /proc/uptime");
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time"}));
    b.config["linux"]["timeOffsets"] = json!({"boottime": {"secs": 864000, "nanosecs": 0}});
    b.save();
    let (code, out) = env.run_fg(&b, &unique("timens"));
    assert_eq!(code, 0, "{out}");
    let up: u64 = out.trim().parse().unwrap();
    let host: u64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(up >= host + 864000 - 5, "uptime {up} vs host {host}");
}

/// A pod-style container: joins another container's user (and network) namespace by path and
/// gets a new pid namespace of its own, which must belong to the joined user namespace.
#[test]
fn join_user_namespace_with_new_pid_namespace() {
    let env = Env::new();
    let mut holder = env.bundle(&["sleep", "1000"]);
    holder.config["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}
    ]);
    holder.config["linux"]["uidMappings"] =
        json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    holder.config["linux"]["gidMappings"] =
        json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    holder.save();
    let hid = unique("holder");
    env.create(&holder, &hid);
    env.ok(&["start", &hid]);
    let hpid = env.state(&hid)["pid"].as_i64().unwrap();
    holder.assert_member(hpid);
    let mut b = env.sh_bundle("echo $$; cat /proc/self/uid_map; cat /proc/self/cgroup");
    b.config["linux"]["namespaces"] = json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "network", "path": format!("/proc/{hpid}/ns/net")},
        {"type": "user", "path": format!("/proc/{hpid}/ns/user")}
    ]);
    // runc 1.1 wants the (joined namespace's) mappings spelled out as well.
    b.config["linux"]["uidMappings"] = holder.config["linux"]["uidMappings"].clone();
    b.config["linux"]["gidMappings"] = holder.config["linux"]["gidMappings"].clone();
    b.save();
    let (code, out) = env.run_fg(&b, &unique("joined"));
    assert_eq!(code, 0, "{out}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], vec!["1"], "pid 1 of its own pid namespace: {out}");
    assert_eq!(lines[1], vec!["0", "200000", "65536"], "{out}");
    b.assert_cgroup_lines(&out.lines().skip(2).collect::<Vec<_>>().join("\n"));
    // Joining a namespace of the wrong type is refused.
    b.config["linux"]["namespaces"][4]["path"] = json!(format!("/proc/{hpid}/ns/ipc"));
    b.save();
    let id = unique("wrongns");
    env.track(&id);
    env.fail(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(!env.root.join(&id).exists());
}

/// Sysctls are written before /proc/sys is made read-only (the default readonlyPaths), in the
/// container's namespaces: an IPC one (kernel.shm_rmid_forced) and a network one.
#[test]
fn sysctls_under_read_only_proc_sys() {
    let env = Env::new();
    let mut b = env.sh_bundle(
        "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_unprivileged_port_start",
    );
    b.config["linux"]["sysctl"] = json!({
        "kernel.shm_rmid_forced": "1",
        "net.ipv4.ip_unprivileged_port_start": "77",
    });
    b.save();
    let (code, out) = env.run_fg(&b, &unique("sysctl"));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["1", "77"]);
    // The host's values are untouched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .unwrap()
            .trim(),
        "1024"
    );
}

/// Unmounts (lazily) what a test mounted on the host, before the temp dir goes.
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A bidirectional volume (rootfsPropagation rshared, an rshared bind of a shared host
/// mount): a mount made on the host shows in the container, and one made in the container
/// shows on the host, as runc does (and Kubernetes' Bidirectional mount propagation needs).
#[test]
fn shared_volume_propagates_both_ways() {
    let env = Env::new();
    let vol = env.tmp.path().join("vol");
    std::fs::create_dir_all(vol.join("fromhost")).unwrap();
    std::fs::create_dir_all(vol.join("fromctr")).unwrap();
    let mut guard = Unmount(vec![vol.clone()]);
    let none: Option<&str> = None;
    nix::mount::mount(Some(&vol), &vol, none, nix::mount::MsFlags::MS_BIND, none).unwrap();
    nix::mount::mount(
        none,
        &vol,
        none,
        nix::mount::MsFlags::MS_SHARED | nix::mount::MsFlags::MS_REC,
        none,
    )
    .unwrap();
    let mut b = env.sh_bundle("mount --bind /etc /vol/fromctr && sleep 1000");
    b.config["linux"]["rootfsPropagation"] = json!("rshared");
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/vol", "type": "bind", "source": vol, "options": ["rbind", "rshared"]
    }));
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_SYS_ADMIN"));
    }
    b.save();
    let id = unique("prop");
    guard.0.push(vol.join("fromctr"));
    guard.0.push(vol.join("fromhost"));
    env.create(&b, &id);
    env.ok(&["start", &id]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !vol.join("fromctr/passwd").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container's mount never reached the host"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix::mount::mount(
        Some("tmpfs"),
        &vol.join("fromhost"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        none,
    )
    .unwrap();
    std::fs::write(vol.join("fromhost/flag"), "x").unwrap();
    let out = env.ok(&["exec", &id, "ls", "/vol/fromhost"]);
    assert!(
        out.contains("flag"),
        "host mount not seen in the container: {out}"
    );
    env.ok(&["kill", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    env.ok(&["delete", &id]);
    drop(guard);
    env.assert_no_mounts();
}
