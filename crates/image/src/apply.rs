//! Applying a layer (a tar stream, optionally gzip or zstd compressed) onto a directory: the
//! work behind `Diff.Apply`. OCI whiteouts (`.wh.<name>` deletes `<name>`, `.wh..wh..opq` hides
//! what lower layers put in a directory) become deletions, so the directory should be the
//! mounted snapshot (a bind mount, or an overlay whose upper layer records the deletions).
//!
//! Layers are untrusted: no entry is written outside the root. Paths with `..` are refused,
//! leading `/` is stripped, and every parent directory is resolved *inside* the root (a symlink
//! met on the way is followed as if the root were `/`, like `openat2(RESOLVE_IN_ROOT)`). Files are
//! created with `O_EXCL | O_NOFOLLOW` after removing what was there, so an existing symlink is
//! never written through; hard-link targets resolve inside the root too.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use berth_content::Digest;
use sha2::Digest as _;

use crate::ImageError;

/// What was applied: the digest and size of the uncompressed tar (the layer's diff id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// sha256 of the uncompressed stream.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::InvalidArchive(msg.into())
}

/// Relative, `..`-free form of an entry path.
fn clean(p: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                return Err(bad(format!(
                    "layer entry {:?} climbs out with '..'",
                    p.display().to_string()
                )));
            }
            Component::Prefix(_) => return Err(bad("layer entry with a path prefix")),
        }
    }
    Ok(out)
}

/// Resolves `rel` (a directory path) inside `root`, following symlinks as if `root` were `/`,
/// creating missing directories. Returns the real path, always under `root`.
fn resolve_dir(root: &Path, rel: &Path) -> Result<PathBuf, ImageError> {
    let mut stack: Vec<OsString> = Vec::new();
    let mut queue: VecDeque<OsString> = rel
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        if c == OsStr::new("..") {
            stack.pop();
            continue;
        }
        if c == OsStr::new(".") || c == OsStr::new("/") || c.is_empty() {
            continue;
        }
        let mut here: PathBuf = root.to_path_buf();
        here.extend(&stack);
        here.push(&c);
        match std::fs::symlink_metadata(&here) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&here)?;
                stack.push(c);
            }
            Err(e) => return Err(e.into()),
            Ok(md) if md.is_dir() => stack.push(c),
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(bad(format!(
                        "too many symlinks resolving {}",
                        rel.display()
                    )));
                }
                let target = std::fs::read_link(&here)?;
                if target.is_absolute() {
                    stack.clear();
                }
                for (i, t) in target.components().enumerate() {
                    queue.insert(i, t.as_os_str().to_os_string());
                }
            }
            Ok(_) => {
                return Err(bad(format!(
                    "layer needs {} to be a directory, but it is a file",
                    rel.display()
                )));
            }
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&stack);
    Ok(out)
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cpath(p: &Path) -> Result<CString, ImageError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| bad("path with a NUL byte"))
}

fn lchown(p: &Path, uid: u64, gid: u64) -> Result<(), ImageError> {
    let c = cpath(p)?;
    // SAFETY: c is a valid NUL-terminated path; lchown does not retain it.
    let r = unsafe { libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t) };
    if r != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn set_mtime(p: &Path, secs: u64) -> Result<(), ImageError> {
    let c = cpath(p)?;
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: valid path and a two-element timespec array, as utimensat requires.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn mknod(
    p: &Path,
    kind: libc::mode_t,
    mode: u32,
    major: u32,
    minor: u32,
) -> Result<(), ImageError> {
    let c = cpath(p)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: valid path; mknod creates a node and retains nothing.
    let r = unsafe { libc::mknod(c.as_ptr(), kind | (mode & 0o7777), dev) };
    if r != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let (Ok(c), Ok(n)) = (cpath(p), CString::new(name)) else {
        return;
    };
    // SAFETY: valid NUL-terminated path and name, and a value pointer/length pair.
    // Best effort: file systems without xattrs answer ENOTSUP, which a layer must survive.
    let _ = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
}

/// Applies the layer read from `r` onto `root`; returns the uncompressed digest and size.
pub fn apply_layer(r: impl Read, root: &Path) -> Result<Applied, ImageError> {
    let mut buffered = BufReader::with_capacity(1 << 20, r);
    let head = buffered.fill_buf()?.to_vec();
    let decompressed: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?)
    } else {
        Box::new(buffered)
    };
    let mut hashing = Hashing {
        inner: decompressed,
        hasher: sha2::Sha256::new(),
        size: 0,
    };
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut created: HashSet<PathBuf> = HashSet::new();
        let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = clean(&entry.path()?)?;
            let at =
                |e: std::io::Error| ImageError::InvalidArchive(format!("{}: {e}", path.display()));
            let Some(name) = path.file_name().map(|n| n.to_os_string()) else {
                continue;
            };
            let parent = resolve_dir(root, path.parent().unwrap_or(Path::new("")))?;
            let name_bytes = name.as_bytes();
            if name_bytes == b".wh..wh..opq" {
                // Hide everything lower layers put in this directory.
                for e in std::fs::read_dir(&parent)? {
                    let p = e?.path();
                    if !created.contains(&p) {
                        remove_any(&p)?;
                    }
                }
                continue;
            }
            if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
                remove_any(&parent.join(OsStr::from_bytes(hidden)))?;
                continue;
            }
            let dest = parent.join(&name);
            let header = entry.header().clone();
            // Empty numeric fields read as 0, as Go's archive/tar (which wrote most layers) does.
            let mode = header.mode().unwrap_or(0o644);
            let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
            let mtime = header.mtime().unwrap_or(0);
            let ty = header.entry_type();
            let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions()? {
                Some(exts) => exts
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let k = e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string();
                        Some((k, e.value_bytes().to_vec()))
                    })
                    .collect(),
                None => Vec::new(),
            };
            match ty {
                tar::EntryType::Directory => {
                    match std::fs::symlink_metadata(&dest) {
                        Ok(md) if md.is_dir() => {}
                        Ok(_) => {
                            remove_any(&dest).map_err(at)?;
                            std::fs::create_dir(&dest).map_err(at)?;
                        }
                        Err(_) => std::fs::create_dir(&dest).map_err(at)?,
                    }
                    std::fs::set_permissions(
                        &dest,
                        std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
                    )
                    .map_err(at)?;
                    dir_times.push((dest.clone(), mtime));
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    remove_any(&dest).map_err(at)?;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&dest)
                        .map_err(at)?;
                    std::io::copy(&mut entry, &mut f).map_err(at)?;
                    drop(f);
                    lchown(&dest, uid, gid)?;
                    std::fs::set_permissions(
                        &dest,
                        std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
                    )
                    .map_err(at)?;
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name()?.ok_or_else(|| {
                        bad(format!("symlink {} without a target", path.display()))
                    })?;
                    remove_any(&dest).map_err(at)?;
                    std::os::unix::fs::symlink(target.as_ref(), &dest).map_err(at)?;
                }
                tar::EntryType::Link => {
                    let target = entry.link_name()?.ok_or_else(|| {
                        bad(format!("hard link {} without a target", path.display()))
                    })?;
                    let target = clean(&target)?;
                    let tname = target
                        .file_name()
                        .ok_or_else(|| bad("hard link to the root"))?;
                    let tparent = resolve_dir(root, target.parent().unwrap_or(Path::new("")))?;
                    let src = tparent.join(tname);
                    let md = std::fs::symlink_metadata(&src).map_err(|_| {
                        bad(format!(
                            "hard link {} to missing {}",
                            path.display(),
                            target.display()
                        ))
                    })?;
                    if md.is_dir() {
                        return Err(bad(format!("hard link {} to a directory", path.display())));
                    }
                    remove_any(&dest).map_err(at)?;
                    std::fs::hard_link(&src, &dest).map_err(at)?;
                    created.insert(dest);
                    continue;
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    remove_any(&dest).map_err(at)?;
                    let kind = match ty {
                        tar::EntryType::Char => libc::S_IFCHR,
                        tar::EntryType::Block => libc::S_IFBLK,
                        _ => libc::S_IFIFO,
                    };
                    // A fifo has no device number: empty fields (some writers leave them) are fine.
                    let (major, minor) = if ty == tar::EntryType::Fifo {
                        (0, 0)
                    } else {
                        (
                            header.device_major()?.unwrap_or(0),
                            header.device_minor()?.unwrap_or(0),
                        )
                    };
                    mknod(&dest, kind, mode, major, minor)?;
                }
                // PAX/GNU metadata entries are consumed by the tar crate; anything else is skipped.
                _ => continue,
            }
            if ty != tar::EntryType::Regular && ty != tar::EntryType::Continuous {
                lchown(&dest, uid, gid)?;
            }
            for (k, v) in xattrs {
                set_xattr(&dest, &k, &v);
            }
            if ty != tar::EntryType::Directory {
                set_mtime(&dest, mtime)?;
            }
            created.insert(dest);
        }
        // Directories last: writing their children changed their times.
        for (d, t) in dir_times.into_iter().rev() {
            set_mtime(&d, t)?;
        }
    }
    // The digest covers the whole stream, including the tar's end blocks and any padding.
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    let digest = Digest::from_sha256_bytes(&hashing.hasher.finalize());
    Ok(Applied {
        digest,
        size: hashing.size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, ty, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_mode(if *ty == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_mtime(1_000_000);
            h.set_uid(0);
            h.set_gid(0);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Write the raw name so hostile paths reach the applier unchanged.
            let name = p.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

    #[test]
    fn applies_files_links_and_whiteouts() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let l1 = layer(&[
            ("etc/", D, b"", None),
            ("etc/a", F, b"A", None),
            ("etc/b", F, b"B", None),
            ("lib", S, b"", Some("usr/lib")),
            ("usr/lib/x", F, b"X", None),
            ("d/old", F, b"o", None),
        ]);
        let a1 = apply_layer(&l1[..], r).unwrap();
        assert_eq!(a1.size, l1.len() as u64);
        assert_eq!(a1.digest, Digest::of(&l1));
        let l2 = layer(&[
            ("etc/.wh.a", F, b"", None),
            ("lib/y", F, b"Y", None),
            ("d/.wh..wh..opq", F, b"", None),
            ("d/new", F, b"n", None),
            ("etc/c", H, b"", Some("etc/b")),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &l2).unwrap();
        let a2 = apply_layer(&gz.finish().unwrap()[..], r).unwrap();
        assert_eq!(a2.digest, Digest::of(&l2));
        assert!(!r.join("etc/a").exists());
        assert_eq!(
            std::fs::read(r.join("usr/lib/y")).unwrap(),
            b"Y",
            "written through the in-root symlink"
        );
        assert!(!r.join("d/old").exists() && r.join("d/new").exists());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(r.join("etc/c")).unwrap().ino(),
            std::fs::metadata(r.join("etc/b")).unwrap().ino()
        );
        assert_eq!(
            std::fs::metadata(r.join("etc/b")).unwrap().mtime(),
            1_000_000
        );
    }

    #[test]
    fn hostile_layers_write_nothing_outside() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            layer(&[("../evil", F, b"x", None)]),
            layer(&[("a/../../evil", F, b"x", None)]),
            // A symlink pointing out, then a file through it: lands inside the root.
            layer(&[("esc", S, b"", Some("../..")), ("esc/evil", F, b"x", None)]),
            layer(&[("abs", S, b"", Some("/")), ("abs/evil2", F, b"x", None)]),
            // A hard link to something outside.
            layer(&[("h", H, b"", Some("../../etc/passwd"))]),
            // Replace a symlink with a file: the symlink is removed, not written through.
            layer(&[("s", S, b"", Some("../outside-file")), ("s", F, b"x", None)]),
            b"garbage that is not a tar stream at all, but long enough to look like one ..."
                .repeat(20),
        ];
        for l in cases {
            let _ = apply_layer(&l[..], &root);
        }
        let mut names: Vec<_> = std::fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [OsString::from("root")],
            "nothing written beside the root"
        );
        assert!(
            root.join("evil").exists(),
            "the symlinked path resolved inside the root"
        );
        assert!(root.join("evil2").exists());
        assert!(!outer.path().join("outside-file").exists());
        assert!(root.join("s").symlink_metadata().unwrap().is_file());
    }
}
