//! exec into a running container, tty over the console socket.

use std::io::Read;
use std::os::unix::net::UnixListener;

use serde_json::json;

use crate::util::{Env, unique};

#[test]
fn exec_runs_inside() {
    let env = Env::new();
    let b = env.bundle(&["sleep", "1000"]);
    let id = unique("exec");
    env.create(&b, &id);
    env.ok(&["start", &id]);
    let out = env.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "hostname; echo $$; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "berth");
    assert_ne!(lines[1], "1", "exec'd process is not the init");
    assert_eq!(lines[2].trim(), "sleep 1000");
    let o = env.run(&["exec", &id, "sh", "-c", "exit 5"]);
    assert_eq!(o.status.code(), Some(5));
    // --process, --detach, --pid-file
    let proc_json = env.tmp.path().join("process.json");
    std::fs::write(
        &proc_json,
        serde_json::to_vec(&json!({
            "terminal": false, "user": {"uid": 0, "gid": 0},
            "args": ["sleep", "500"], "env": ["PATH=/bin"], "cwd": "/"
        }))
        .unwrap(),
    )
    .unwrap();
    let pid_file = env.tmp.path().join("exec.pid");
    env.ok(&[
        "exec",
        "--process",
        proc_json.to_str().unwrap(),
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let ps: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(ps.contains(&pid), "{ps:?} lacks {pid}");
    // The exec'd process joined the container's cgroup.
    b.assert_member(pid.into());
    env.ok(&["kill", "--all", &id, "KILL"]);
    env.wait_status(&id, "stopped");
    let err = env.fail(&["exec", &id, "true"]);
    assert!(!err.is_empty());
}

#[test]
fn tty_over_console_socket() {
    let env = Env::new();
    let mut b =
        env.sh_bundle("test -t 0 && test -t 1 && echo TTY-OK; ls -l /dev/console; sleep 1000");
    b.config["process"]["terminal"] = json!(true);
    b.save();
    let sock = env.tmp.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let id = unique("tty");
    env.track(&id);
    let handle = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        berth_runtime::recv_fd(&conn).unwrap().1
    });
    env.ok(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
    ]);
    let master = handle.join().unwrap();
    env.ok(&["start", &id]);
    let mut f = std::fs::File::from(master);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains("console") && std::time::Instant::now() < deadline
    {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("TTY-OK"), "{text}");
    assert!(text.contains("/dev/console"), "{text}");
    // A terminal without a console socket is refused.
    let id2 = unique("tty");
    env.track(&id2);
    env.fail(&["create", "--bundle", b.dir.to_str().unwrap(), &id2]);
}

#[test]
fn tty_in_foreground_run() {
    let env = Env::new();
    let mut b = env.sh_bundle("test -t 0 && echo IS-TTY; read x; echo got=$x; exit 4");
    b.config["process"]["terminal"] = json!(true);
    b.save();
    let id = unique("fgtty");
    env.track(&id);
    // script(1) gives the runtime a terminal of its own, as a person at a shell has.
    let cmd = format!(
        "{} --root {} run --bundle {} {id}; echo rc=$?",
        crate::util::bin().display(),
        env.root.display(),
        b.dir.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"typed\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.contains("IS-TTY"), "{text}");
    assert!(text.contains("got=typed"), "{text}");
    assert!(text.contains("rc=4"), "{text}");
}
