//! Content, images, leases and events through Debian's `ctr` and `berthctl`; GC checked on disk.

use std::io::Write;
use std::process::{Command, Stdio};

use berth_e2e::{Daemon, TestImage, blobs_on_disk, busybox_oci_archive, fails, ok, sha256};

fn ctr_ns(d: &Daemon, ns: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    d.ctr(&all)
}

fn ctr_stdin(d: &Daemon, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new("ctr")
        .arg("--address")
        .arg(&d.sock)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn import_with_ctr(d: &Daemon, ns: &str, img: &TestImage, archive: &std::path::Path) {
    let out = ok(ctr_ns(
        d,
        ns,
        &[
            "images",
            "import",
            "--no-unpack",
            &archive.display().to_string(),
        ],
    ));
    assert!(
        out.contains(&img.name)
            || out.is_empty()
            || out.contains("unpacking")
            || out.contains("done"),
        "{out}"
    );
}

#[test]
fn ctr_images_content_leases_and_events() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let img = busybox_oci_archive(&archive, "docker.io/library/busybox:e2e", &[]);
    let mut events = berth_e2e::Events::start(&d, "ctr");

    // content ingest / label / rm: first, while no GC is pending (unreferenced content is collectable)
    let blob = b"hello from ctr content ingest\n".repeat(1000);
    let dg = sha256(&blob);
    ok(ctr_stdin(
        &d,
        &[
            "-n",
            "e2e",
            "content",
            "ingest",
            "--expected-size",
            &blob.len().to_string(),
            "--expected-digest",
            &dg,
            "my-ref",
        ],
        &blob,
    ));
    ok(ctr_ns(
        &d,
        "e2e",
        &["content", "label", &dg, "containerd.io/gc.root=yes", "a=b"],
    ));
    let ls = ok(ctr_ns(&d, "e2e", &["content", "ls"]));
    let line = ls
        .lines()
        .find(|l| l.starts_with(&dg))
        .unwrap_or_else(|| panic!("{ls}"));
    assert!(
        line.contains("a=b") && line.contains("containerd.io/gc.root=yes"),
        "{line}"
    );
    assert!(line.contains("30kB") || line.contains("30 kB"), "{line}");
    ok(ctr_ns(&d, "e2e", &["content", "rm", &dg]));
    assert!(!ok(ctr_ns(&d, "e2e", &["content", "ls", "-q"])).contains(&dg));

    import_with_ctr(&d, "e2e", &img, &archive);
    let ls = ok(ctr_ns(&d, "e2e", &["images", "ls"]));
    let row: Vec<&str> = ls
        .lines()
        .find(|l| l.starts_with(&img.name))
        .unwrap_or_else(|| panic!("{ls}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(row[2], img.manifest);
    let mib = img.total_size as f64 / 1024.0 / 1024.0;
    assert_eq!(
        format!("{} {}", row[3], row[4]),
        format!("{mib:.1} MiB"),
        "{ls}"
    );
    let arch = if cfg!(target_arch = "aarch64") {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    assert_eq!(row[5], arch, "{ls}");

    // Blobs are visible in the namespace, byte-identical.
    let content = ok(ctr_ns(&d, "e2e", &["content", "ls", "-q"]));
    for dg in [&img.manifest, &img.config, &img.layers[0]] {
        assert!(content.contains(dg.as_str()), "{content}");
    }
    let got = ctr_ns(&d, "e2e", &["content", "get", &img.config]);
    assert!(got.status.success());
    assert_eq!(sha256(&got.stdout), img.config);
    // ... and invisible in another namespace.
    let e = fails(ctr_ns(&d, "other", &["content", "get", &img.config]));
    assert!(e.contains("not found"), "{e}");

    ok(ctr_ns(
        &d,
        "e2e",
        &["images", "tag", &img.name, "example.com/copy:1"],
    ));
    ok(ctr_ns(
        &d,
        "e2e",
        &["images", "label", "example.com/copy:1", "team=infra"],
    ));
    let ls = ok(ctr_ns(&d, "e2e", &["images", "ls", "-q"]));
    assert_eq!(ls, format!("{}\nexample.com/copy:1\n", img.name));
    let ls = ok(ctr_ns(&d, "e2e", &["images", "ls", "labels.team==infra"]));
    assert!(
        ls.contains("example.com/copy:1") && !ls.contains(&img.name),
        "{ls}"
    );

    // leases
    ok(ctr_ns(
        &d,
        "e2e",
        &["leases", "create", "--id", "hold-1", "purpose=test"],
    ));
    let ls = ok(ctr_ns(&d, "e2e", &["leases", "ls"]));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("hold-1") && l.contains("purpose=test")),
        "{ls}"
    );
    let e = fails(ctr_ns(&d, "e2e", &["leases", "create", "--id", "hold-1"]));
    assert!(e.contains("already exists"), "{e}");
    ok(ctr_ns(&d, "e2e", &["leases", "rm", "hold-1"]));
    assert!(!ok(ctr_ns(&d, "e2e", &["leases", "ls", "-q"])).contains("hold-1"));

    ok(ctr_ns(&d, "e2e", &["images", "rm", "example.com/copy:1"]));
    ok(d.ctr(&["namespaces", "create", "evns"]));
    let seen = events.wait_for(&[
        "/images/create",
        "/images/update",
        "/images/delete",
        "/content/delete",
        "/namespaces/create",
    ]);
    assert!(
        seen.iter()
            .any(|l| l.contains("e2e") && l.contains("/images/create")),
        "{seen:#?}"
    );
}

#[test]
fn berthctl_images_content_leases_and_events() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let img = busybox_oci_archive(
        &archive,
        "docker.io/library/busybox:bctl",
        &[("etc/motd", b"hi\n")],
    );
    let mut events = berth_e2e::Events::start(&d, "berthctl");
    let b = |args: &[&str]| {
        let mut all = vec!["-n", "bns"];
        all.extend_from_slice(args);
        d.berthctl(&all)
    };
    let out = ok(b(&["images", "import", &archive.display().to_string()]));
    assert!(
        out.contains(&img.name) && out.contains(&img.manifest),
        "{out}"
    );
    let ls = ok(b(&["images", "ls"]));
    assert!(ls.contains(&img.name) && ls.contains(&img.manifest), "{ls}");
    let mib = img.total_size as f64 / 1024.0 / 1024.0;
    assert!(ls.contains(&format!("{mib:.1} MiB")), "{ls}");
    // berthctl import unpacks, as ctr import does.
    let check = ok(ctr_ns(&d, "bns", &["images", "check"]));
    assert!(check.trim_end().ends_with("true"), "{check}");
    // ctr agrees on what berthctl imported.
    let cls = ok(ctr_ns(&d, "bns", &["images", "ls"]));
    assert!(
        cls.contains(&img.name) && cls.contains(&format!("{mib:.1} MiB")),
        "{cls}"
    );

    ok(b(&["images", "tag", &img.name, "example.com/bctl:2"]));
    ok(b(&["images", "label", "example.com/bctl:2", "x=y"]));
    assert!(ok(b(&["images", "ls", "labels.x==y"])).contains("example.com/bctl:2"));
    let exported = dir.path().join("out.tar");
    ok(b(&[
        "images",
        "export",
        &exported.display().to_string(),
        &img.name,
    ]));
    // A second daemon imports the export and sees the same image.
    let d2 = Daemon::start();
    let out = ok(d2.berthctl(&[
        "-n",
        "bns",
        "images",
        "import",
        &exported.display().to_string(),
    ]));
    assert!(out.contains(&img.manifest), "{out}");

    let blob = vec![7u8; 3 << 20];
    // Unreferenced content is fair game for GC: hold it with a lease while the test works on it.
    ok(b(&["leases", "create", "--id", "hold"]));
    let mut child = Command::new(berth_e2e::bin("berthctl"))
        .args([
            "--address",
            &d.sock.display().to_string(),
            "-n",
            "bns",
            "content",
            "ingest",
            "--lease",
            "hold",
            "r1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&blob).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sha256(&blob));
    let got = b(&["content", "get", &sha256(&blob)]);
    assert_eq!(got.stdout, blob);
    ok(b(&["content", "label", &sha256(&blob), "k=v"]));
    assert!(ok(b(&["content", "ls"])).contains("k=v"));
    ok(b(&["content", "rm", &sha256(&blob)]));
    ok(b(&["leases", "rm", "hold"]));

    let id = ok(b(&["leases", "create", "--id", "bl", "p=q"]));
    assert_eq!(id.trim(), "bl");
    assert!(ok(b(&["leases", "ls"])).contains("containerd.io/gc.expire="));
    ok(b(&["leases", "rm", "bl"]));
    ok(b(&["images", "rm", "--sync", "example.com/bctl:2"]));
    let e = fails(b(&["images", "rm", "nope"]));
    assert!(e.contains("NotFound"), "{e}");
    events.wait_for(&[
        "/images/create",
        "/images/update",
        "/images/delete",
        "/content/delete",
    ]);
}

#[test]
fn skopeo_accepts_exported_archives() {
    if Command::new("skopeo").arg("--version").output().is_err() {
        panic!("skopeo missing: apt-get install skopeo");
    }
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("in.tar");
    let img = busybox_oci_archive(&archive, "docker.io/library/busybox:sk", &[]);
    import_with_ctr(&d, "sk", &img, &archive);
    let exported = dir.path().join("export.tar");
    ok(ctr_ns(
        &d,
        "sk",
        &[
            "images",
            "export",
            &exported.display().to_string(),
            &img.name,
        ],
    ));
    let layout = dir.path().join("layout");
    let out = Command::new("skopeo")
        .args([
            "copy",
            &format!("oci-archive:{}", exported.display()),
            &format!("oci:{}:copy", layout.display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blob = std::fs::read(layout.join("blobs/sha256").join(&img.manifest[7..])).unwrap();
    assert_eq!(sha256(&blob), img.manifest);
}

#[test]
fn gc_removes_unreachable_blobs_on_disk() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
    let one = busybox_oci_archive(&a1, "example.com/one:1", &[("one.txt", b"1")]);
    let two = busybox_oci_archive(&a2, "example.com/two:1", &[("two.txt", b"2")]);
    import_with_ctr(&d, "gc", &one, &a1);
    import_with_ctr(&d, "gc", &two, &a2);
    // A blob only a lease holds (as real clients write, so no scheduled collection can take it
    // before the test looks; the imports' own leases scheduled one).
    let extra = b"unreferenced blob".to_vec();
    ok(ctr_ns(&d, "gc", &["leases", "create", "--id", "keep"]));
    let dg = sha256(&extra);
    let mut child = Command::new(berth_e2e::bin("berthctl"))
        .args(["--address", &d.sock.display().to_string(), "-n", "gc"])
        .args([
            "content",
            "ingest",
            "--lease",
            "keep",
            "--expected-digest",
            &dg,
            "extra",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&extra).unwrap();
    let out = ok(child.wait_with_output().unwrap());
    assert_eq!(out.trim(), dg);
    let on_disk = blobs_on_disk(&d.root());
    for x in [
        &one.manifest,
        &one.config,
        &two.manifest,
        &two.layers[1],
        &dg,
    ] {
        assert!(on_disk.contains_key(x.as_str()), "{x} missing: {on_disk:?}");
    }
    // Without its lease, and with no image or gc.root label, the blob is unreachable: gone
    // after a synchronous collection; every image blob stays.
    ok(ctr_ns(&d, "gc", &["leases", "rm", "--sync", "keep"]));
    let on_disk = blobs_on_disk(&d.root());
    assert!(
        !on_disk.contains_key(&dg),
        "unleased, unreferenced blob collected"
    );
    for x in [&one.manifest, &one.config, &one.layers[1], &two.manifest] {
        assert!(
            on_disk.contains_key(x.as_str()),
            "{x} (reachable) was removed"
        );
    }
    ok(ctr_ns(&d, "gc", &["images", "rm", "--sync", &one.name]));
    let on_disk = blobs_on_disk(&d.root());
    assert!(
        !on_disk.contains_key(&one.manifest),
        "one's manifest collected"
    );
    assert!(
        !on_disk.contains_key(&one.layers[1]),
        "one's own layer collected"
    );
    // The shared busybox layer stays: two still needs it.
    for x in [&two.manifest, &two.config, &two.layers[0], &two.layers[1]] {
        assert!(
            on_disk.contains_key(x.as_str()),
            "{x} (reachable) was removed"
        );
    }
    assert_eq!(one.layers[0], two.layers[0]);
    ok(ctr_ns(&d, "gc", &["images", "rm", "--sync", &two.name]));
    assert!(
        blobs_on_disk(&d.root()).is_empty(),
        "{:?}",
        blobs_on_disk(&d.root())
    );
    assert!(ok(ctr_ns(&d, "gc", &["content", "ls", "-q"])).is_empty());
}
