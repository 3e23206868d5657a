//! Tasks through berthd's runtime manager and Debian's `containerd-shim-runc-v2` (with Debian's
//! runc), driven by Debian's `ctr`: `run --rm`, exit codes, `-d` then exec, pause/resume, ps,
//! metrics, kill, rm, a terminal, a daemon restart with live shims (half of them ours), and bad
//! requests. berthd runs in a private mount namespace (the 1.6 Go shim insists on
//! `/run/containerd`).

use std::process::Command;
use std::time::Duration;

use berth_e2e::{Daemon, busybox_oci_archive, fails, ok};

const IMAGE: &str = "docker.io/library/tasks:1";

fn setup(d: &Daemon, ns: &str) {
    let dir = d.dir.path().join("img.tar");
    busybox_oci_archive(&dir, IMAGE, &[("etc/motd", b"tasks\n")]);
    ok(d.ctr(&["-n", ns, "images", "import", dir.to_str().unwrap()]));
}

#[test]
fn ctr_run_and_task_commands_through_the_go_shim() {
    const NS: &str = "berth-e2e-tasks";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = Daemon::start_for_tasks();
    setup(&d, NS);
    let fifo = d.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["-n", NS, "run", "--fifo-dir", fifo];
        all.extend_from_slice(args);
        d.ctr(&all)
    };
    // run --rm prints the container's output; exit codes propagate.
    let out = ok(run(&["--rm", IMAGE, "hello", "echo", "hi"]));
    assert_eq!(out.trim(), "hi");
    let st = run(&["--rm", IMAGE, "seven", "sh", "-c", "exit 7"]);
    assert_eq!(st.status.code(), Some(7), "{st:?}");

    // -d, then the task commands.
    ok(run(&["-d", IMAGE, "bg", "sleep", "1000"]));
    let task = |args: &[&str]| {
        let mut all = vec!["-n", NS, "task"];
        all.extend_from_slice(args);
        d.ctr(&all)
    };
    let ls = ok(task(&["ls"]));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("bg ") && l.contains("RUNNING")),
        "{ls}"
    );
    let out = ok(task(&[
        "exec",
        "--fifo-dir",
        fifo,
        "--exec-id",
        "e1",
        "bg",
        "cat",
        "/etc/motd",
    ]));
    assert_eq!(out.trim(), "tasks");
    let st = task(&[
        "exec",
        "--fifo-dir",
        fifo,
        "--exec-id",
        "e2",
        "bg",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(st.status.code(), Some(3));
    let e = fails(task(&[
        "exec",
        "--fifo-dir",
        fifo,
        "--exec-id",
        "e3",
        "bg",
        "/no/such/binary",
    ]));
    assert!(!e.is_empty());
    ok(task(&["pause", "bg"]));
    assert!(ok(task(&["ls"])).contains("PAUSED"));
    ok(task(&["resume", "bg"]));
    assert!(ok(task(&["ls"])).contains("RUNNING"));
    let ps = ok(task(&["ps", "bg"]));
    assert_eq!(ps.lines().count(), 2, "{ps}");
    let metrics = ok(task(&["metrics", "bg"]));
    assert!(metrics.contains(berth_e2e::memory_metric()), "{metrics}");
    // busybox sleep as pid 1 ignores SIGTERM; SIGKILL stops it.
    ok(task(&["kill", "-s", "KILL", "bg"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ok(task(&["ls"])).contains("STOPPED") {
        assert!(std::time::Instant::now() < deadline, "never stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(task(&["rm", "bg"]));
    ok(d.ctr(&["-n", NS, "containers", "rm", "bg"]));
    assert!(ok(task(&["ls", "-q"])).trim().is_empty());
    let e = fails(task(&["kill", "bg"]));
    assert!(e.contains("not found"), "{e}");

    // A terminal (ctr -t needs one itself: script(1) gives it a pty).
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "ctr --address {} -n {NS} run --rm -t --fifo-dir {fifo} {IMAGE} tty sh -c 'tty; echo on-a-tty'",
            d.sock.display()
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("on-a-tty") && text.contains("/dev/"),
        "{text}"
    );

    // Bad input: an unknown runtime, a container id without a container.
    let e = fails(run(&[
        "--rm",
        "--runtime",
        "io.containerd.nope.v1",
        IMAGE,
        "x",
        "true",
    ]));
    assert!(e.contains("containerd-shim-nope-v1 not found"), "{e}");
    assert!(
        ok(d.ctr(&["-n", NS, "containers", "ls", "-q"]))
            .trim()
            .is_empty()
    );

    // Nothing left: no shim, no bundle.
    d.assert_no_leftover_pids();
    let bundles = d
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(NS);
    assert_eq!(
        std::fs::read_dir(&bundles).map(|r| r.count()).unwrap_or(0),
        0
    );
}

#[test]
fn tasks_survive_a_daemon_restart() {
    const NS: &str = "berth-e2e-restart";
    const LIVE: usize = 40;
    const EXITING: usize = 10;
    let _cg = berth_e2e::CgroupCleanup(NS);
    // Every other task runs through our shim (+ berth-runc), the rest through the Go shim.
    berth_e2e::bin("containerd-shim-berth-v2");
    let path = format!(
        "{}:{}",
        berth_e2e::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut d = Daemon::start_for_tasks_with_env(&[("PATH", &path)]);
    setup(&d, NS);
    let fifo = d.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let ids: Vec<(String, bool)> = (0..LIVE)
        .map(|i| (format!("live-{i}"), false))
        .chain((0..EXITING).map(|i| (format!("exits-{i}"), true)))
        .collect();
    for (n, (id, exits)) in ids.iter().enumerate() {
        // The exiting ones end 3 s after they start, while the daemon is down.
        let cmd = if *exits {
            "sleep 3; exit 42"
        } else {
            "sleep 100000"
        };
        let runtime = if n % 2 == 1 {
            "io.containerd.berth.v2"
        } else {
            "io.containerd.runc.v2"
        };
        ok(d.ctr(&[
            "-n",
            NS,
            "run",
            "-d",
            "--runtime",
            runtime,
            "--fifo-dir",
            fifo,
            IMAGE,
            id,
            "sh",
            "-c",
            cmd,
        ]));
    }
    let shims_before = d.leftover_pids().len();
    d.kill9();
    std::thread::sleep(Duration::from_secs(4));
    d.restart();
    let mut events = berth_e2e::Events::start(&d, "ctr");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ls = ok(d.ctr(&["-n", NS, "task", "ls"]));
        let running = ls
            .lines()
            .filter(|l| l.starts_with("live-") && l.contains("RUNNING"))
            .count();
        let stopped = ls
            .lines()
            .filter(|l| l.starts_with("exits-") && l.contains("STOPPED"))
            .count();
        if running == LIVE && stopped == EXITING {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "after restart: {ls}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.log().contains("reconnected to shims"), "{}", d.log());
    // Exit statuses survived; every live task is still controllable.
    for i in 0..EXITING {
        let st = d.ctr(&["-n", NS, "task", "rm", &format!("exits-{i}")]);
        assert!(st.status.success(), "{st:?}");
        ok(d.ctr(&["-n", NS, "containers", "rm", &format!("exits-{i}")]));
    }
    for i in 0..LIVE {
        ok(d.ctr(&["-n", NS, "task", "kill", "-s", "KILL", &format!("live-{i}")]));
    }
    berth_e2e::wait_for("the killed tasks to stop", || {
        !ok(d.ctr(&["-n", NS, "task", "ls"]))
            .lines()
            .any(|l| l.starts_with("live-") && !l.contains("STOPPED"))
    });
    for i in 0..LIVE {
        ok(d.ctr(&["-n", NS, "task", "rm", &format!("live-{i}")]));
        ok(d.ctr(&["-n", NS, "containers", "rm", &format!("live-{i}")]));
    }
    let out = events.sync().join("\n");
    // Each exit during the downtime is reported once, with its status.
    for i in 0..EXITING {
        let id = format!("\"container_id\":\"exits-{i}\"");
        let reports: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("/tasks/exit") && l.contains(&id))
            .collect();
        assert_eq!(reports.len(), 1, "exits-{i}: {reports:?}\n{out}");
        assert!(reports[0].contains("\"exit_status\":42"), "{}", reports[0]);
    }
    assert!(
        shims_before >= LIVE + EXITING,
        "one shim per task: {shims_before}"
    );
    d.assert_no_leftover_pids();
    let bundles = d
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(NS);
    assert_eq!(
        std::fs::read_dir(&bundles).map(|r| r.count()).unwrap_or(0),
        0
    );
}

/// Run/rm cycles leave nothing behind: shims, bundles, containers, snapshots, mounts.
#[test]
fn churn_leaves_nothing_behind() {
    const NS: &str = "berth-e2e-churn";
    let cycles: usize = berth_e2e::env_count("BERTH_CHURN", 60);
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = Daemon::start_for_tasks();
    setup(&d, NS);
    let fifo = d.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let snaps_before = ok(d.ctr(&["-n", NS, "snapshots", "ls"]));
    for i in 0..cycles {
        ok(d.ctr(&[
            "-n",
            NS,
            "run",
            "--rm",
            "--fifo-dir",
            fifo,
            IMAGE,
            &format!("c{i}"),
            "true",
        ]));
    }
    d.assert_no_leftover_pids();
    assert!(
        ok(d.ctr(&["-n", NS, "containers", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    assert_eq!(ok(d.ctr(&["-n", NS, "snapshots", "ls"])), snaps_before);
    let bundles = d
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(NS);
    assert_eq!(
        std::fs::read_dir(&bundles).map(|r| r.count()).unwrap_or(0),
        0
    );
    // No mount of ours is left in the daemon's mount namespace.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", d.pid())).unwrap();
    let state = d.dir.path().join("state");
    assert!(
        !mounts.contains(state.to_str().unwrap()),
        "mounts left under the state dir"
    );
    let fifos = std::fs::read_dir(fifo).map(|r| r.count()).unwrap_or(0);
    assert_eq!(fifos, 0, "ctr's fifo dirs are its own to remove");
}

#[test]
fn berthctl_run() {
    const NS: &str = "berth-e2e-brun";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = Daemon::start_for_tasks();
    setup(&d, NS);
    let fifo = d.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["-n", NS, "run", "--fifo-dir", fifo];
        all.extend_from_slice(args);
        d.berthctl(&all)
    };
    let out = ok(run(&["--rm", IMAGE, "one", "echo", "hello", "there"]));
    assert_eq!(out.trim(), "hello there");
    let st = run(&[
        "--rm",
        "--env",
        "FOO=bar",
        "--cwd",
        "/etc",
        IMAGE,
        "two",
        "sh",
        "-c",
        "echo $FOO $(pwd); exit 5",
    ]);
    assert_eq!(st.status.code(), Some(5), "{st:?}");
    assert_eq!(String::from_utf8_lossy(&st.stdout).trim(), "bar /etc");
    // -d with limits: the cgroup has them; the task is listed by ctr.
    ok(run(&[
        "-d",
        "--memory-limit",
        "33554432",
        "--cpus",
        "0.5",
        IMAGE,
        "three",
        "sleep",
        "1000",
    ]));
    if berth_e2e::cgroup_v2() {
        let dir = format!("/sys/fs/cgroup/{NS}/three");
        let limit = std::fs::read_to_string(format!("{dir}/memory.max")).unwrap();
        assert_eq!(limit.trim(), "33554432");
        let max = std::fs::read_to_string(format!("{dir}/cpu.max")).unwrap();
        assert_eq!(max.trim(), "50000 100000");
    } else {
        let limit = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/{NS}/three/memory.limit_in_bytes"
        ))
        .unwrap();
        assert_eq!(limit.trim(), "33554432");
        let quota = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/cpu,cpuacct/{NS}/three/cpu.cfs_quota_us"
        ))
        .or_else(|_| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/{NS}/three/cpu.cfs_quota_us"))
        })
        .unwrap();
        assert_eq!(quota.trim(), "50000");
    }
    assert!(ok(d.ctr(&["-n", NS, "task", "ls"])).contains("three"));
    // berthctl's containers and tasks commands on it.
    let b = |args: &[&str]| {
        let mut all = vec!["-n", NS];
        all.extend_from_slice(args);
        d.berthctl(&all)
    };
    assert_eq!(
        ok(b(&["containers", "ls"])),
        ok(d.ctr(&["-n", NS, "containers", "ls"]))
    );
    let info = ok(b(&["containers", "info", "three"]));
    assert!(info.contains("\"SnapshotKey\": \"three\""), "{info}");
    ok(b(&["containers", "label", "three", "role=test"]));
    assert!(ok(b(&["containers", "ls", "-q", "labels.role==test"])).contains("three"));
    assert!(
        ok(b(&["tasks", "ls"]))
            .lines()
            .any(|l| l.starts_with("three") && l.contains("RUNNING"))
    );
    let out = ok(b(&[
        "tasks",
        "exec",
        "--fifo-dir",
        fifo,
        "--exec-id",
        "x1",
        "three",
        "cat",
        "/etc/motd",
    ]));
    assert_eq!(out.trim(), "tasks");
    let st = b(&[
        "tasks",
        "exec",
        "--fifo-dir",
        fifo,
        "--exec-id",
        "x2",
        "three",
        "sh",
        "-c",
        "exit 4",
    ]);
    assert_eq!(st.status.code(), Some(4));
    ok(b(&["tasks", "pause", "three"]));
    assert!(ok(b(&["tasks", "ls"])).contains("PAUSED"));
    ok(b(&["tasks", "resume", "three"]));
    assert_eq!(ok(b(&["tasks", "ps", "three"])).lines().count(), 2);
    assert!(ok(b(&["tasks", "metrics", "three"])).contains("cgroups"));
    let e = fails(b(&["tasks", "kill", "-s", "NOPE", "three"]));
    assert!(e.contains("unknown signal"), "{e}");
    // A container whose task exists keeps its snapshot (the task's root file system): the
    // daemon refuses to delete it for any client (ctr only checks on its side), berthctl
    // says so, and the task goes on working.
    let st = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use berth_api::containerd::services::containers::v1::DeleteContainerRequest;
        use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
        ContainersClient::new(d.channel().await)
            .delete(berth_e2e::with_ns(
                NS,
                DeleteContainerRequest { id: "three".into() },
            ))
            .await
            .unwrap_err()
    });
    assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
    assert!(
        st.message().contains("three") && st.message().contains("task"),
        "{st:?}"
    );
    let e = fails(b(&["containers", "rm", "three"]));
    assert!(e.contains("task still exists"), "{e}");
    let out = ok(b(&[
        "tasks",
        "exec",
        "--fifo-dir",
        fifo,
        "--exec-id",
        "x3",
        "three",
        "cat",
        "/etc/motd",
    ]));
    assert_eq!(out.trim(), "tasks", "the root file system is intact");
    // --force kills and deletes the task first.
    ok(b(&["containers", "rm", "--force", "three"]));
    assert!(!ok(b(&["tasks", "ls"])).contains("three"));
    // tasks rm -f on another.
    ok(run(&["-d", IMAGE, "four", "sleep", "1000"]));
    ok(b(&["tasks", "rm", "-f", "four"]));
    ok(b(&["containers", "rm", "four"]));
    // --rm left no container and no snapshot of its own.
    assert!(
        ok(d.ctr(&["-n", NS, "containers", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    let snaps = ok(d.ctr(&["-n", NS, "snapshots", "ls"]));
    assert!(!snaps.contains("one") && !snaps.contains("two"), "{snaps}");
    // A terminal.
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} --address {} -n {NS} run --rm -t --fifo-dir {fifo} {IMAGE} four sh -c 'tty; echo on-a-tty'",
            berth_e2e::bin("berthctl").display(),
            d.sock.display()
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("on-a-tty") && text.contains("/dev/pts"),
        "{text}"
    );
    // Bad input.
    let e = fails(run(&["--rm", "nope:1", "five", "true"]));
    assert!(e.contains("not found"), "{e}");
    let e = fails(run(&[
        "--rm",
        "--runtime",
        "io.containerd.nope.v1",
        IMAGE,
        "six",
        "true",
    ]));
    assert!(e.contains("containerd-shim-nope-v1"), "{e}");
    d.assert_no_leftover_pids();
}
