//! `Diff.Diff` end to end: `ctr snapshots diff` on a snapshot changed through its overlay mount
//! (the upper-directory fast path) and on its committed form (two mounted trees compared), each
//! layer applied with `Diff.Apply` onto a fresh snapshot of the same parent, and the trees
//! compared; bad requests; nothing left mounted.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
use berth_api::containerd::services::diff::v1::{ApplyRequest, DiffRequest};
use berth_api::containerd::services::snapshots::v1::MountsRequest;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::types::{Descriptor, Mount};
use berth_e2e::{Daemon, busybox_oci_archive, ok, sha256, with_ns};

const NS: &str = "diff";

/// A mounted overlay (from `ctr snapshots mounts` options), unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn snapshot(d: &Daemon, key: &str, at: &Path) -> Mounted {
        let m = ok(d.ctr(&["-n", NS, "snapshots", "mounts", "/mnt", key]));
        let opts = m.split(" -o ").nth(1).expect("mount options").trim();
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", opts])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting {key}: {m}");
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    data: Option<Vec<u8>>,
    link: Option<PathBuf>,
    mtime: Option<i64>,
    xattr: Option<Vec<u8>>,
}

/// What a layer must carry of each entry under `root`.
fn scan(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let p = rel.join(e.unwrap().file_name());
            let full = root.join(&p);
            let md = std::fs::symlink_metadata(&full).unwrap();
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p,
                Entry {
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    data: ft.is_file().then(|| std::fs::read(&full).unwrap()),
                    link: ft.is_symlink().then(|| std::fs::read_link(&full).unwrap()),
                    mtime: ft.is_file().then(|| md.mtime()),
                    xattr: xattr::get(&full, "user.berth").unwrap(),
                },
            );
        }
    }
    out
}

fn assert_same_tree(got: &Path, want: &Path) {
    let (got, want) = (scan(got), scan(want));
    for (p, w) in &want {
        assert_eq!(got.get(p), Some(w), "{}", p.display());
    }
    let extra: Vec<_> = got.keys().filter(|p| !want.contains_key(*p)).collect();
    assert!(extra.is_empty(), "not in the original: {extra:?}");
}

async fn mounts(d: &Daemon, key: &str) -> Vec<Mount> {
    SnapshotsClient::new(d.channel().await)
        .mounts(with_ns(
            NS,
            MountsRequest {
                snapshotter: "overlayfs".into(),
                key: key.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .mounts
}

/// Applies `blob` (already in the content store) onto a new snapshot `key` of `parent`;
/// returns the applied diff id.
fn apply_onto_fresh(
    d: &Daemon,
    rt: &tokio::runtime::Runtime,
    key: &str,
    parent: &str,
    desc: Descriptor,
) -> String {
    ok(d.ctr(&["-n", NS, "snapshots", "prepare", key, parent]));
    rt.block_on(async {
        let m = mounts(d, key).await;
        DiffClient::new(d.channel().await)
            .apply(with_ns(
                NS,
                ApplyRequest {
                    diff: Some(desc),
                    mounts: m,
                    payloads: Default::default(),
                    sync_fs: false,
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .applied
            .unwrap()
            .digest
    })
}

/// Changes of many kinds, made through the overlay mount of an active snapshot.
const CHANGES: &str = r#"
printf changed > etc/motd
rm bin/cat bin/echo
mkdir -p data/deep/er; printf a > data/a; ln data/a data/b
chown 1234:5678 data/a; chmod 640 data/a
printf deep > data/deep/er/file
ln -s ../bin/busybox data/bb
mkfifo data/pipe
touch -d @1234567890 data/deep/er/file
chmod 700 bin
"#;

/// The daemon's log without terminal colours.
fn plain_log(d: &Daemon) -> String {
    let log = d.log();
    let mut out = String::with_capacity(log.len());
    let mut it = log.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for c in it.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn content_labels(d: &Daemon, digest: &str) -> String {
    ok(d.ctr(&["-n", NS, "content", "ls"]))
        .lines()
        .find(|l| l.starts_with(digest))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn ctr_snapshots_diff_makes_layers_that_apply_to_the_same_tree() {
    let d = Daemon::start();
    d.wait_startup_collection();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    busybox_oci_archive(&archive, "diff:1", &[("etc/motd", b"motd\n")]);
    ok(d.ctr(&["-n", NS, "images", "import", &archive.display().to_string()]));
    let ls = ok(d.ctr(&["-n", NS, "snapshots", "ls"]));
    let top = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|r| r.len() == 3)
        .expect("the top layer has a parent")[0]
        .to_string();

    ok(d.ctr(&["-n", NS, "snapshots", "prepare", "work", &top]));
    let work = dir.path().join("work");
    {
        let _m = Mounted::snapshot(&d, "work", &work);
        let st = Command::new("sh")
            .arg("-ec")
            .arg(CHANGES)
            .current_dir(&work)
            .status()
            .unwrap();
        assert!(st.success());
        xattr::set(work.join("data/a"), "user.berth", b"kept").unwrap();
        // A directory removed and made again: overlay marks it opaque.
        std::fs::remove_dir_all(work.join("etc")).unwrap();
        std::fs::create_dir(work.join("etc")).unwrap();
        std::fs::write(work.join("etc/fresh"), b"fresh").unwrap();
    }

    // 1. The active snapshot against its parent: the upper directory alone is walked.
    let out = d.ctr(&["-n", NS, "snapshots", "diff", "--keep", "work"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blob = out.stdout;
    assert_eq!(&blob[..2], &[0x1f, 0x8b], "gzip by default");
    let digest = sha256(&blob);
    let labels = content_labels(&d, &digest);
    assert!(
        labels.contains("containerd.io/uncompressed=sha256:"),
        "{labels}"
    );
    assert!(
        labels.contains("containerd.io/gc.root="),
        "--keep: {labels}"
    );
    assert!(
        plain_log(&d).contains("fast_path=true"),
        "{}",
        plain_log(&d)
    );
    let uncompressed = labels
        .split("containerd.io/uncompressed=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let applied = apply_onto_fresh(
        &d,
        &rt,
        "fresh",
        &top,
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: digest.clone(),
            size: blob.len() as i64,
            annotations: Default::default(),
        },
    );
    assert_eq!(applied, uncompressed, "the label names the tar's digest");
    {
        let _w = Mounted::snapshot(&d, "work", &work);
        let fresh = dir.path().join("fresh");
        let _f = Mounted::snapshot(&d, "fresh", &fresh);
        assert_same_tree(&fresh, &work);
        assert!(!fresh.join("bin/cat").exists() && !fresh.join("etc/motd").exists());
        assert_eq!(
            fresh.join("data/a").metadata().unwrap().ino(),
            fresh.join("data/b").metadata().unwrap().ino(),
            "hard link kept"
        );
    }

    // 2. The committed snapshot against its parent, uncompressed: two mounted trees compared.
    ok(d.ctr(&["-n", NS, "snapshots", "commit", "work-c", "work"]));
    let out = d.ctr(&[
        "-n",
        NS,
        "snapshots",
        "diff",
        "--keep",
        "--media-type",
        "application/vnd.oci.image.layer.v1.tar",
        "work-c",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar = out.stdout;
    assert!(
        plain_log(&d).contains("fast_path=false"),
        "{}",
        plain_log(&d)
    );
    let plain = sha256(&tar);
    assert!(
        !content_labels(&d, &plain).contains("containerd.io/uncompressed"),
        "an uncompressed layer needs no label, as in containerd"
    );
    let applied = apply_onto_fresh(
        &d,
        &rt,
        "fresh2",
        &top,
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: plain.clone(),
            size: tar.len() as i64,
            annotations: Default::default(),
        },
    );
    assert_eq!(applied, plain);
    {
        // Not a view: ctr labels no view a GC root, and a collection could take it.
        ok(d.ctr(&["-n", NS, "snapshots", "prepare", "work-v", "work-c"]));
        let view = dir.path().join("view");
        let _v = Mounted::snapshot(&d, "work-v", &view);
        let fresh2 = dir.path().join("fresh2");
        let _f = Mounted::snapshot(&d, "fresh2", &fresh2);
        assert_same_tree(&fresh2, &view);
    }

    // 3. zstd, and the same diff again: the same blob, no error.
    let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
    let out = d.ctr(&[
        "-n",
        NS,
        "snapshots",
        "diff",
        "--keep",
        "--media-type",
        zstd,
        "work-c",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&out.stdout[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    let again = d.ctr(&[
        "-n",
        NS,
        "snapshots",
        "diff",
        "--keep",
        "--media-type",
        zstd,
        "work-c",
    ]);
    assert_eq!(sha256(&again.stdout), sha256(&out.stdout), "deterministic");

    // Every temporary mount is gone.
    let diff_dir = d.dir.path().join("state/diff");
    let left: Vec<_> = std::fs::read_dir(&diff_dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&diff_dir.display().to_string()),
        "{mountinfo}"
    );
}

#[test]
fn diff_rejects_bad_requests_by_field_and_leaves_nothing_mounted() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let bind = |p: &Path| Mount {
        r#type: "bind".into(),
        source: p.display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("new"), b"n").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = DiffClient::new(d.channel().await);
        let req = |left: Vec<Mount>, right: Vec<Mount>, mt: &str| {
            with_ns(
                NS,
                DiffRequest {
                    left,
                    right,
                    media_type: mt.into(),
                    r#ref: String::new(),
                    labels: Default::default(),
                    source_date_epoch: None,
                },
            )
        };
        for (r, field) in [
            (req(vec![], vec![bind(&b)], ""), "left"),
            (req(vec![bind(&a)], vec![], ""), "right"),
            (
                req(vec![bind(&a)], vec![bind(&b)], "application/json"),
                "media_type",
            ),
            (
                req(vec![bind(&dir.path().join("missing"))], vec![bind(&b)], ""),
                "left: mounting",
            ),
            (
                req(vec![bind(&a)], vec![bind(&dir.path().join("missing"))], ""),
                "right: mounting",
            ),
        ] {
            let st = c.diff(r).await.unwrap_err();
            assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
            assert!(st.message().starts_with(field), "{st:?}");
        }
        // Two plain directories (bind mounts): a layer holding the one new file.
        let mut r = req(
            vec![bind(&a)],
            vec![bind(&b)],
            "application/vnd.oci.image.layer.v1.tar",
        );
        r.get_mut().r#ref = "my-ref".into();
        // A root, or the collector may take it before we look.
        r.get_mut().labels = [
            ("team".to_string(), "x".to_string()),
            ("containerd.io/gc.root".to_string(), "now".to_string()),
        ]
        .into();
        let desc = c.diff(r).await.unwrap().into_inner().diff.unwrap();
        assert_eq!(desc.media_type, "application/vnd.oci.image.layer.v1.tar");
        let mut tar = tar::Archive::new(
            std::fs::File::open(
                d.root()
                    .join("content/blobs/sha256")
                    .join(desc.digest.trim_start_matches("sha256:")),
            )
            .unwrap(),
        );
        let names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["new"]);
    });
    let labels = content_labels(&d, &{
        let ls = ok(d.ctr(&["-n", NS, "content", "ls"]));
        ls.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    });
    assert!(labels.contains("team=x"), "{labels}");
    // Nothing mounted is left, and the source directories were not touched.
    let diff_dir = d.dir.path().join("state/diff");
    let left: Vec<_> = std::fs::read_dir(&diff_dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(std::fs::read_dir(&b).unwrap().count(), 1);
}
