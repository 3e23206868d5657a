//! What an operator reads when something is wrong: one line naming the object and the reason,
//! with the right gRPC code, from berthd, berthctl and the shim.

use std::process::Command;

use berth_e2e::{Daemon, bin, bin_dir, busybox_oci_archive, fails, ok};

const NS: &str = "berth-e2e-errors";
const IMAGE: &str = "docker.io/library/errors:1";

/// Each cause once, no Rust debug struct, no tonic field dump.
fn plain(text: &str) {
    for bad in [
        "Os {",
        "kind:",
        "Some requested entity",
        "status: ",
        "metadata: ",
    ] {
        assert!(!text.contains(bad), "{bad:?} in {text:?}");
    }
    assert_eq!(text.trim_end().lines().count(), 1, "one line: {text:?}");
}

#[test]
fn errors_read_plainly() {
    let _cg = berth_e2e::CgroupCleanup(NS);
    bin("containerd-shim-berth-v2");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = Daemon::start_for_tasks_with_env(&[("PATH", &path)]);
    let b = |args: &[&str]| {
        let mut all = vec!["-n", NS];
        all.extend_from_slice(args);
        d.berthctl(&all)
    };

    // A second berthd on a root in use names the root and the daemon holding it.
    let out = Command::new(bin("berthd"))
        .args(["--root", &d.root().display().to_string()])
        .args([
            "--state",
            &d.dir.path().join("state2").display().to_string(),
        ])
        .args([
            "--address",
            &d.dir.path().join("two.sock").display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    let last = e.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "berthd: another berthd is using {} (pid {}): one root serves one daemon",
            d.root().display(),
            d.pid()
        ),
        "{e}"
    );

    // Missing objects: the object, "not found", the code's name.
    let e = fails(b(&["containers", "rm", "nope"]));
    assert!(
        e.starts_with("berthctl: container \"nope\": not found (NotFound)"),
        "{e}"
    );
    plain(e.lines().next().unwrap());
    let e = fails(b(&["tasks", "kill", "nope"]));
    assert_eq!(e.trim(), "berthctl: task \"nope\": not found (NotFound)");

    // A bad container id is named as such, before anything is made under it.
    let dir = d.dir.path().join("img.tar");
    busybox_oci_archive(&dir, IMAGE, &[("etc/motd", b"errors\n")]);
    ok(d.ctr(&["-n", NS, "images", "import", dir.to_str().unwrap()]));
    let e = fails(b(&["run", IMAGE, "../../etc", "true"]));
    assert!(
        e.starts_with("berthctl: container id \"../../etc\": "),
        "{e}"
    );
    plain(&e);
    assert!(
        ok(b(&["leases", "ls", "-q"])).trim().is_empty(),
        "no lease made"
    );

    // No daemon: the socket's error once, and a hint.
    let e = fails(
        Command::new(bin("berthctl"))
            .args(["--address", "/nonexistent/berthd.sock", "version"])
            .output()
            .unwrap(),
    );
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    assert!(
        e.contains("cannot reach berthd at /nonexistent/berthd.sock"),
        "{e}"
    );
    plain(&e);

    // A runtime failure (no such executable): the runtime by name, not by install path, and
    // a code a client can act on (ctr prints it last).
    let fifo = d.fifo_dir();
    let e = fails(d.ctr(&[
        "-n",
        NS,
        "run",
        "--runtime",
        "io.containerd.berth.v2",
        "--fifo-dir",
        fifo.to_str().unwrap(),
        IMAGE,
        "noexe",
        "/no/such/program",
    ]));
    assert!(e.contains("berth-runc create failed"), "{e}");
    assert!(
        !e.contains(&*bin_dir().to_string_lossy()),
        "install path in {e}"
    );
    assert!(e.trim_end().ends_with(": not found"), "{e}");
    let _ = d.ctr(&["-n", NS, "containers", "rm", "noexe"]);

    // The shim has a name ps and pgrep know; berthd's log (a file) has no colour codes.
    ok(b(&["run", "-d", IMAGE, "named", "sleep", "1000"]));
    let bundle = d
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task")
        .join(NS)
        .join("named");
    let shim = d
        .leftover_pids()
        .into_iter()
        .find(|&p| berth_e2e::cwd_under(p, &bundle))
        .expect("the shim");
    let comm = std::fs::read_to_string(format!("/proc/{shim}/comm")).unwrap();
    assert_eq!(comm.trim(), "containerd-shim");
    assert!(
        !d.log().contains('\u{1b}'),
        "ANSI codes in berthd's log file"
    );
    ok(b(&["containers", "rm", "--force", "named"]));

    // berthctl: a typo gets a useful hint, arguments are documented, and run/exec leave no
    // FIFO directory behind (a temporary one of their own by default).
    let e = fails(b(&["stop", "x"]));
    assert_eq!(
        e.trim(),
        "berthctl: no command \"stop\"; try: berthctl tasks kill ID (SIGTERM; -s KILL to force)"
    );
    let help = ok(b(&["tasks", "exec", "--help"]));
    assert!(
        help.contains("The task's container") && help.contains("An id for the new process"),
        "{help}"
    );
    let before = fifo_dirs();
    assert_eq!(
        ok(b(&["run", "--rm", IMAGE, "quick", "cat", "/etc/motd"])).trim(),
        "errors"
    );
    assert_eq!(fifo_dirs(), before, "a FIFO directory was left behind");
}

/// berthctl's FIFO directories in the temporary directory.
fn fifo_dirs() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("berthctl-"))
        .collect();
    v.sort();
    v
}
