//! Snapshots through Debian's `ctr`: prepare, mounts, commit, view, tree, info, usage, rm, and
//! what the garbage collector does with unreferenced ones.

use berth_e2e::{Daemon, fails, ok};

fn ctr(d: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["-n", "snap"];
    all.extend_from_slice(args);
    ok(d.ctr(&all))
}

#[test]
fn ctr_snapshot_lifecycle() {
    let d = Daemon::start();
    // Let the start-up collection pass: the view below has no gc.root label and would go.
    d.wait_startup_collection();
    ctr(&d, &["snapshots", "prepare", "base", ""]);
    let m = ctr(&d, &["snapshots", "mounts", "/mnt/x", "base"]);
    let fs = d.root().join("snapshots/overlayfs/snapshots");
    assert!(
        m.starts_with("mount -t bind ")
            && m.contains(&fs.display().to_string())
            && m.contains("rw,rbind"),
        "{m}"
    );
    // Write into the active snapshot's directory, as a mount would, then commit it.
    let dir = m.split_whitespace().nth(3).unwrap().to_string();
    std::fs::write(std::path::Path::new(&dir).join("hello"), "world").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    ctr(&d, &["snapshots", "commit", "layer1", "base"]);
    // A committed snapshot is made at its commit: created is updated (as containerd has it),
    // not the prepare's time.
    let info: serde_json::Value =
        serde_json::from_str(&ctr(&d, &["snapshots", "info", "layer1"])).unwrap();
    assert_eq!(info["Created"], info["Updated"], "{info}");
    ctr(&d, &["snapshots", "prepare", "work", "layer1"]);
    let m = ctr(&d, &["snapshots", "mounts", "/mnt/x", "work"]);
    assert!(
        m.starts_with("mount -t overlay overlay")
            && m.contains("lowerdir=")
            && m.contains("upperdir="),
        "{m}"
    );
    ctr(&d, &["snapshots", "view", "look", "layer1"]);
    let ls = ctr(&d, &["snapshots", "ls"]);
    let rows: Vec<Vec<&str>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.contains(&vec!["layer1", "Committed"]), "{ls}");
    assert!(rows.contains(&vec!["work", "layer1", "Active"]), "{ls}");
    assert!(rows.contains(&vec!["look", "layer1", "View"]), "{ls}");
    let tree = ctr(&d, &["snapshots", "tree"]);
    assert!(
        tree.contains("layer1") && tree.contains("\\_ work"),
        "{tree}"
    );
    let info = ctr(&d, &["snapshots", "info", "layer1"]);
    assert!(info.contains("\"Kind\": \"Committed\""), "{info}");
    let usage = ctr(&d, &["snapshots", "usage", "layer1"]);
    assert!(usage.contains("layer1"), "{usage}");
    ctr(&d, &["snapshots", "label", "work", "team=x"]);
    assert!(ctr(&d, &["snapshots", "info", "work"]).contains("\"team\": \"x\""));

    // Errors with containerd's codes.
    let e = fails(d.ctr(&["-n", "snap", "snapshots", "rm", "layer1"]));
    assert!(e.contains("failed precondition"), "{e}");
    let e = fails(d.ctr(&["-n", "snap", "snapshots", "prepare", "work", "layer1"]));
    assert!(e.contains("already exists"), "{e}");
    let e = fails(d.ctr(&["-n", "snap", "snapshots", "prepare", "x", "missing"]));
    assert!(e.contains("not found"), "{e}");
    let e = fails(d.ctr(&["-n", "snap", "snapshots", "prepare", "y", "work"]));
    assert!(e.contains("not a committed"), "{e}");
    let e = fails(d.ctr(&["-n", "snap", "snapshots", "--snapshotter", "zfs", "ls"]));
    assert!(e.contains("not loaded"), "{e}");
    let e = fails(d.ctr(&["-n", "snap", "snapshots", "mounts", "/m", "layer1"]));
    assert!(e.contains("committed"), "{e}");

    // The native snapshotter copies the parent.
    ctr(
        &d,
        &["snapshots", "--snapshotter", "native", "prepare", "n1", ""],
    );
    let m = ctr(
        &d,
        &["snapshots", "--snapshotter", "native", "mounts", "/m", "n1"],
    );
    let dir = m.split_whitespace().nth(3).unwrap().to_string();
    std::fs::write(std::path::Path::new(&dir).join("f"), "1").unwrap();
    ctr(
        &d,
        &[
            "snapshots",
            "--snapshotter",
            "native",
            "commit",
            "n1c",
            "n1",
        ],
    );
    ctr(
        &d,
        &[
            "snapshots",
            "--snapshotter",
            "native",
            "prepare",
            "n2",
            "n1c",
        ],
    );
    let m = ctr(
        &d,
        &["snapshots", "--snapshotter", "native", "mounts", "/m", "n2"],
    );
    let dir = m.split_whitespace().nth(3).unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(&dir).join("f")).unwrap(),
        "1"
    );

    // Remove children, then the parent: every directory goes.
    // `ctr snapshots view` adds no gc.root label: the view may already have been collected
    // (label updates schedule a collection), as in containerd.
    let _ = d.ctr(&["-n", "snap", "snapshots", "rm", "look"]);
    for k in ["work", "layer1"] {
        ctr(&d, &["snapshots", "rm", k]);
    }
    assert_eq!(std::fs::read_dir(&fs).unwrap().count(), 0);
    let plugins = ok(d.ctr(&["plugins", "ls", "type==io.containerd.snapshotter.v1"]));
    assert!(
        plugins.contains("overlayfs") && plugins.contains("native"),
        "{plugins}"
    );
}

#[test]
fn gc_collects_unreferenced_snapshots_and_keeps_referenced_ones() {
    let d = Daemon::start();
    d.wait_startup_collection();
    // ctr labels what it prepares with containerd.io/gc.root; strip it to make them collectable.
    ctr(&d, &["snapshots", "prepare", "a", ""]);
    ctr(&d, &["snapshots", "commit", "a-c", "a"]);
    ctr(&d, &["snapshots", "prepare", "b", "a-c"]);
    ctr(&d, &["snapshots", "prepare", "orphan", ""]);
    // b stays a root (a lease holds it, before its label goes: a label update schedules a
    // collection); a-c is kept as its parent.
    ctr(&d, &["leases", "create", "--id", "hold"]);
    // Trigger a synchronous collection through a sync lease delete of an unrelated lease.
    ctr(&d, &["leases", "create", "--id", "tmp"]);
    use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
    use berth_api::containerd::services::leases::v1::{
        AddResourceRequest, DeleteRequest, Resource,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut l = LeasesClient::new(d.channel().await);
        l.add_resource(berth_e2e::with_ns(
            "snap",
            AddResourceRequest {
                id: "hold".into(),
                resource: Some(Resource {
                    id: "b".into(),
                    r#type: "snapshots/overlayfs".into(),
                }),
            },
        ))
        .await
        .unwrap();
        for k in ["a-c", "b", "orphan"] {
            ctr(&d, &["snapshots", "label", k, "containerd.io/gc.root="]);
        }
        l.delete(berth_e2e::with_ns(
            "snap",
            DeleteRequest {
                id: "tmp".into(),
                sync: true,
            },
        ))
        .await
        .unwrap();
    });
    let ls = ctr(&d, &["snapshots", "ls"]);
    assert!(!ls.contains("orphan"), "{ls}");
    assert!(ls.contains("a-c") && ls.contains("b "), "{ls}");
    let dirs = std::fs::read_dir(d.root().join("snapshots/overlayfs/snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, 2, "the orphan's directory is gone");
    // Releasing the lease releases both.
    rt.block_on(async {
        let mut l = LeasesClient::new(d.channel().await);
        l.delete(berth_e2e::with_ns(
            "snap",
            DeleteRequest {
                id: "hold".into(),
                sync: true,
            },
        ))
        .await
        .unwrap();
    });
    assert_eq!(
        ctr(&d, &["snapshots", "ls"]).lines().count(),
        1,
        "only the header is left"
    );
    assert_eq!(
        std::fs::read_dir(d.root().join("snapshots/overlayfs/snapshots"))
            .unwrap()
            .count(),
        0
    );
}
