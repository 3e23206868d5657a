//! `berthctl snapshots ...` and `berthctl images check` against berthd, checked against what
//! Debian's `ctr` prints for the same daemon state.

use berth_e2e::{Daemon, busybox_oci_archive, fails, ok, sha256};

const NS: &str = "bctl";

fn ctr(d: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["-n", NS];
    all.extend_from_slice(args);
    ok(d.ctr(&all))
}

fn bctl(d: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["-n", NS];
    all.extend_from_slice(args);
    ok(d.berthctl(&all))
}

fn bytes(out: std::process::Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn berthctl_snapshots_and_images_check_match_ctr() {
    let d = Daemon::start();
    d.wait_startup_collection();
    let dir = tempfile::tempdir().unwrap();
    let a1 = dir.path().join("one.tar");
    busybox_oci_archive(&a1, "one:1", &[("etc/motd", b"one\n")]);
    let a2 = dir.path().join("two.tar");
    let two = busybox_oci_archive(&a2, "two:1", &[("etc/motd", b"two\n")]);
    // Both unpack what they import unless told not to.
    ctr(&d, &["images", "import", &a1.display().to_string()]);
    bctl(
        &d,
        &["images", "import", "--no-unpack", &a2.display().to_string()],
    );

    let check = bctl(&d, &["images", "check"]);
    assert_eq!(check, ctr(&d, &["images", "check"]));
    let row = |name: &str| -> Vec<String> {
        check
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {check}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let one = row("one:1");
    assert_eq!(one[3..5], ["complete".to_string(), "(3/3)".to_string()]);
    assert_eq!(one.last().unwrap(), "true");
    assert_eq!(row("two:1").last().unwrap(), "false", "not unpacked");
    // A missing layer makes the image incomplete.
    bctl(&d, &["content", "rm", &two.layers[1]]);
    let check = bctl(&d, &["images", "check"]);
    assert_eq!(check, ctr(&d, &["images", "check"]));
    assert!(
        check
            .lines()
            .any(|l| l.starts_with("two:1") && l.contains("incomplete (2/3)")),
        "{check}"
    );

    // Listing, tree and info print what ctr prints.
    let ls = bctl(&d, &["snapshots", "ls"]);
    assert_eq!(ls, ctr(&d, &["snapshots", "ls"]));
    let top = ls
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|r| r.len() == 3 && r[2] == "Committed")
        .expect("a layer with a parent")[0]
        .to_string();
    let out = bctl(
        &d,
        &["snapshots", "prepare", "--target", "/mnt/x", "work", &top],
    );
    assert_eq!(out, ctr(&d, &["snapshots", "mounts", "/mnt/x", "work"]));
    assert!(
        out.starts_with("mount -t overlay overlay /mnt/x -o "),
        "{out}"
    );
    assert_eq!(
        bctl(&d, &["snapshots", "mounts", "/m", "work"]),
        ctr(&d, &["snapshots", "mounts", "/m", "work"])
    );
    bctl(&d, &["snapshots", "view", "look", &top]);
    assert_eq!(
        bctl(&d, &["snapshots", "tree"]),
        ctr(&d, &["snapshots", "tree"])
    );
    assert!(bctl(&d, &["snapshots", "tree"]).contains("\\_ work"));
    for key in ["work", &top] {
        assert_eq!(
            bctl(&d, &["snapshots", "info", key]),
            ctr(&d, &["snapshots", "info", key])
        );
    }
    assert_eq!(
        bctl(&d, &["snapshots", "usage", &top]),
        ctr(&d, &["snapshots", "usage", &top])
    );
    assert_eq!(
        bctl(&d, &["snapshots", "usage", "-b"]),
        ctr(&d, &["snapshots", "usage", "-b"])
    );
    let labels = bctl(&d, &["snapshots", "label", "work", "team=x"]);
    assert!(
        labels.starts_with("containerd.io/gc.root=") && labels.trim().ends_with(",team=x"),
        "{labels}"
    );
    assert!(bctl(&d, &["snapshots", "info", "work"]).contains("\"team\": \"x\""));

    // Write into the active snapshot through its upper directory, then diff: the same bytes as
    // ctr's diff of the same snapshot (both are deterministic).
    let m = bctl(&d, &["snapshots", "mounts", "/m", "work"]);
    let upper = m
        .split(',')
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap()
        .to_string();
    std::fs::write(std::path::Path::new(&upper).join("hello"), b"hi").unwrap();
    let ours = bytes(d.berthctl(&["-n", NS, "snapshots", "diff", "--keep", "work"]));
    let theirs = bytes(d.ctr(&["-n", NS, "snapshots", "diff", "--keep", "work"]));
    assert_eq!(sha256(&ours), sha256(&theirs));
    let names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&ours[..]))
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["hello"]);
    assert!(
        ctr(&d, &["content", "ls"]).contains(&sha256(&ours)),
        "--keep keeps it"
    );

    // Commit, two-snapshot diff (a is lower, b upper), views cleaned up afterwards.
    bctl(&d, &["snapshots", "commit", "work-c", "work"]);
    let plain = "application/vnd.oci.image.layer.v1.tar";
    let ours = bytes(d.berthctl(&[
        "-n",
        NS,
        "snapshots",
        "diff",
        "--media-type",
        plain,
        &top,
        "work-c",
    ]));
    let theirs = bytes(d.ctr(&[
        "-n",
        NS,
        "snapshots",
        "diff",
        "--media-type",
        plain,
        &top,
        "work-c",
    ]));
    assert_eq!(ours, theirs);
    let ls = bctl(&d, &["snapshots", "ls"]);
    assert!(!ls.contains("-view-"), "{ls}");

    // Removal, and errors.
    bctl(&d, &["snapshots", "rm", "look", "work-c"]);
    let ls = bctl(&d, &["snapshots", "ls"]);
    assert!(!ls.contains("look") && !ls.contains("work-c"), "{ls}");
    let e = fails(d.berthctl(&["-n", NS, "snapshots", "rm", "missing"]));
    assert!(e.contains("failed to remove \"missing\""), "{e}");
    let e = fails(d.berthctl(&["-n", NS, "snapshots", "--snapshotter", "zfs", "ls"]));
    assert!(e.contains("not loaded"), "{e}");
    let e = fails(d.berthctl(&[
        "-n",
        NS,
        "snapshots",
        "diff",
        "--media-type",
        "text/plain",
        &top,
    ]));
    assert!(e.contains("media_type"), "{e}");
}
