//! Writing changes as a tar, the way containerd's `archive.ChangeWriter` does.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::walk::xattrs;
use super::{Change, DiffOptions, Kind};
use crate::ImageError;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

fn at(p: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |e| ImageError::Io(io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

struct ChangeWriter<'a, W: Write> {
    source: &'a Path,
    builder: tar::Builder<W>,
    opts: &'a DiffOptions,
    /// Directories written (or about to be): a parent is written once, before its first child.
    added_dirs: HashSet<PathBuf>,
    /// For hard-linked inodes, the first name written; later names become links to it.
    inode_src: HashMap<(u64, u64), PathBuf>,
    /// Unchanged names of hard-linked inodes not written yet: written as links if a changed
    /// name of the same inode comes.
    inode_refs: HashMap<(u64, u64), Vec<PathBuf>>,
}

/// Writes `list` (paths relative to `source`) as a tar to `out`; returns `out`.
pub(crate) fn write_changes<W: Write>(
    source: &Path,
    list: &[Change],
    opts: &DiffOptions,
    out: W,
) -> Result<W, ImageError> {
    let mut cw = ChangeWriter {
        source,
        builder: tar::Builder::new(out),
        opts,
        added_dirs: HashSet::new(),
        inode_src: HashMap::new(),
        inode_refs: HashMap::new(),
    };
    for c in list {
        match c.kind {
            Kind::Delete => {
                let name = c.path.file_name().unwrap_or_default();
                let mut wh = OsString::from(OsStr::from_bytes(WHITEOUT_PREFIX));
                wh.push(name);
                cw.whiteout(&c.path.with_file_name(wh))?;
            }
            Kind::Opaque => cw.whiteout(&c.path.join(OPAQUE_WHITEOUT))?,
            Kind::Add | Kind::Modify | Kind::Unmodified => cw.entry(c.kind, &c.path)?,
        }
    }
    Ok(cw.builder.into_inner()?)
}

/// A header with the fields every entry shares.
fn header(ty: EntryType, mode: u32, uid: u64, gid: u64, mtime: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_size(0);
    // Written as zeros on every entry, as Go's archive/tar does; readers may insist on numbers.
    let _ = h.set_device_major(0);
    let _ = h.set_device_minor(0);
    h
}

/// One PAX record, `<len> <key>=<value>\n`, where `<len>` counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

impl<W: Write> ChangeWriter<'_, W> {
    fn mtime(&self, secs: i64) -> u64 {
        let t = match self.opts.source_date_epoch {
            Some(e) => secs.min(e),
            None => secs,
        };
        t.max(0) as u64
    }

    fn whiteout(&mut self, path: &Path) -> Result<(), ImageError> {
        self.include_parents(path, false)?;
        let t = self.opts.source_date_epoch.unwrap_or(0).max(0) as u64;
        let mut h = header(EntryType::Regular, 0, 0, 0, t);
        self.builder.append_data(&mut h, path, io::empty())?;
        Ok(())
    }

    /// Writes `name`'s parent directory (and so on up) if not written yet; notes `name` as
    /// written if it is a directory.
    fn include_parents(&mut self, name: &Path, is_dir: bool) -> Result<(), ImageError> {
        if let Some(parent) = name.parent()
            && !parent.as_os_str().is_empty()
            && !self.added_dirs.contains(parent)
        {
            self.added_dirs.insert(parent.to_path_buf());
            self.entry(Kind::Modify, parent)?;
        }
        if is_dir {
            self.added_dirs.insert(name.to_path_buf());
        }
        Ok(())
    }

    fn entry(&mut self, kind: Kind, path: &Path) -> Result<(), ImageError> {
        if path
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(WHITEOUT_PREFIX))
        {
            return Err(ImageError::Unrepresentable(format!(
                "{}: names starting with .wh. are whiteouts in a layer",
                path.display()
            )));
        }
        let src = self.source.join(path);
        let md = std::fs::symlink_metadata(&src).map_err(at(&src))?;
        let ft = md.file_type();
        let (ty, name): (EntryType, PathBuf) = if ft.is_dir() {
            let mut n = path.as_os_str().to_os_string();
            n.push("/");
            (EntryType::Directory, n.into())
        } else if ft.is_file() {
            (EntryType::Regular, path.to_path_buf())
        } else if ft.is_symlink() {
            (EntryType::Symlink, path.to_path_buf())
        } else if ft.is_char_device() {
            (EntryType::Char, path.to_path_buf())
        } else if ft.is_block_device() {
            (EntryType::Block, path.to_path_buf())
        } else if ft.is_fifo() {
            (EntryType::Fifo, path.to_path_buf())
        } else {
            // Sockets belong to a running process, not to a layer (containerd skips them too).
            return Ok(());
        };
        let mut h = header(
            ty,
            md.mode() & 0o7777,
            md.uid().into(),
            md.gid().into(),
            self.mtime(md.mtime()),
        );
        if matches!(ty, EntryType::Char | EntryType::Block) {
            h.set_device_major(libc::major(md.rdev()))?;
            h.set_device_minor(libc::minor(md.rdev()))?;
        }
        let mut link: Option<PathBuf> = None;
        let mut more_links = Vec::new();
        if !ft.is_dir() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.inode_src.get(&key) {
                h.set_entry_type(EntryType::Link);
                link = Some(first.clone());
            } else {
                if kind == Kind::Unmodified {
                    self.inode_refs
                        .entry(key)
                        .or_default()
                        .push(path.to_path_buf());
                    return Ok(());
                }
                self.inode_src.insert(key, path.to_path_buf());
                more_links = self.inode_refs.remove(&key).unwrap_or_default();
            }
        } else if kind == Kind::Unmodified {
            return Ok(());
        }
        let is_link = link.is_some();
        let xattrs = if is_link { Vec::new() } else { xattrs(&src)? };
        self.include_parents(path, ft.is_dir())?;
        if !xattrs.is_empty() {
            self.pax(path, &xattrs)?;
        }
        if let Some(target) = link {
            self.builder.append_link(&mut h, path, &target)?;
        } else if ty == EntryType::Symlink {
            let target = std::fs::read_link(&src).map_err(at(&src))?;
            self.builder.append_link(&mut h, path, &target)?;
        } else if ty == EntryType::Regular {
            h.set_size(md.size());
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&src)
                .map_err(at(&src))?;
            let data = Exact {
                inner: f,
                left: md.size(),
                path: &src,
            };
            self.builder.append_data(&mut h, path, data)?;
        } else {
            self.builder.append_data(&mut h, &name, io::empty())?;
        }
        for extra in more_links {
            self.include_parents(&extra, false)?;
            let mut h = header(
                EntryType::Link,
                md.mode() & 0o7777,
                md.uid().into(),
                md.gid().into(),
                self.mtime(md.mtime()),
            );
            self.builder.append_link(&mut h, &extra, path)?;
        }
        Ok(())
    }

    /// A PAX extended header carrying `xattrs` for the next entry.
    fn pax(&mut self, path: &Path, xattrs: &[(OsString, Vec<u8>)]) -> Result<(), ImageError> {
        let mut data = Vec::new();
        for (k, v) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k.as_bytes());
            pax_record(&mut data, &key, v);
        }
        // The header's own name only has to fit; readers use it for nothing.
        let base = path.file_name().unwrap_or_default().as_bytes();
        let base: Vec<u8> = base
            .iter()
            .take(80)
            .map(|&b| if b.is_ascii_graphic() { b } else { b'_' })
            .collect();
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        let mut name = b"PaxHeaders.0/".to_vec();
        name.extend_from_slice(&base);
        h.set_path(OsStr::from_bytes(&name))?;
        h.set_cksum();
        self.builder.append(&h, &data[..])?;
        Ok(())
    }
}

/// Reads exactly `left` bytes of a file: a file that shrank since it was measured is an error
/// (a tar entry shorter than its header says would corrupt the rest of the stream).
struct Exact<'p, R> {
    inner: R,
    left: u64,
    path: &'p Path,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: file shrank while being read", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::{Exact, pax_record};

    #[test]
    fn a_file_that_shrank_is_an_error_not_a_short_entry() {
        let data = [1u8; 5];
        let mut r = Exact {
            inner: &data[..],
            left: 9,
            path: std::path::Path::new("f"),
        };
        let e = std::io::copy(&mut r, &mut std::io::sink()).unwrap_err();
        assert!(e.to_string().contains("f: file shrank"), "{e}");
        let mut r = Exact {
            inner: &data[..],
            left: 3,
            path: std::path::Path::new("f"),
        };
        assert_eq!(std::io::copy(&mut r, &mut std::io::sink()).unwrap(), 3);
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for (k, v, want) in [
            (&b"a"[..], &b"b"[..], &b"6 a=b\n"[..]),
            (
                b"SCHILY.xattr.user.x",
                b"12345",
                b"29 SCHILY.xattr.user.x=12345\n",
            ),
            (b"abcd", b"", b"8 abcd=\n"),
        ] {
            let mut out = Vec::new();
            pax_record(&mut out, k, v);
            assert_eq!(out, want);
            let len: usize = std::str::from_utf8(out.split(|&b| b == b' ').next().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, out.len());
        }
        let mut out = Vec::new();
        pax_record(&mut out, b"k", &[b'v'; 94]);
        assert_eq!(&out[..4], b"101 ");
        assert_eq!(out.len(), 101);
    }
}
