//! The same image pulled by Debian's containerd (`ctr images pull`) and by berthd (`berthctl
//! pull`, server-side, parallel, layers applied without their parents where possible) gives the
//! same snapshots, the same labels and byte-identical root file systems: every path's type,
//! mode, owner, link count, contents, symlink target, xattrs and mtime.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_e2e::{CmdMount, Containerd, Daemon, Registry, busybox_layer, oci_archive, ok, sha256};

enum E<'a> {
    Dir(&'a str, u32, u64),
    File(&'a str, &'a [u8], u32, u64),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Fifo(&'a str),
    Xattr(&'a str, &'a [u8], &'a str, &'a [u8]),
}

fn header(ty: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, mode, uid) => {
                let mut h = header(tar::EntryType::Directory, *mode, *uid, 0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, data, mode, uid) => {
                let mut h = header(tar::EntryType::Regular, *mode, *uid, data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Sym(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hard(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Fifo(p) => {
                let mut h = header(tar::EntryType::Fifo, 0o600, 0, 0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::Xattr(p, data, key, value) => {
                let k = format!("SCHILY.xattr.{key}");
                b.append_pax_extensions([(k.as_str(), *value)]).unwrap();
                let mut h = header(tar::EntryType::Regular, 0o644, 0, data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(raw).unwrap();
    gz.finish().unwrap()
}

/// What a path is, in enough detail to tell any difference.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = md.file_type();
            let detail = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("symlink -> {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                format!("file {}", sha256(&std::fs::read(&p).unwrap()))
            } else {
                format!("special rdev={}", md.rdev())
            };
            let mtime = if ft.is_dir() { 0 } else { md.mtime() };
            let x = xattr(&p, "user.berth");
            out.insert(
                rel,
                format!(
                    "{detail} mode={:o} owner={}:{} nlink={} mtime={mtime} xattr={x:?}",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    if ft.is_dir() { 0 } else { md.nlink() }
                ),
            );
        }
    }
    out
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

/// Content labels that must agree (source labels name the registry, which is the same).
fn labels(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let d = f.next()?.to_string();
            let labels = l.split_whitespace().last()?.to_string();
            let mut keep: Vec<&str> = labels
                .split(',')
                .filter(|kv| {
                    kv.starts_with("containerd.io/uncompressed")
                        || kv.starts_with("containerd.io/gc.ref.")
                })
                .collect();
            keep.sort();
            Some((d, keep.join(",")))
        })
        .collect()
}

#[test]
fn berthd_unpacks_byte_identical_to_containerd() {
    // Layer 1 (gzip): busybox plus owners, modes, setuid, symlinked dirs, hard links, a fifo,
    // an xattr.
    let (bb, bb_id) = busybox_layer(&[]);
    let l1 = tar_of(&[
        E::Dir("etc/", 0o755, 0),
        E::File("etc/motd", b"hello\n", 0o644, 0),
        E::File("etc/shadow", b"root:*:1::::::\n", 0o600, 0),
        E::Dir("home/", 0o755, 0),
        E::Dir("home/user/", 0o700, 1000),
        E::File("home/user/notes", b"mine\n", 0o640, 1000),
        E::Dir("usr/", 0o755, 0),
        E::Dir("usr/lib/", 0o755, 0),
        E::File("usr/lib/libx.so", b"\x7fELF not really", 0o755, 0),
        E::Sym("lib", "usr/lib"),
        E::Dir("usr/bin/", 0o755, 0),
        E::File("usr/bin/suid", b"#!/bin/sh\n", 0o4755, 0),
        E::File("usr/bin/tool", b"tool v1\n", 0o755, 0),
        E::Hard("usr/bin/tool-alias", "usr/bin/tool"),
        E::Dir("run/", 0o755, 0),
        E::Fifo("run/fifo"),
        E::Dir("opt/", 0o755, 0),
        E::File("opt/old-a", b"a\n", 0o644, 0),
        E::File("opt/old-b", b"b\n", 0o644, 0),
        E::Dir("tmp/", 0o1777, 0),
        E::Xattr("etc/tagged", b"x\n", "user.berth", b"yes"),
    ]);
    // Layer 2 (zstd): deletions (whiteouts and an opaque directory), replacements, and a file
    // written through the symlinked `lib` without listing its directory.
    let l2 = tar_of(&[
        E::Dir("etc/", 0o755, 0),
        E::File("etc/.wh.motd", b"", 0o644, 0),
        E::Dir("opt/", 0o755, 0),
        E::File("opt/.wh..wh..opq", b"", 0o644, 0),
        E::File("opt/new", b"new\n", 0o644, 0),
        E::Dir("usr/", 0o755, 0),
        E::Dir("usr/bin/", 0o755, 0),
        E::Sym("usr/bin/suid", "tool"),
        E::File("usr/bin/tool", b"tool v2\n", 0o755, 0),
        E::File("lib/added-through-symlink", b"via lib\n", 0o644, 0),
    ]);
    // Layer 3 (uncompressed): a hard link in the layer, a directory replacing a file.
    let l3 = tar_of(&[
        E::Dir("etc/", 0o755, 0),
        E::Dir("etc/shadow/", 0o755, 0),
        E::File("etc/shadow/now-a-dir", b"d\n", 0o644, 0),
        E::File("etc/config", b"k=v\n", 0o600, 0),
        E::Hard("etc/config-link", "etc/config"),
    ]);
    let z2 = zstd::encode_all(&l2[..], 3).unwrap();
    let layers = vec![
        (bb, bb_id, "application/vnd.oci.image.layer.v1.tar+gzip"),
        (
            gzip(&l1),
            sha256(&l1),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            z2,
            sha256(&l2),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (
            l3.clone(),
            sha256(&l3),
            "application/vnd.oci.image.layer.v1.tar",
        ),
    ];
    let diff_ids: Vec<String> = layers.iter().map(|l| l.1.clone()).collect();
    let mut chain = vec![diff_ids[0].clone()];
    for d in &diff_ids[1..] {
        let prev = chain.last().unwrap().clone();
        chain.push(sha256(format!("{prev} {d}").as_bytes()));
    }
    let top = chain.last().unwrap().clone();

    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    oci_archive(&archive, "same:1", &layers);
    let reference = reg.push(&archive, "cmp/same:1");

    let c = Containerd::start();
    ok(c.ctr(&["-n", "cmp", "images", "pull", "--plain-http", &reference]));
    let d = Daemon::start();
    ok(d.berthctl(&["-n", "cmp", "pull", "--plain", &reference]));
    // And ctr's client-side pull into berthd (Diff.Apply), in another namespace.
    ok(d.ctr(&["-n", "cmp2", "images", "pull", "--plain-http", &reference]));

    // Same committed snapshots (chain ids and parents).
    let snaps = |out: String| -> Vec<String> {
        let mut v: Vec<String> = out.lines().skip(1).map(|l| l.trim().to_string()).collect();
        v.sort();
        v
    };
    let theirs = snaps(ok(c.ctr(&["-n", "cmp", "snapshots", "ls"])));
    let ours = snaps(ok(d.ctr(&["-n", "cmp", "snapshots", "ls"])));
    assert_eq!(ours, theirs);
    assert!(ours.iter().any(|l| l.starts_with(&top)));
    // Same GC and uncompressed labels on the blobs.
    assert_eq!(
        labels(&ok(d.ctr(&["-n", "cmp", "content", "ls"]))),
        labels(&ok(c.ctr(&["-n", "cmp", "content", "ls"])))
    );

    // Same files, byte for byte.
    let mut trees = Vec::new();
    let mut mounts = Vec::new();
    type Ctr<'a> = Box<dyn Fn(&[&str]) -> std::process::Output + 'a>;
    for (name, ns, ctr) in [
        ("containerd", "cmp", Box::new(|a: &[&str]| c.ctr(a)) as Ctr),
        ("berthd", "cmp", Box::new(|a: &[&str]| d.ctr(a)) as Ctr),
        ("berthd-ctr", "cmp2", Box::new(|a: &[&str]| d.ctr(a)) as Ctr),
    ] {
        ok(ctr(&["-n", ns, "snapshots", "view", "cmp-view", &top]));
        let target = dir.path().join(name);
        let cmd = ok(ctr(&[
            "-n",
            ns,
            "snapshots",
            "mounts",
            target.to_str().unwrap(),
            "cmp-view",
        ]));
        mounts.push(CmdMount::run(cmd.trim(), &target));
        trees.push(describe(&target));
    }
    let theirs = &trees[0];
    for ours in &trees[1..] {
        for (k, v) in theirs {
            assert_eq!(ours.get(k), Some(v), "{k} differs");
        }
        for k in ours.keys() {
            assert!(theirs.contains_key(k), "{k} only in berthd's tree");
        }
    }
    // The layers did what they say.
    assert!(!theirs.contains_key("etc/motd") && !theirs.contains_key("opt/old-a"));
    // containerd writes into the upper directory: the layer's `lib/` hides the symlink.
    assert!(theirs["lib/added-through-symlink"].starts_with("file"));
    assert!(theirs["etc/tagged"].contains("xattr=Some([121, 101, 115])"));
    drop(mounts);
}
