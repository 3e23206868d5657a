//! A proxy snapshotter: berthd forwarding a snapshotter to another process that serves the
//! Snapshots gRPC API on a unix socket (here, a second berthd), configured as containerd does
//! it with `[proxy_plugins.<name>]`.

use berth_e2e::{Daemon, Registry, busybox_oci_archive, fails, ok};

#[test]
fn snapshots_and_pulls_go_through_a_remote_snapshotter() {
    let remote = Daemon::start();
    let config = format!(
        "[proxy_plugins.remote]\ntype = \"snapshot\"\naddress = \"{}\"\nsnapshotter = \"overlayfs\"\n",
        remote.sock.display()
    );
    let d = Daemon::start_with_config(&config, &[]);
    // Let the start-up collection pass (unleased snapshots are collectable).
    d.wait_startup_collection();
    let plugins = ok(d.ctr(&["plugins", "ls"]));
    assert!(
        plugins
            .lines()
            .any(|l| l.contains("io.containerd.snapshotter.v1") && l.contains("remote")),
        "{plugins}"
    );
    let sn = ["-n", "p", "snapshots", "--snapshotter", "remote"];
    let with =
        |extra: &[&str]| -> Vec<String> { sn.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |extra: &[&str]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        d.ctr(&args)
    };
    ok(run(&["prepare", "base-active", ""]));
    let mounts = ok(run(&["mounts", "/mnt/x", "base-active"]));
    // The mounts are the remote's: its root, not ours.
    assert!(mounts.contains(remote.root().to_str().unwrap()), "{mounts}");
    ok(run(&["commit", "base", "base-active"]));
    ok(run(&["view", "a-view", "base"]));
    let ls = ok(run(&["ls"]));
    assert!(ls.contains("base") && ls.contains("a-view"), "{ls}");
    // The remote holds them under its own names.
    let theirs = ok(remote.ctr(&["-n", "berth-proxy", "snapshots", "ls"]));
    assert_eq!(theirs.lines().count(), 3, "{theirs}");
    assert!(theirs.contains("berth.committed."), "{theirs}");
    ok(run(&["usage", "base"]));
    ok(run(&["rm", "a-view"]));
    let e = fails(run(&["rm", "base-missing"]));
    assert!(e.contains("not found"), "{e}");
    assert_eq!(
        ok(remote.ctr(&["-n", "berth-proxy", "snapshots", "ls"]))
            .lines()
            .count(),
        2
    );

    // A pull unpacks into the remote snapshotter (applied onto its mounts).
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    busybox_oci_archive(&archive, "px:1", &[("etc/motd", b"proxied\n")]);
    let reference = reg.push(&archive, "library/px:1");
    let out = ok(d.berthctl(&[
        "-n",
        "p",
        "pull",
        "--plain",
        "--snapshotter",
        "remote",
        &reference,
    ]));
    assert!(out.contains("pulled and unpacked"), "{out}");
    let ls = ok(run(&["ls"]));
    assert_eq!(
        ls.matches("Committed").count(),
        3,
        "base + two layers: {ls}"
    );
    let theirs = ok(remote.ctr(&["-n", "berth-proxy", "snapshots", "ls"]));
    let committed = theirs
        .lines()
        .filter(|l| l.starts_with("berth.committed."))
        .count();
    assert_eq!(committed, 3, "{theirs}\nours:\n{ls}");
}

#[test]
fn proxy_plugin_configuration_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    for (text, want) in [
        (
            "[proxy_plugins.x]\ntype = \"content\"\naddress = \"/x.sock\"\n",
            "proxy_plugins.x.type",
        ),
        (
            "[proxy_plugins.x]\ntype = \"snapshot\"\naddress = \"rel.sock\"\n",
            "proxy_plugins.x.address",
        ),
        (
            "[proxy_plugins.overlayfs]\ntype = \"snapshot\"\naddress = \"/x.sock\"\n",
            "proxy_plugins.overlayfs",
        ),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(berth_e2e::bin("berthd"))
            .arg("--config")
            .arg(&cfg)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(dir.path().join("s.sock"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "want {want:?} in {err}");
    }
}
