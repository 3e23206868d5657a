//! Tasks through berthd's runtime manager and Berth's own shim, `containerd-shim-berth-v2`
//! (`--runtime io.containerd.berth.v2`, found on berthd's PATH), with the bundled `berth-runc` underneath,
//! driven by Debian's `ctr`: the same lifecycle as `tasks.rs` runs through the Go shim, plus
//! output volume, the shim's socket and runtime state under the daemon's state dir, and
//! the shim's own `delete` action after it was killed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::{Daemon, bin, bin_dir, busybox_oci_archive, fails, ok, wait_for};

const IMAGE: &str = "docker.io/library/shimberth:1";
const RUNTIME: &str = "io.containerd.berth.v2";

fn daemon() -> Daemon {
    Daemon::start_for_tasks_with_env(&[("PATH", &shim_path())])
}

/// berthd's PATH: the built shim first (cargo build -p berth-shim), then ours.
fn shim_path() -> String {
    bin("containerd-shim-berth-v2");
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `ctr run -d` of `sleep 1000` as container `id` through Berth's shim.
fn run_sleeper(d: &Daemon, ns: &str, id: &str) {
    run_sleeper_on(d, ns, id, RUNTIME);
}

/// `ctr run -d` of `sleep 1000` as container `id` through `runtime`.
fn run_sleeper_on(d: &Daemon, ns: &str, id: &str, runtime: &str) {
    let fifo = d.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    ok(d.ctr(&[
        "-n",
        ns,
        "run",
        "-d",
        "--runtime",
        runtime,
        "--fifo-dir",
        fifo,
        IMAGE,
        id,
        "sleep",
        "1000",
    ]));
}

/// `run --rm` of `image` as container `id` running `cmd`, through `client` (`ctr` or
/// `berthctl`) and `runtime`.
fn run_rm(
    d: &Daemon,
    client: &str,
    ns: &str,
    runtime: &str,
    image: &str,
    id: &str,
    cmd: &[&str],
) -> std::process::Output {
    let fifo = d.fifo_dir();
    let mut args = vec![
        "-n",
        ns,
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--fifo-dir",
        fifo.to_str().unwrap(),
        image,
        id,
    ];
    args.extend_from_slice(cmd);
    if client == "berthctl" {
        d.berthctl(&args)
    } else {
        d.ctr(&args)
    }
}

/// Kills task `id`, waits for it to stop, and removes it and its container.
fn remove_sleeper(d: &Daemon, ns: &str, id: &str) {
    ok(d.ctr(&["-n", ns, "task", "kill", "-s", "KILL", id]));
    wait_for("the task stopped", || {
        String::from_utf8_lossy(&d.ctr(&["-n", ns, "task", "ls"]).stdout)
            .lines()
            .any(|l| l.starts_with(id) && l.contains("STOPPED"))
    });
    ok(d.ctr(&["-n", ns, "task", "rm", id]));
    ok(d.ctr(&["-n", ns, "containers", "rm", id]));
}

fn setup(d: &Daemon, ns: &str) {
    let dir = d.dir.path().join("img.tar");
    busybox_oci_archive(&dir, IMAGE, &[("etc/motd", b"berth shim\n")]);
    ok(d.ctr(&["-n", ns, "images", "import", dir.to_str().unwrap()]));
}

/// PIDs of our shims: processes run as the built shim (argv[0]: their exe link reads `/`, a
/// detached read-only mount of the binary) whose working directory is a bundle of `d`.
fn berth_shims(d: &Daemon) -> Vec<i32> {
    let bundles = d.dir.path().join("state/io.containerd.runtime.v2.task");
    let mut v = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let cwd = std::fs::read_link(p.path().join("cwd")).unwrap_or_default();
        if argv0.ends_with(b"containerd-shim-berth-v2") && cwd.starts_with(&bundles) {
            v.push(pid);
        }
    }
    v
}

/// The topics `ctr events` (against `d`) saw while `f` ran, in order, for namespace `ns`.
fn topics_during(d: &Daemon, ns: &str, f: impl FnOnce()) -> Vec<String> {
    let mut events = berth_e2e::Events::start(d, "ctr");
    f();
    events
        .sync()
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(4);
            let (n, t) = (w.next()?, w.next()?);
            (n == ns && t.starts_with("/tasks/")).then(|| t.to_string())
        })
        .collect()
}

#[test]
fn ctr_run_and_task_commands_through_the_berth_shim() {
    const NS: &str = "berth-e2e-shimberth";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = daemon();
    setup(&d, NS);
    let fifo = d.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["-n", NS, "run", "--runtime", RUNTIME, "--fifo-dir", fifo];
        all.extend_from_slice(args);
        d.ctr(&all)
    };
    // run --rm prints the container's output; exit codes propagate.
    let out = ok(run(&["--rm", IMAGE, "hello", "echo", "hi"]));
    assert_eq!(out.trim(), "hi");
    let mut st = None;
    let topics = topics_during(&d, NS, || {
        st = Some(run(&["--rm", IMAGE, "seven", "sh", "-c", "exit 7"]));
    });
    let st = st.unwrap();
    assert_eq!(st.status.code(), Some(7), "{st:?}");
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{topics:?}"
    );
    // Output volume: nothing lost between the container's pipe and the client's FIFO.
    let out = ok(run(&[
        "--rm",
        IMAGE,
        "lots",
        "sh",
        "-c",
        "i=0; while [ $i -lt 50000 ]; do echo line-$i; i=$((i+1)); done",
    ]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 50_000, "{}", d.log());
    assert_eq!(lines.last(), Some(&"line-49999"));
    // stderr is its own stream.
    let o = run(&["--rm", IMAGE, "err", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "out");
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), "err");

    // A container over its memory limit: /tasks/oom.
    let mut st = None;
    let topics = topics_during(&d, NS, || {
        st = Some(run(&[
            "--rm",
            "--memory-limit",
            "16777216",
            IMAGE,
            "oom",
            "sh",
            "-c",
            "a=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#a}",
        ]));
    });
    assert_ne!(st.unwrap().status.code(), Some(0));
    assert!(topics.iter().any(|t| t == "/tasks/oom"), "{topics:?}");

    // stdin reaches the container, and its end too (the container exits on EOF).
    let mut child = Command::new("ctr")
        .arg("--address")
        .arg(&d.sock)
        .args([
            "-n",
            NS,
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            "--fifo-dir",
            fifo,
        ])
        .args([IMAGE, "cat", "sh", "-c", "cat; echo done"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        i.write_all(b"from stdin\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from stdin\ndone\n");

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
    // The shim: one process, its socket under the state dir's 0700 `s/`, runc state under the
    // state dir (never /run/runc).
    // (The shims of the earlier `run --rm`s exit just after they answer Shutdown.)
    wait_for("only bg's shim", || berth_shims(&d).len() == 1);
    let shims = berth_shims(&d);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let state = d.dir.path().join("state");
    let bundle = state
        .join("io.containerd.runtime.v2.task")
        .join(NS)
        .join("bg");
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let sock = address.strip_prefix("unix://").expect("unix:// address");
    assert!(
        Path::new(sock).starts_with(d.dir.path().join("s")),
        "{sock}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.dir.path().join("s"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
    // The OCI runtime's state is under the daemon's own state directory.
    assert!(d.dir.path().join("state/runc").join(NS).join("bg").exists());

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
    assert_eq!(out.trim(), "berth shim");
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
    // An exec on a terminal.
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "ctr --address {} -n {NS} task exec -t --fifo-dir {fifo} --exec-id t1 bg sh -c 'tty; echo exec-tty'",
            d.sock.display()
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("exec-tty") && text.contains("/dev/pts/"),
        "{text}"
    );
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
    wait_for("bg to stop", || ok(task(&["ls"])).contains("STOPPED"));
    ok(task(&["rm", "bg"]));
    ok(d.ctr(&["-n", NS, "containers", "rm", "bg"]));
    assert!(ok(task(&["ls", "-q"])).trim().is_empty());
    let e = fails(task(&["kill", "bg"]));
    assert!(e.contains("not found"), "{e}");

    // A terminal (ctr -t needs one itself: script(1) gives it a pty).
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "ctr --address {} -n {NS} run --runtime {RUNTIME} --rm -t --fifo-dir {fifo} {IMAGE} tty sh -c 'tty; echo on-a-tty'",
            d.sock.display()
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("on-a-tty") && text.contains("/dev/pts/"),
        "{text}"
    );

    // Nothing left: no shim, no bundle, no socket, no mount.
    // Shims exit just after answering Shutdown.
    wait_for("no process left", || d.leftover_pids().is_empty());
    let bundles = state.join("io.containerd.runtime.v2.task").join(NS);
    assert_eq!(
        std::fs::read_dir(&bundles).map(|r| r.count()).unwrap_or(0),
        0
    );
    // (The warm shim's socket stays: an idle shim for the next task.)
    let warm = d.warm_sockets();
    let sockets: Vec<_> = std::fs::read_dir(d.dir.path().join("s"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !warm.contains(p))
        .collect();
    assert!(sockets.is_empty(), "{sockets:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(d.dir.path().to_str().unwrap()), "{mounts}");
}

#[test]
fn berth_shim_tasks_survive_a_daemon_restart_and_a_shim_kill() {
    const NS: &str = "berth-e2e-shimberth-restart";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let mut d = daemon();
    setup(&d, NS);
    let fifo = d.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    for (id, cmd) in [
        ("long", "sleep 1000"),
        ("short", "sleep 1"),
        ("orphan", "sleep 1000"),
    ] {
        ok(d.ctr(&[
            "-n",
            NS,
            "run",
            "--runtime",
            RUNTIME,
            "-d",
            "--fifo-dir",
            fifo,
            IMAGE,
            id,
            "sh",
            "-c",
            cmd,
        ]));
    }
    assert_eq!(berth_shims(&d).len(), 3);
    d.kill9();
    // `short` exits while the daemon is down; `orphan`'s shim dies too.
    let bundles = d
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(NS);
    let bundle = |id: &str| bundles.join(id);
    let orphan_shim = berth_shims(&d)
        .into_iter()
        .find(|p| std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c == bundle("orphan")))
        .expect("orphan's shim");
    assert!(
        berth_e2e::signal_if(orphan_shim, libc::SIGKILL, |p| {
            berth_e2e::cwd_under(p, &bundle("orphan"))
        }),
        "the orphan's shim exited before the test killed it"
    );
    std::thread::sleep(Duration::from_secs(2));
    d.restart();
    // Restored: long still running, short stopped while the daemon was down, and the dead
    // shim's task cleaned up with our `delete` action (its container is gone).
    let mut ls = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(ls
        .lines()
        .any(|l| l.starts_with("long ") && l.contains("RUNNING"))
        && ls
            .lines()
            .any(|l| l.starts_with("short ") && l.contains("STOPPED"))
        && !ls.lines().any(|l| l.starts_with("orphan ")))
    {
        assert!(std::time::Instant::now() < deadline, "after restart: {ls}");
        std::thread::sleep(Duration::from_millis(50));
        ls = ok(d.ctr(&["-n", NS, "task", "ls"]));
    }
    // The restore runs beside the server: the dead shim's bundle is gone once it reports.
    wait_for("the restore to finish", || {
        d.log().contains("reconnected to shims")
    });
    assert!(!bundle("orphan").exists());
    // Still controllable.
    ok(d.ctr(&["-n", NS, "task", "kill", "-s", "KILL", "long"]));
    wait_for("long to stop", || {
        ok(d.ctr(&["-n", NS, "task", "ls"]))
            .lines()
            .any(|l| l.starts_with("long ") && l.contains("STOPPED"))
    });
    for id in ["long", "short"] {
        ok(d.ctr(&["-n", NS, "task", "rm", id]));
        // The shim's log reaches the restarted daemon's log again.
        let deleted = format!("deleted container={id}");
        wait_for("the shim's log line", || d.log().contains(&deleted));
    }
    for id in ["long", "short", "orphan"] {
        ok(d.ctr(&["-n", NS, "containers", "rm", id]));
    }
    // Shims exit just after answering Shutdown.
    wait_for("no process left", || d.leftover_pids().is_empty());
    assert!(berth_shims(&d).is_empty());
}

#[test]
fn berth_shim_churn_leaves_nothing_behind() {
    const NS: &str = "berth-e2e-shimberth-churn";
    // BERTH_CHURN=500 for the full count.
    let cycles: usize = berth_e2e::env_count("BERTH_CHURN", 20);
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = daemon();
    setup(&d, NS);
    let fifo = d.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    // What the import left unreferenced (its index) goes at the next GC: collect now, so the
    // counts below are of what stays.
    ok(d.ctr(&["-n", NS, "leases", "create", "--id", "settle"]));
    ok(d.ctr(&["-n", NS, "leases", "rm", "--sync", "settle"]));
    let snaps_before = ok(d.ctr(&["-n", NS, "snapshots", "ls"]));
    let blobs_before = berth_e2e::blobs_on_disk(&d.root());
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    let fds_before = fds();
    let started = Instant::now();
    for i in 0..cycles {
        let id = format!("churn-{i}");
        let out = ok(d.ctr(&[
            "-n",
            NS,
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            "--fifo-dir",
            fifo,
            IMAGE,
            &id,
            "echo",
            &id,
        ]));
        assert_eq!(out.trim(), id);
    }
    eprintln!(
        "{cycles} ctr run --rm through containerd-shim-berth-v2: {:?} each",
        started.elapsed() / cycles as u32
    );
    // Shims exit just after answering Shutdown.
    wait_for("no process left", || d.leftover_pids().is_empty());
    assert!(berth_shims(&d).is_empty());
    let state = d.dir.path().join("state");
    // The warm shim's socket stays (an idle shim for the next task).
    let warm = d.warm_sockets();
    for dir in [
        state.join("io.containerd.runtime.v2.task").join(NS),
        d.dir.path().join("s"),
        state.join("runc").join(NS),
    ] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !warm.contains(p))
            .collect();
        assert!(left.is_empty(), "{}: {left:?}", dir.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(d.dir.path().to_str().unwrap()), "{mounts}");
    // berthd holds nothing per finished task (each shim's log FIFO was let go).
    let fds_after = fds();
    assert!(
        fds_after <= fds_before + 4,
        "berthd's descriptors: {fds_before} before, {fds_after} after {cycles} runs"
    );
    // Each run's snapshot went with its container; no blob was added or lost.
    assert!(
        ok(d.ctr(&["-n", NS, "containers", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    assert_eq!(ok(d.ctr(&["-n", NS, "snapshots", "ls"])), snaps_before);
    assert_eq!(berth_e2e::blobs_on_disk(&d.root()), blobs_before);
    // No container cgroup left under the namespace's.
    for ctl in ["memory", "pids", "cpu,cpuacct"] {
        let dir = Path::new("/sys/fs/cgroup").join(ctl).join(NS);
        let children = std::fs::read_dir(&dir)
            .map(|r| r.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0);
        assert_eq!(children, 0, "{}", dir.display());
    }
}

/// Two daemons whose sockets share a directory run same-named containers of one namespace at
/// once, through Berth's shim and containerd's Go shim: each keeps its OCI runtime state under
/// its own state directory (a shim left to itself would put both in `<socket dir>/runc`).
#[test]
fn daemons_with_sockets_in_one_directory_keep_their_runtime_state_apart() {
    const NS: &str = "berth-e2e-twodaemons";
    let _cg = berth_e2e::CgroupCleanup(NS);
    bin("containerd-shim-berth-v2");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shared = tempfile::tempdir().unwrap();
    let daemons: Vec<Daemon> = ["one", "two"]
        .iter()
        .map(|n| {
            Daemon::start_for_tasks_at(&shared.path().join(format!("{n}.sock")), &[("PATH", &path)])
        })
        .collect();
    for (i, d) in daemons.iter().enumerate() {
        setup(d, NS);
        let fifo = d.fifo_dir();
        for (id, runtime) in [
            ("same-berth", RUNTIME),
            ("same-go", "io.containerd.runc.v2"),
        ] {
            ok(d.ctr(&[
                "-n",
                NS,
                "run",
                "-d",
                "--runtime",
                runtime,
                "--fifo-dir",
                fifo.to_str().unwrap(),
                // Their own cgroups: the runtime state is what this test is about.
                "--cgroup",
                &format!("/{NS}/{i}-{id}"),
                IMAGE,
                id,
                "sleep",
                "1000",
            ]));
        }
    }
    for d in &daemons {
        let ls = ok(d.ctr(&["-n", NS, "task", "ls"]));
        for id in ["same-berth", "same-go"] {
            assert!(
                ls.lines()
                    .any(|l| l.starts_with(id) && l.contains("RUNNING")),
                "{ls}"
            );
            let state = d.dir.path().join("state/runc").join(NS).join(id);
            assert!(state.join("state.json").exists(), "{}", state.display());
            // Each daemon still controls its own.
            let fifo = d.fifo_dir();
            let out = ok(d.ctr(&[
                "-n",
                NS,
                "task",
                "exec",
                "--fifo-dir",
                fifo.to_str().unwrap(),
                "--exec-id",
                "x",
                id,
                "cat",
                "/etc/motd",
            ]));
            assert_eq!(out.trim(), "berth shim");
        }
    }
    assert!(
        !shared.path().join("runc").exists(),
        "no state in the shared directory"
    );
    for d in &daemons {
        for id in ["same-berth", "same-go"] {
            ok(d.ctr(&["-n", NS, "task", "kill", "-s", "KILL", id]));
            wait_for("the task to stop", || {
                ok(d.ctr(&["-n", NS, "task", "ls"]))
                    .lines()
                    .any(|l| l.starts_with(id) && l.contains("STOPPED"))
            });
            ok(d.ctr(&["-n", NS, "task", "rm", id]));
            ok(d.ctr(&["-n", NS, "containers", "rm", id]));
        }
        d.assert_no_leftover_pids();
    }
}

/// `run --rm` of one id, 50 times back to back, through each client (`ctr`, `berthctl`) and
/// each shim (Berth's, containerd's Go shim): when Tasks.Delete answers, the old shim no longer
/// holds the id's socket, so the next run of that id starts at once. Each run's output is whole.
#[test]
fn one_id_runs_back_to_back_through_each_client_and_shim() {
    const NS: &str = "berth-e2e-shimberth-sameid";
    let runs: usize = berth_e2e::env_count("BERTH_SAME_ID_RUNS", 50);
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = daemon();
    setup(&d, NS);
    for runtime in [RUNTIME, "io.containerd.runc.v2"] {
        for client in ["ctr", "berthctl"] {
            for i in 0..runs {
                let word = format!("{client}-{i}");
                let out = run_rm(&d, client, NS, runtime, IMAGE, "same", &["echo", &word]);
                assert!(
                    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == word,
                    "{client} run --rm #{i} through {runtime}: {}\nstdout: {:?}\nstderr: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    // The tightest client: the Tasks API itself on one connection, the next Create the moment
    // Delete answers (a client process's start hid the race from the clients above in debug
    // builds), on one container through each shim.
    for runtime in [RUNTIME, "io.containerd.runc.v2"] {
        ok(d.ctr(&[
            "-n",
            NS,
            "containers",
            "create",
            "--runtime",
            runtime,
            IMAGE,
            "same",
            "true",
        ]));
        tasks_back_to_back(&d, NS, "same", runs);
        ok(d.ctr(&["-n", NS, "containers", "rm", "same"]));
    }
    wait_for("no process left", || d.leftover_pids().is_empty());
    assert!(
        ok(d.ctr(&["-n", NS, "containers", "ls", "-q"]))
            .trim()
            .is_empty()
    );
}

/// Create, start, wait and delete the task of container `id`, `runs` times, each Create sent as
/// soon as the previous Delete answered.
fn tasks_back_to_back(d: &Daemon, ns: &str, id: &str, runs: usize) {
    use berth_api::containerd::services::tasks::v1 as tasks;
    let ns = ns.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut t = tasks::tasks_client::TasksClient::new(d.channel().await);
        for i in 0..runs {
            let created = t
                .create(berth_e2e::with_ns(
                    &ns,
                    tasks::CreateTaskRequest {
                        container_id: id.into(),
                        ..Default::default()
                    },
                ))
                .await;
            if let Err(e) = created {
                panic!("task create #{i} of {id}: {e:?}");
            }
            let (mut w, wait_req) = (
                t.clone(),
                berth_e2e::with_ns(
                    &ns,
                    tasks::WaitRequest {
                        container_id: id.into(),
                        exec_id: String::new(),
                    },
                ),
            );
            let wait = tokio::spawn(async move { w.wait(wait_req).await });
            t.start(berth_e2e::with_ns(
                &ns,
                tasks::StartRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
            ))
            .await
            .unwrap();
            assert_eq!(wait.await.unwrap().unwrap().into_inner().exit_status, 0);
            t.delete(berth_e2e::with_ns(
                &ns,
                tasks::DeleteTaskRequest {
                    container_id: id.into(),
                },
            ))
            .await
            .unwrap();
        }
    });
}

/// PIDs of processes whose working directory is under `dir`.
fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| p.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| berth_e2e::cwd_under(pid, dir))
        .collect()
}

/// berthd keeps one Berth shim started ahead of need: a task takes it (the same process becomes
/// its shim, with the task's namespace in its events and runtime state), another is started for
/// the next; an idle one ends with its daemon (kill -9 included), an adopted one outlives it and
/// is reconnected; `[runtime] warm_shims = 0` starts every shim on demand.
#[test]
fn a_warm_shim_is_adopted_refilled_and_ends_with_its_daemon() {
    const NS: &str = "berth-e2e-shimberth-warm";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let mut d = daemon();
    setup(&d, NS);
    let warm_dir = d.dir.path().join("state/warm");
    wait_for("a warm shim", || pids_in(&warm_dir).len() == 1);
    let warm = pids_in(&warm_dir)[0];
    let topics = topics_during(&d, NS, || run_sleeper(&d, NS, "bg"));
    assert_eq!(topics, ["/tasks/create", "/tasks/start"]);
    assert_eq!(berth_shims(&d), [warm], "the warm shim serves bg");
    assert!(d.dir.path().join("state/runc").join(NS).join("bg").exists());
    wait_for("another warm shim", || {
        pids_in(&warm_dir).iter().any(|&p| p != warm)
    });
    let next = pids_in(&warm_dir)[0];
    // kill -9: the idle one goes with the daemon, bg's shim stays and is found again.
    d.kill9();
    let gone = berth_runtime::pidfd::Pidfd::open(next)
        .map(|fd| fd.wait_exit(Duration::from_secs(10)))
        .unwrap_or(true);
    assert!(gone, "the idle warm shim outlived its daemon");
    d.restart();
    wait_for("bg listed again", || {
        String::from_utf8_lossy(&d.ctr(&["-n", NS, "task", "ls"]).stdout).contains("RUNNING")
    });
    wait_for("a new warm shim", || {
        pids_in(&warm_dir).iter().any(|&p| p != next && p != warm)
    });
    remove_sleeper(&d, NS, "bg");
    wait_for("no process left", || d.leftover_pids().is_empty());
    drop(d);

    // None kept: tasks still run, each with a shim of its own.
    let d = Daemon::start_for_tasks_with("[runtime]\nwarm_shims = 0\n", &[("PATH", &shim_path())]);
    setup(&d, NS);
    let out = ok(d.ctr(&[
        "-n",
        NS,
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--fifo-dir",
        &d.fifo_dir().display().to_string(),
        IMAGE,
        "cold",
        "echo",
        "cold",
    ]));
    assert_eq!(out.trim(), "cold");
    assert!(pids_in(&d.dir.path().join("state/warm")).is_empty());
}

/// An exec as containerd's Go client sends one with a terminal (the request's `terminal` set,
/// the process spec's not) gets a pty from Berth's shim, as from the Go shim (both checked).
#[test]
fn an_exec_with_a_terminal_in_the_request_only_gets_a_pty() {
    const NS: &str = "berth-e2e-shimberth-exectty";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = daemon();
    setup(&d, NS);
    // Berth's shim, then the Go shim (what the request means there is what it must mean here).
    for (runtime, id) in [(RUNTIME, "c"), ("io.containerd.runc.v2", "c-go")] {
        run_sleeper_on(&d, NS, id, runtime);
        let (code, out) = exec_tty_as_the_go_client(&d, NS, id);
        assert_eq!(code, 0, "{runtime}: tty exited {code}: {out:?}");
        assert!(out.contains("/dev/pts/"), "{runtime}: {out:?}");
        remove_sleeper(&d, NS, id);
    }
}

/// Execs `tty` in container `id` with the request's `terminal` set and the process spec's not;
/// returns its exit code and output.
fn exec_tty_as_the_go_client(d: &Daemon, ns: &str, id: &str) -> (u32, String) {
    use berth_api::containerd::services::tasks::v1 as tasks;
    let fifo_dir = d.fifo_dir();
    let out_path = fifo_dir.join(format!("exec-tty-out-{id}"));
    assert!(
        Command::new("mkfifo")
            .arg(&out_path)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let p = out_path.clone();
        std::thread::spawn(move || std::fs::read(p).unwrap_or_default())
    };
    let spec = serde_json::json!({
        "args": ["sh", "-c", "tty"], "cwd": "/", "env": ["PATH=/bin"], "terminal": false,
        "user": {"uid": 0, "gid": 0},
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = rt.block_on(async {
        let mut t = tasks::tasks_client::TasksClient::new(d.channel().await);
        t.exec(berth_e2e::with_ns(
            ns,
            tasks::ExecProcessRequest {
                container_id: id.into(),
                exec_id: "tty1".into(),
                terminal: true,
                stdout: out_path.display().to_string(),
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&spec).unwrap(),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
        let (mut w, wait_req) = (
            t.clone(),
            berth_e2e::with_ns(
                ns,
                tasks::WaitRequest {
                    container_id: id.into(),
                    exec_id: "tty1".into(),
                },
            ),
        );
        let wait = tokio::spawn(async move { w.wait(wait_req).await });
        t.start(berth_e2e::with_ns(
            ns,
            tasks::StartRequest {
                container_id: id.into(),
                exec_id: "tty1".into(),
            },
        ))
        .await
        .unwrap();
        let code = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the exec ends")
            .unwrap()
            .unwrap()
            .into_inner()
            .exit_status;
        t.delete_process(berth_e2e::with_ns(
            ns,
            tasks::DeleteProcessRequest {
                container_id: id.into(),
                exec_id: "tty1".into(),
            },
        ))
        .await
        .unwrap();
        code
    });
    let out = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    (code, out)
}

/// A container without a PID namespace of its own (here: joining the host's) loses its other
/// processes when its init ends, through either shim (containerd's `ShouldKillAllOnExit`): a
/// `sleep` left behind by the init is killed, not kept in the container's cgroup.
#[test]
fn host_pid_containers_lose_their_other_processes_with_their_init() {
    const NS: &str = "berth-e2e-shimberth-hostpid";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = daemon();
    setup(&d, NS);
    let fifo = d.fifo_dir();
    let fifo = fifo.to_str().unwrap();
    // The host's PID namespace, through this test's process (pid 1 may not be readable).
    let host_pid = format!("pid:/proc/{}/ns/pid", std::process::id());
    for (runtime, id) in [(RUNTIME, "hp-berth"), ("io.containerd.runc.v2", "hp-go")] {
        ok(d.ctr(&[
            "-n",
            NS,
            "run",
            "-d",
            "--runtime",
            runtime,
            "--with-ns",
            &host_pid,
            "--fifo-dir",
            fifo,
            IMAGE,
            id,
            "sh",
            "-c",
            "sleep 1000 & sleep 1; exit 0",
        ]));
        let procs = Path::new("/sys/fs/cgroup/pids")
            .join(NS)
            .join(id)
            .join("cgroup.procs");
        wait_for("the child in the cgroup", || {
            std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().count() >= 2)
        });
        wait_for("the init's exit", || {
            String::from_utf8_lossy(&d.ctr(&["-n", NS, "task", "ls"]).stdout)
                .lines()
                .any(|l| l.starts_with(id) && l.contains("STOPPED"))
        });
        wait_for("no process left in the container's cgroup", || {
            std::fs::read_to_string(&procs).is_ok_and(|p| p.trim().is_empty())
        });
        ok(d.ctr(&["-n", NS, "task", "rm", id]));
        ok(d.ctr(&["-n", NS, "containers", "rm", id]));
    }
}

/// The shim's cgroup comes from either options type a client may send it: runc's v2 `Options`
/// and the v1 Linux runtime's `CreateOptions` (what containerd's Go client sends to a runtime not
/// named io.containerd.runc.*).
#[test]
fn the_shim_cgroup_is_taken_from_either_options_type() {
    use berth_api::containerd::services::tasks::v1 as tasks;
    const NS: &str = "berth-e2e-shimberth-shimcg";
    const CG: &str = "berth-e2e-shimberth-shimcg-shims";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let _shims_cg = berth_e2e::CgroupCleanup(CG);
    let pids_cg = Path::new("/sys/fs/cgroup/pids").join(CG);
    std::fs::create_dir_all(&pids_cg).unwrap();
    let d = daemon();
    setup(&d, NS);
    // A string field: tag, length, bytes (both fields are short).
    let field = |tag: u8, s: &str| {
        let mut v = vec![tag, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    };
    let path = format!("/{CG}");
    let cases = [
        // containerd.runc.v1.Options: shim_cgroup = 3.
        ("v2", "containerd.runc.v1.Options", field(3 << 3 | 2, &path)),
        // containerd.linux.runc.CreateOptions: shim_cgroup = 9.
        (
            "v1",
            "containerd.linux.runc.CreateOptions",
            field(9 << 3 | 2, &path),
        ),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (id, type_url, value) in cases {
        ok(d.ctr(&[
            "-n",
            NS,
            "containers",
            "create",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sleep",
            "1000",
        ]));
        let before = berth_shims(&d);
        rt.block_on(async {
            let mut t = tasks::tasks_client::TasksClient::new(d.channel().await);
            t.create(berth_e2e::with_ns(
                NS,
                tasks::CreateTaskRequest {
                    container_id: id.into(),
                    options: Some(prost_types::Any {
                        type_url: type_url.into(),
                        value,
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        });
        let shim: Vec<i32> = berth_shims(&d)
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        assert_eq!(shim.len(), 1, "{id}: {shim:?}");
        let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", shim[0])).unwrap();
        assert!(
            cgroups
                .lines()
                .any(|l| l.ends_with(&format!(":pids:/{CG}"))),
            "{id} ({type_url}): the shim is in {cgroups}"
        );
        ok(d.ctr(&["-n", NS, "task", "rm", "-f", id]));
        ok(d.ctr(&["-n", NS, "containers", "rm", id]));
    }
    wait_for("no shim left", || berth_shims(&d).is_empty());
}

/// `berthctl run -t` on a terminal: the container's terminal has our size (sent at start, then
/// on each SIGWINCH) and its output comes back whole, with the exit code.
#[test]
fn berthctl_run_with_a_terminal_takes_our_size() {
    const NS: &str = "berth-e2e-shimberth-btty";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = daemon();
    setup(&d, NS);
    let line = format!(
        "stty rows 33 cols 77; {} --address {} -n {NS} run --rm -t --fifo-dir {} {IMAGE} btty sh -c 'stty size; tty; exit 3'",
        bin("berthctl").display(),
        d.sock.display(),
        d.fifo_dir().display(),
    );
    let (out, text) = berth_e2e::on_a_pty(&line);
    assert!(
        text.contains("33 77") && text.contains("/dev/pts/"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "{text}");
    wait_for("no process left", || d.leftover_pids().is_empty());
}

/// An image of 128 layers, the most a Docker build makes: its overlay named with absolute
/// paths is longer than the page `mount(2)` reads, so the lower directories are named relative
/// to the directory they share. A container of it runs through each shim and sees each file as
/// the layers above left it.
#[test]
fn an_image_of_128_layers_runs_through_each_shim() {
    const NS: &str = "berth-e2e-shimberth-layers";
    const IMG: &str = "docker.io/library/layers:128";
    let _cg = berth_e2e::CgroupCleanup(NS);
    let d = daemon();
    let mut layers = vec![berth_e2e::busybox_layer(&[
        ("overwriteme", b"FIRST!\n"),
        ("bottom", b"way at the bottom\n"),
    ])];
    for i in 1..128 {
        let top = format!("{i} WAS HERE!\n");
        let added = format!("addhere/file-{i}");
        layers.push(berth_e2e::files_layer(&[
            ("overwriteme", top.as_bytes()),
            (&added, b"same\n"),
        ]));
    }
    let layers: Vec<(Vec<u8>, String, &str)> = layers
        .into_iter()
        .map(|(l, d)| (l, d, "application/vnd.oci.image.layer.v1.tar+gzip"))
        .collect();
    let tar = d.dir.path().join("layers.tar");
    berth_e2e::oci_archive(&tar, IMG, &layers);
    ok(d.ctr(&["-n", NS, "images", "import", tar.to_str().unwrap()]));
    // The premise: a view of the top layer mounts an overlay whose options, with absolute
    // paths, are longer than a page.
    let snaps = ok(d.ctr(&["-n", NS, "snapshots", "ls"]));
    let parents: Vec<&str> = snaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let top = snaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .find(|k| !parents.contains(k))
        .expect("a top layer");
    ok(d.ctr(&["-n", NS, "snapshots", "view", "probe", top]));
    let m = ok(d.ctr(&["-n", NS, "snapshots", "mounts", "/x", "probe"]));
    assert!(m.len() > 4096 && m.matches("/fs").count() == 128, "{m}");
    ok(d.ctr(&["-n", NS, "snapshots", "rm", "probe"]));
    for (client, runtime) in [
        ("berthctl", RUNTIME),
        ("ctr", RUNTIME),
        ("ctr", "io.containerd.runc.v2"),
    ] {
        let cmd = ["sh", "-c", "cat /overwriteme /bottom; ls /addhere"];
        let out = run_rm(&d, client, NS, runtime, IMG, "layers", &cmd);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{client} through {runtime}: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines[..2],
            ["127 WAS HERE!", "way at the bottom"],
            "{client} through {runtime}"
        );
        assert_eq!(lines.len() - 2, 127, "{client} through {runtime}: {stdout}");
    }
    wait_for("no process left", || d.leftover_pids().is_empty());
}
