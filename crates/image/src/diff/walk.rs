//! Finding changes: two trees side by side, or an overlay's upper directory alone.

use std::ffi::OsString;
use std::fs::Metadata;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{Change, Changes, Kind, under};
use crate::ImageError;

/// overlayfs's own attributes: how it records opaque directories, redirects and metacopy files
/// in its layers. They describe the layer's form, not its content, and never go into a tar.
pub(crate) const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const OPAQUE: &str = "trusted.overlay.opaque";
/// Attributes whose presence means the upper directory cannot be read as a layer by itself.
const UNSUPPORTED: &[&str] = &[
    "trusted.overlay.redirect",
    "trusted.overlay.metacopy",
    "trusted.overlay.whiteout",
    "trusted.overlay.whiteouts",
];

fn at(p: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |e| ImageError::Io(io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

/// Names in a directory, sorted bytewise.
fn sorted_names(dir: &Path) -> Result<Vec<OsString>, ImageError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(at(dir))? {
        names.push(e.map_err(at(dir))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn lstat(p: &Path) -> Result<Option<Metadata>, ImageError> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(at(p)(e)),
    }
}

/// An entry's extended attributes that belong in a layer, sorted by name.
pub(crate) fn xattrs(p: &Path) -> Result<Vec<(OsString, Vec<u8>)>, ImageError> {
    let names = match xattr::list(p) {
        Ok(n) => n,
        // A file system without extended attributes has none to carry.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(at(p)(e)),
    };
    let mut out = Vec::new();
    for n in names {
        if n.as_bytes().starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        // Gone between list and get: skip it, as if listed a moment later.
        if let Some(v) = xattr::get(p, &n).map_err(at(p))? {
            out.push((n, v));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Same type, permissions, owner and device number.
fn same_stat(a: &Metadata, b: &Metadata) -> bool {
    a.mode() == b.mode() && a.uid() == b.uid() && a.gid() == b.gid() && a.rdev() == b.rdev()
}

fn same_contents(a: &Path, b: &Path) -> Result<bool, ImageError> {
    let mut fa = std::fs::File::open(a).map_err(at(a))?;
    let mut fb = std::fs::File::open(b).map_err(at(b))?;
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(at(a))?;
        let m = read_full(&mut fb, &mut bb).map_err(at(b))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether two entries (both present, same path) are the same, as containerd's `sameFile`
/// decides, plus all extended attributes (containerd compares only capabilities).
fn same_entry(lp: &Path, l: &Metadata, up: &Path, u: &Metadata) -> Result<bool, ImageError> {
    if !same_stat(l, u) || xattrs(lp)? != xattrs(up)? {
        return Ok(false);
    }
    if l.is_dir() {
        return Ok(true);
    }
    if l.size() != u.size() || l.mtime() != u.mtime() {
        return Ok(false);
    }
    match (l.mtime_nsec(), u.mtime_nsec()) {
        // Both times may have been truncated (by a tar, say): look at the data.
        (0, 0) => {
            if l.file_type().is_symlink() {
                Ok(std::fs::read_link(lp).map_err(at(lp))?
                    == std::fs::read_link(up).map_err(at(up))?)
            } else if l.is_file() && l.size() > 0 {
                same_contents(lp, up)
            } else {
                Ok(true)
            }
        }
        (a, b) => Ok(a == b),
    }
}

fn is_linked(m: &Metadata) -> bool {
    !m.is_dir() && m.nlink() > 1
}

/// Compares the trees at `lower` and `upper` (both directories, typically read-only mounts).
pub fn tree_changes(lower: &Path, upper: &Path) -> Result<Changes, ImageError> {
    let mut list = Vec::new();
    walk_both(lower, upper, Path::new(""), &mut list)?;
    Ok(Changes {
        source: upper.to_path_buf(),
        list,
    })
}

fn walk_both(
    lower: &Path,
    upper: &Path,
    rel: &Path,
    out: &mut Vec<Change>,
) -> Result<(), ImageError> {
    let lnames = sorted_names(&under(lower, rel))?;
    let unames = sorted_names(&under(upper, rel))?;
    let (mut i, mut j) = (0, 0);
    while i < lnames.len() || j < unames.len() {
        let order = match (lnames.get(i), unames.get(j)) {
            (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                // Only below: deleted (a directory's contents go with it).
                out.push(Change {
                    kind: Kind::Delete,
                    path: rel.join(&lnames[i]),
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let p = rel.join(&unames[j]);
                j += 1;
                let Some(u) = lstat(&upper.join(&p))? else {
                    continue;
                };
                out.push(Change {
                    kind: Kind::Add,
                    path: p.clone(),
                });
                if u.is_dir() {
                    walk_added(upper, &p, out)?;
                }
            }
            std::cmp::Ordering::Equal => {
                let p = rel.join(&unames[j]);
                i += 1;
                j += 1;
                let (lp, up) = (lower.join(&p), upper.join(&p));
                let (l, u) = match (lstat(&lp)?, lstat(&up)?) {
                    (Some(l), Some(u)) => (l, u),
                    (Some(_), None) => {
                        out.push(Change {
                            kind: Kind::Delete,
                            path: p,
                        });
                        continue;
                    }
                    (None, Some(u)) => {
                        out.push(Change {
                            kind: Kind::Add,
                            path: p.clone(),
                        });
                        if u.is_dir() {
                            walk_added(upper, &p, out)?;
                        }
                        continue;
                    }
                    (None, None) => continue,
                };
                if same_entry(&lp, &l, &up, &u)? {
                    if is_linked(&u) {
                        out.push(Change {
                            kind: Kind::Unmodified,
                            path: p.clone(),
                        });
                    }
                } else {
                    out.push(Change {
                        kind: Kind::Modify,
                        path: p.clone(),
                    });
                }
                match (l.is_dir(), u.is_dir()) {
                    (true, true) => walk_both(lower, upper, &p, out)?,
                    // A file became a directory: everything in it is new.
                    (false, true) => walk_added(upper, &p, out)?,
                    // A directory became something else: its contents go with it.
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Everything under the new directory `rel` is added.
fn walk_added(upper: &Path, rel: &Path, out: &mut Vec<Change>) -> Result<(), ImageError> {
    for name in sorted_names(&upper.join(rel))? {
        let p = rel.join(&name);
        let Some(m) = lstat(&upper.join(&p))? else {
            continue;
        };
        out.push(Change {
            kind: Kind::Add,
            path: p.clone(),
        });
        if m.is_dir() {
            walk_added(upper, &p, out)?;
        }
    }
    Ok(())
}

/// The changes an overlay's upper directory `upperdir` records against its lower layers, whose
/// merged view is mounted at `lower`. `None` if the upper directory uses overlay features that
/// only the merged view can express (redirected directories, metacopy files, whiteouts kept in
/// attributes); compare the mounted trees with [`tree_changes`] then.
pub fn overlay_changes(lower: &Path, upperdir: &Path) -> Result<Option<Changes>, ImageError> {
    let mut list = Vec::new();
    if !walk_upper(lower, upperdir, Path::new(""), true, &mut list)? {
        return Ok(None);
    }
    Ok(Some(Changes {
        source: upperdir.to_path_buf(),
        list,
    }))
}

/// `in_lower`: whether `rel` is a directory in the lower tree too (if not, nothing under it is,
/// and the lower tree is not looked at: a symlink there must not be followed).
fn walk_upper(
    lower: &Path,
    upper: &Path,
    rel: &Path,
    in_lower: bool,
    out: &mut Vec<Change>,
) -> Result<bool, ImageError> {
    for name in sorted_names(&under(upper, rel))? {
        let p = rel.join(&name);
        let up = upper.join(&p);
        let Some(u) = lstat(&up)? else { continue };
        if u.file_type().is_char_device() && u.rdev() == 0 {
            out.push(Change {
                kind: Kind::Delete,
                path: p,
            });
            continue;
        }
        let names = match xattr::list(&up) {
            Ok(n) => n.collect::<Vec<_>>(),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Vec::new(),
            Err(e) => return Err(at(&up)(e)),
        };
        if names.iter().any(|n| UNSUPPORTED.iter().any(|u| n == *u)) {
            return Ok(false);
        }
        let lp = lower.join(&p);
        let l = if in_lower { lstat(&lp)? } else { None };
        let kind = if l.is_some() { Kind::Modify } else { Kind::Add };
        if !u.is_dir() {
            out.push(Change { kind, path: p });
            continue;
        }
        let opaque = if names.iter().any(|n| n == OPAQUE) {
            match xattr::get(&up, OPAQUE).map_err(at(&up))?.as_deref() {
                Some(b"y") => true,
                // "x" (and anything newer) marks directories holding attribute whiteouts.
                Some(_) => return Ok(false),
                None => false,
            }
        } else {
            false
        };
        if opaque {
            out.push(Change {
                kind,
                path: p.clone(),
            });
            out.push(Change {
                kind: Kind::Opaque,
                path: p.clone(),
            });
        } else {
            // A directory copied up only because something under it changed is written as
            // the parent of that change; one whose own metadata changed is written as such.
            let changed = match &l {
                Some(l) if l.is_dir() => !same_stat(l, &u) || xattrs(&lp)? != xattrs(&up)?,
                _ => true,
            };
            if changed {
                out.push(Change {
                    kind,
                    path: p.clone(),
                });
            }
        }
        // Under an opaque directory nothing of the lower tree shows: all of it is new.
        let lower_dir = !opaque && l.as_ref().is_some_and(Metadata::is_dir);
        if !walk_upper(lower, upper, &p, lower_dir, out)? {
            return Ok(false);
        }
    }
    Ok(true)
}
