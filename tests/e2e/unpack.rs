//! `ctr images import` with unpacking: Snapshots.Stat/Prepare, Diff.Apply, Snapshots.Commit, as
//! ctr drives them; the unpacked root file system is mounted and checked, whiteouts included.

use berth_e2e::{Daemon, busybox_oci_archive, ok};

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn ctr_import_unpacks_layers_into_snapshots() {
    let d = Daemon::start();
    d.wait_startup_collection();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    let img = busybox_oci_archive(
        &archive,
        "docker.io/library/unpack:1",
        &[("bin/.wh.ls", b""), ("etc/motd", b"two\n")],
    );
    if let Ok(keep) = std::env::var("BERTH_KEEP_ARCHIVE") {
        std::fs::copy(&archive, keep).unwrap();
    }
    let out = ok(d.ctr(&[
        "-n",
        "up",
        "images",
        "import",
        &archive.display().to_string(),
    ]));
    assert!(out.contains("unpacking") && out.contains("done"), "{out}");
    let check = ok(d.ctr(&["-n", "up", "images", "check"]));
    assert!(
        check
            .lines()
            .any(|l| l.starts_with(&img.name) && l.trim_end().ends_with("true")),
        "{check}"
    );
    let ls = ok(d.ctr(&["-n", "up", "snapshots", "ls"]));
    let committed: Vec<Vec<&str>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(committed.len(), 2, "one committed snapshot per layer: {ls}");
    let top = committed
        .iter()
        .find(|r| r.len() == 3)
        .expect("the top layer has a parent")[0]
        .to_string();
    // ctr labelled the config with the top chain id, which keeps the snapshots alive.
    let info = ok(d.ctr(&["-n", "up", "content", "ls"]));
    assert!(
        info.contains(&format!("containerd.io/gc.ref.snapshot.overlayfs={top}")),
        "{info}"
    );

    ok(d.ctr(&["-n", "up", "snapshots", "prepare", "rootfs", &top]));
    let m = ok(d.ctr(&["-n", "up", "snapshots", "mounts", "/mnt", "rootfs"]));
    let opts = m.split(" -o ").nth(1).unwrap().trim().to_string();
    let target = dir.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&target)
        .status()
        .unwrap();
    assert!(st.success());
    let _guard = Unmount(target.clone());
    assert_eq!(
        std::fs::read_to_string(target.join("etc/motd")).unwrap(),
        "two\n"
    );
    assert!(target.join("bin/sh").symlink_metadata().is_ok());
    assert!(
        target.join("bin/ls").symlink_metadata().is_err(),
        "the whiteout hid bin/ls"
    );
    let out = std::process::Command::new("chroot")
        .arg(&target)
        .args(["/bin/sh", "-c", "echo in-rootfs"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "in-rootfs");
    drop(_guard);

    // Removing the image (and the working snapshot) lets GC take every layer snapshot.
    ok(d.ctr(&["-n", "up", "snapshots", "rm", "rootfs"]));
    ok(d.ctr(&["-n", "up", "images", "rm", "--sync", &img.name]));
    let ls = ok(d.ctr(&["-n", "up", "snapshots", "ls"]));
    assert_eq!(ls.lines().count(), 1, "{ls}");
    assert_eq!(
        std::fs::read_dir(d.root().join("snapshots/overlayfs/snapshots"))
            .unwrap()
            .count(),
        0
    );
}
