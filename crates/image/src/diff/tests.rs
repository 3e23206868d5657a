//! Round trips: the diff of two trees, applied onto a copy of the lower one, gives the upper one.
//! These run as root (ownership, device nodes, `trusted.*` attributes, overlay mounts).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::apply_layer;

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    data: Option<Vec<u8>>,
    link: Option<PathBuf>,
    /// Regular files only (directory times change as their children are written).
    mtime: Option<i64>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Everything under `root` that a layer carries, plus the hard-link groups.
fn scan(root: &Path) -> (BTreeMap<PathBuf, Entry>, BTreeSet<Vec<PathBuf>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let p = rel.join(e.unwrap().file_name());
            let full = root.join(&p);
            let md = std::fs::symlink_metadata(&full).unwrap();
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push(p.clone());
            } else if md.nlink() > 1 {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(p.clone());
            }
            out.insert(
                p,
                Entry {
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    rdev: md.rdev(),
                    data: ft.is_file().then(|| std::fs::read(&full).unwrap()),
                    link: ft.is_symlink().then(|| std::fs::read_link(&full).unwrap()),
                    mtime: ft.is_file().then(|| md.mtime()),
                    xattrs: walk::xattrs(&full).unwrap(),
                },
            );
        }
    }
    let groups = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    (out, groups)
}

fn sh(script: &str, dir: &Path) {
    let st = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Writes `changes`, applies the layer onto a copy of `lower`, and checks the result is `want`.
fn check_round_trip(changes: &Changes, lower: &Path, want: &Path, compression: Compression) {
    let opts = DiffOptions {
        compression,
        source_date_epoch: None,
    };
    let mut blob = Vec::new();
    let d = changes.write(&opts, &mut blob).unwrap();
    assert_eq!(d.digest, Digest::of(&blob));
    assert_eq!(d.size, blob.len() as u64);
    let target = tempfile::tempdir().unwrap();
    copy_tree(lower, target.path());
    let applied = apply_layer(&blob[..], target.path()).unwrap();
    assert_eq!(applied.digest, d.diff_id, "apply reads the tar we hashed");
    assert_eq!(applied.size, d.uncompressed_size);
    let (got, got_links) = scan(target.path());
    let (want, want_links) = scan(want);
    for (p, w) in &want {
        assert_eq!(
            got.get(p),
            Some(w),
            "{} differs ({compression:?})",
            p.display()
        );
    }
    for p in got.keys() {
        assert!(want.contains_key(p), "{} should be gone", p.display());
    }
    assert_eq!(got_links, want_links, "hard-link groups");
}

/// Tar entry names in order.
fn names(blob: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(blob);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    };
    // SAFETY: valid path and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}

const LOWER: &str = r#"
mkdir -p etc usr/bin var/lib/gone/sub keep/d/x lib dev
printf A > etc/a; printf B > etc/b; printf S > etc/same; printf T > etc/same2
printf tool > usr/bin/tool; chmod 755 usr/bin/tool
printf g > var/lib/gone/one; printf g > var/lib/gone/sub/two
printf f > keep/f; printf x > keep/d/x/y
printf L > lib/x; ln lib/x lib/y
ln -s a etc/s
mknod dev/null c 1 3; mkfifo dev/fifo
"#;

fn make_lower(dir: &Path) {
    sh(LOWER, dir);
    for f in [
        "etc/a",
        "etc/b",
        "etc/same",
        "etc/same2",
        "usr/bin/tool",
        "lib/x",
    ] {
        set_mtime(&dir.join(f), 1_600_000_000, 0);
    }
}

/// Changes of every kind, made in the (merged) upper tree.
const CHANGES: &str = r#"
printf a > etc/a
chmod 600 etc/b; chown 1000:1001 etc/b
rm -r var/lib/gone; rm etc/same2
mkdir -p new/deep/er; printf deep > new/deep/er/file
ln -sf b etc/s
rm keep/f; mkdir -p keep/f/inner; printf in > keep/f/inner/z
rm -r keep/d; printf now-a-file > keep/d
mknod dev/zero c 1 5; mkfifo new/pipe
printf h > new/h1; ln new/h1 new/h2
ln lib/x lib/z
printf big > new/owned; chown 3000000:3000001 new/owned
chmod 1777 new/deep
"#;

fn make_changes(dir: &Path) {
    sh(CHANGES, dir);
    // Same size and second as before, no sub-second part: only the content tells.
    set_mtime(&dir.join("etc/a"), 1_600_000_000, 0);
    set_mtime(&dir.join("new/deep/er/file"), 1_700_000_000, 123);
    xattr::set(dir.join("etc/b"), "user.x", b"1").unwrap();
    // Binary, but no newline: the tar crate's PAX reader (and so `apply_layer`) splits records
    // on newlines and drops such values.
    xattr::set(dir.join("etc/b"), "trusted.t", b"\0bin\x01ary").unwrap();
    xattr::set(dir.join("new/deep/er/file"), "user.foo", b"bar").unwrap();
    // vfs_cap_data revision 2: cap_net_bind_service permitted.
    let mut cap = vec![0, 0, 0, 2, 0, 4, 0, 0];
    cap.resize(20, 0);
    xattr::set(dir.join("usr/bin/tool"), "security.capability", &cap).unwrap();
    let long = "l".repeat(150);
    std::fs::write(dir.join("new").join(&long), b"long name").unwrap();
    std::os::unix::fs::symlink("t".repeat(200), dir.join("new/longlink")).unwrap();
    std::fs::write(dir.join("new").join(OsStr::from_bytes(b"bin\xffary")), b"x").unwrap();
}

#[test]
fn tree_diff_round_trips_every_kind_of_change() {
    let lower = tempfile::tempdir().unwrap();
    make_lower(lower.path());
    let upper = tempfile::tempdir().unwrap();
    copy_tree(lower.path(), upper.path());
    make_changes(upper.path());

    let changes = tree_changes(lower.path(), upper.path()).unwrap();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        check_round_trip(&changes, lower.path(), upper.path(), c);
    }

    let mut blob = Vec::new();
    let d = changes.write(&DiffOptions::default(), &mut blob).unwrap();
    let mut again = Vec::new();
    changes.write(&DiffOptions::default(), &mut again).unwrap();
    assert_eq!(blob, again, "the same trees give the same bytes");
    let mut plain = Vec::new();
    let p = changes
        .write(
            &DiffOptions {
                compression: Compression::None,
                source_date_epoch: None,
            },
            &mut plain,
        )
        .unwrap();
    assert_eq!(p.diff_id, d.diff_id);
    assert_eq!(p.digest, p.diff_id);

    let n = names(&plain);
    // Unchanged files are not in the layer (lib/y is, as a link: see below); deleted ones are
    // whiteouts, one per directory.
    assert!(
        !n.iter().any(|e| e == "etc/same" || e == "dev/null"),
        "{n:?}"
    );
    assert!(n.contains(&"var/lib/.wh.gone".to_string()), "{n:?}");
    assert!(!n.iter().any(|e| e.starts_with("var/lib/gone/")), "{n:?}");
    assert!(n.contains(&"etc/.wh.same2".to_string()), "{n:?}");
    // Parents come before their children, and each once.
    for (i, e) in n.iter().enumerate() {
        let e = e.trim_end_matches('/');
        if let Some((parent, _)) = e.rsplit_once('/') {
            let pos = n.iter().position(|x| x.trim_end_matches('/') == parent);
            assert!(pos.is_some_and(|p| p < i), "{parent} before {e}: {n:?}");
        }
    }
    let dirs: Vec<_> = n.iter().filter(|e| e.ends_with('/')).collect();
    let unique: BTreeSet<_> = dirs.iter().collect();
    assert_eq!(dirs.len(), unique.len(), "{n:?}");
    // The new name of an unchanged hard-linked file brings the old names along as links.
    let mut a = tar::Archive::new(&plain[..]);
    let links: Vec<(String, String)> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.header().entry_type() == tar::EntryType::Link)
        .map(|e| {
            (
                e.path().unwrap().display().to_string(),
                e.link_name().unwrap().unwrap().display().to_string(),
            )
        })
        .collect();
    assert!(
        links.contains(&("new/h2".into(), "new/h1".into())),
        "{links:?}"
    );
    assert!(
        links.contains(&("lib/x".into(), "lib/z".into())),
        "{links:?}"
    );
    assert!(
        links.contains(&("lib/y".into(), "lib/z".into())),
        "{links:?}"
    );

    // Nothing changed: an empty layer (just the end of the tar).
    let same = tree_changes(upper.path(), upper.path()).unwrap();
    assert!(same.is_empty());
    let mut empty = Vec::new();
    let e = same
        .write(
            &DiffOptions {
                compression: Compression::None,
                source_date_epoch: None,
            },
            &mut empty,
        )
        .unwrap();
    assert_eq!(empty, vec![0u8; 1024]);
    assert_eq!(e.uncompressed_size, 1024);
}

#[test]
fn source_date_epoch_clamps_times() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    std::fs::write(lower.path().join("gone"), b"x").unwrap();
    std::fs::write(upper.path().join("new"), b"x").unwrap();
    set_mtime(&upper.path().join("new"), 2_000_000_000, 0);
    std::fs::write(upper.path().join("old"), b"x").unwrap();
    set_mtime(&upper.path().join("old"), 1_000, 0);
    let changes = tree_changes(lower.path(), upper.path()).unwrap();
    let mut blob = Vec::new();
    changes
        .write(
            &DiffOptions {
                compression: Compression::None,
                source_date_epoch: Some(1_500_000_000),
            },
            &mut blob,
        )
        .unwrap();
    let mut a = tar::Archive::new(&blob[..]);
    let times: BTreeMap<String, u64> = a
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.header().mtime().unwrap(),
            )
        })
        .collect();
    assert_eq!(times[".wh.gone"], 1_500_000_000);
    assert_eq!(times["new"], 1_500_000_000);
    assert_eq!(times["old"], 1_000);
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn overlay_upper_dir_round_trips_and_matches_the_tree_walk() {
    let t = tempfile::tempdir().unwrap();
    let (lower, upper, work, merged) = (
        t.path().join("lower"),
        t.path().join("upper"),
        t.path().join("work"),
        t.path().join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    make_lower(&lower);
    sh(
        "mkdir -p opq/sub; printf o > opq/old; printf o > opq/sub/old",
        &lower,
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success(), "mounting overlay");
    let guard = Unmount(merged.clone());
    make_changes(&merged);
    // Remove a directory and make it again: overlay marks it opaque.
    sh(
        "rm -r opq; mkdir opq; printf n > opq/new; chmod 700 usr",
        &merged,
    );
    // The merged view is what the layer must recreate; keep a copy of it.
    let want = t.path().join("want");
    std::fs::create_dir(&want).unwrap();
    copy_tree(&merged, &want);
    let slow = tree_changes(&lower, &merged).unwrap();
    check_round_trip(&slow, &lower, &want, Compression::Gzip);
    drop(guard);

    assert_eq!(
        xattr::get(upper.join("opq"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    let fast = overlay_changes(&lower, &upper)
        .unwrap()
        .expect("plain upper");
    check_round_trip(&fast, &lower, &want, Compression::None);
    check_round_trip(&fast, &lower, &want, Compression::Zstd);
    let mut blob = Vec::new();
    fast.write(
        &DiffOptions {
            compression: Compression::None,
            source_date_epoch: None,
        },
        &mut blob,
    )
    .unwrap();
    let n = names(&blob);
    assert!(n.contains(&"opq/.wh..wh..opq".to_string()), "{n:?}");
    assert!(n.contains(&"var/lib/.wh.gone".to_string()), "{n:?}");
    assert!(
        n.contains(&"usr/".to_string()),
        "chmod of a lower directory: {n:?}"
    );
    assert!(!n.iter().any(|e| e.contains("work")), "{n:?}");
}

#[test]
fn overlay_features_a_layer_cannot_express_fall_back() {
    let t = tempfile::tempdir().unwrap();
    let (lower, upper) = (t.path().join("l"), t.path().join("u"));
    std::fs::create_dir_all(upper.join("moved")).unwrap();
    std::fs::create_dir(&lower).unwrap();
    assert!(overlay_changes(&lower, &upper).unwrap().is_some());
    xattr::set(upper.join("moved"), "trusted.overlay.redirect", b"/orig").unwrap();
    assert!(overlay_changes(&lower, &upper).unwrap().is_none());
}

#[test]
fn whiteout_looking_names_are_refused() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    std::fs::write(upper.path().join(".wh.sneaky"), b"x").unwrap();
    let c = tree_changes(lower.path(), upper.path()).unwrap();
    let e = c
        .write(&DiffOptions::default(), std::io::sink())
        .unwrap_err();
    assert!(e.to_string().contains("cannot be written"), "{e}");
}
