//! Snapshotters: the file-system side of snapshots. Each snapshot has a backend id and a
//! directory `<root>/snapshots/<id>/fs` (plus `work` for overlayfs); this crate creates and
//! removes those directories, says how to mount a snapshot over its parents, and measures usage.
//!
//! Names, parents, kinds, labels and leases are metadata, kept per namespace by `berth-store`,
//! which owns one [`Snapshotter`] per backend — as containerd's metadata layer wraps its
//! snapshotters.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};

/// What went wrong on disk.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An I/O error on a path.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Copying a parent's tree failed (native snapshotter).
    #[error("copying {from} to {to}: {reason}")]
    Copy {
        /// Source directory.
        from: PathBuf,
        /// Destination directory.
        to: PathBuf,
        /// What `cp` said.
        reason: String,
    },
    /// A remote (proxy) snapshotter failed or could not be reached.
    #[error("remote snapshotter: {0}")]
    Remote(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The kind of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Read-only view of a parent.
    View,
    /// Writable.
    Active,
    /// Frozen, usable as a parent.
    Committed,
}

/// A mount, as containerd's `containerd.types.Mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Type (`bind`, `overlay`).
    pub r#type: String,
    /// Source.
    pub source: String,
    /// Target inside the mount point (usually empty).
    pub target: String,
    /// Options.
    pub options: Vec<String>,
}

/// Disk usage of a snapshot's own layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes in use (allocated blocks).
    pub size: i64,
    /// Inodes in use.
    pub inodes: i64,
}

/// A name no other trash entry of this process has.
fn trash_suffix() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Deletes `dir` on the one background thread that empties the trash.
fn remove_in_background(dir: PathBuf) {
    static TX: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<PathBuf>>> =
        std::sync::OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        // Without the thread the receiver is dropped, and each send below fails into a removal
        // in place.
        let _ = std::thread::Builder::new()
            .name("snapshot-trash".into())
            .spawn(move || {
                for d in rx {
                    let _ = std::fs::remove_dir_all(&d);
                }
            });
        std::sync::Mutex::new(tx)
    });
    let sent = tx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(dir.clone());
    if sent.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// One snapshotter backend.
pub trait Snapshotter: Send + Sync + std::fmt::Debug {
    /// Its name (`overlayfs`, `native`).
    fn name(&self) -> &str;
    /// Where its snapshots live.
    fn root(&self) -> &Path;
    /// Capabilities advertised through Introspection.
    fn capabilities(&self) -> Vec<String>;
    /// Creates snapshot `id` of `kind` (active or view), whose parents (nearest first) are
    /// `parents`.
    fn create(&self, id: &str, kind: Kind, parents: &[String]) -> Result<(), SnapshotError>;
    /// How to mount `id` of `kind` over `parents` (nearest first).
    fn mounts(&self, id: &str, kind: Kind, parents: &[String])
    -> Result<Vec<Mount>, SnapshotError>;
    /// Freezes active snapshot `id` (local backends have nothing to do).
    fn commit(&self, _id: &str) -> Result<(), SnapshotError> {
        Ok(())
    }
    /// Whether snapshot `id` exists in the backend (checked by the start-up repair).
    fn exists(&self, id: &str) -> bool {
        self.fs(id).exists()
    }
    /// Removes the directories of `id` (idempotent): renamed into `<root>/trash` at once and
    /// deleted there in the background (on a file system mounted with `discard`, each freed
    /// block waits for the device); what a crash leaves in the trash goes at the next start
    /// ([`Snapshotter::empty_trash`]).
    fn remove(&self, id: &str) -> Result<(), SnapshotError> {
        let dir = self.root().join("snapshots").join(id);
        let trash = self.root().join("trash");
        if std::fs::create_dir_all(&trash).is_ok() {
            let to = trash.join(format!("{id}-{}", trash_suffix()));
            match std::fs::rename(&dir, &to) {
                Ok(()) => {
                    remove_in_background(to);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                // Removed in place below.
                Err(_) => {}
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
            _ => Ok(()),
        }
    }
    /// Deletes what removals left in `<root>/trash` (at start-up, before anything is removed).
    fn empty_trash(&self) {
        let _ = std::fs::remove_dir_all(self.root().join("trash"));
    }
    /// Usage of `id`'s own directory.
    fn usage(&self, id: &str) -> Result<Usage, SnapshotError> {
        let mut u = Usage::default();
        du(&self.fs(id), &mut u)?;
        Ok(u)
    }
    /// The ids that have directories on disk.
    fn ids_on_disk(&self) -> Result<Vec<String>, SnapshotError> {
        let dir = self.root().join("snapshots");
        let mut out = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    out.push(
                        e.map_err(io(&dir))?
                            .file_name()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&dir)(e)),
        }
        Ok(out)
    }
    /// Whether a snapshot's own directory is independent of its parents' (overlay layers are;
    /// native copies are not), so that layers can be applied in parallel into parentless
    /// snapshots and given their parent at commit.
    fn independent_layers(&self) -> bool {
        false
    }
    /// The upper (own) directory of `id`.
    fn fs(&self, id: &str) -> PathBuf {
        self.root().join("snapshots").join(id).join("fs")
    }
}

fn du(p: &Path, u: &mut Usage) -> Result<(), SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(p).map_err(io(p))?;
    u.inodes += 1;
    u.size += (md.blocks() * 512) as i64;
    if md.is_dir() {
        for e in std::fs::read_dir(p).map_err(io(p))? {
            du(&e.map_err(io(p))?.path(), u)?;
        }
    }
    Ok(())
}

fn mkdirs(dirs: &[PathBuf]) -> Result<(), SnapshotError> {
    use std::os::unix::fs::DirBuilderExt;
    for d in dirs {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(d)
            .map_err(io(d))?;
    }
    Ok(())
}

/// The overlayfs snapshotter: each snapshot is an upper directory; mounts stack the parents as
/// lower directories.
#[derive(Debug)]
pub struct Overlay {
    root: PathBuf,
}

impl Overlay {
    /// A snapshotter rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Overlay { root: root.into() }
    }
}

impl Snapshotter for Overlay {
    fn name(&self) -> &str {
        "overlayfs"
    }
    fn root(&self) -> &Path {
        &self.root
    }
    fn independent_layers(&self) -> bool {
        true
    }
    fn capabilities(&self) -> Vec<String> {
        Vec::new()
    }
    fn create(&self, id: &str, _kind: Kind, _parents: &[String]) -> Result<(), SnapshotError> {
        let dir = self.root.join("snapshots").join(id);
        mkdirs(&[dir.join("fs"), dir.join("work")])
    }
    fn mounts(
        &self,
        id: &str,
        kind: Kind,
        parents: &[String],
    ) -> Result<Vec<Mount>, SnapshotError> {
        Ok(self.overlay_mounts(id, kind, parents))
    }
}

impl Overlay {
    fn overlay_mounts(&self, id: &str, kind: Kind, parents: &[String]) -> Vec<Mount> {
        let ro = if kind == Kind::Active { "rw" } else { "ro" };
        if parents.is_empty() {
            return vec![Mount {
                r#type: "bind".into(),
                source: self.fs(id).display().to_string(),
                target: String::new(),
                options: vec![ro.into(), "rbind".into()],
            }];
        }
        if kind != Kind::Active && parents.len() == 1 {
            return vec![Mount {
                r#type: "bind".into(),
                source: self.fs(&parents[0]).display().to_string(),
                target: String::new(),
                options: vec!["ro".into(), "rbind".into()],
            }];
        }
        let lower: Vec<String> = parents
            .iter()
            .map(|p| self.fs(p).display().to_string())
            .collect();
        let mut options = Vec::new();
        if kind == Kind::Active {
            let dir = self.root.join("snapshots").join(id);
            options.push(format!("workdir={}", dir.join("work").display()));
            options.push(format!("upperdir={}", dir.join("fs").display()));
        }
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }
}

/// The native snapshotter: each snapshot is a full copy of its parent; mounts are binds.
#[derive(Debug)]
pub struct Native {
    root: PathBuf,
}

impl Native {
    /// A snapshotter rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Native { root: root.into() }
    }
}

impl Snapshotter for Native {
    fn name(&self) -> &str {
        "native"
    }
    fn root(&self) -> &Path {
        &self.root
    }
    fn capabilities(&self) -> Vec<String> {
        Vec::new()
    }
    fn create(&self, id: &str, _kind: Kind, parents: &[String]) -> Result<(), SnapshotError> {
        let fs = self.fs(id);
        match parents.first() {
            None => mkdirs(&[fs]),
            Some(p) => {
                mkdirs(&[self.root.join("snapshots").join(id)])?;
                let from = self.fs(p);
                // cp -a keeps owners, modes, times, links, xattrs and device nodes.
                let out = std::process::Command::new("cp")
                    .arg("-a")
                    .arg("--reflink=auto")
                    .arg(&from)
                    .arg(&fs)
                    .output()
                    .map_err(io(&from))?;
                if !out.status.success() {
                    return Err(SnapshotError::Copy {
                        from,
                        to: fs,
                        reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                Ok(())
            }
        }
    }
    fn mounts(
        &self,
        id: &str,
        kind: Kind,
        _parents: &[String],
    ) -> Result<Vec<Mount>, SnapshotError> {
        let ro = if kind == Kind::Active { "rw" } else { "ro" };
        Ok(vec![Mount {
            r#type: "bind".into(),
            source: self.fs(id).display().to_string(),
            target: String::new(),
            options: vec![ro.into(), "rbind".into()],
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_mounts_follow_containerd() {
        let d = tempfile::tempdir().unwrap();
        let o = Overlay::new(d.path());
        let fs = |id: &str| {
            d.path()
                .join("snapshots")
                .join(id)
                .join("fs")
                .display()
                .to_string()
        };
        assert_eq!(o.mounts("1", Kind::Active, &[]).unwrap()[0].r#type, "bind");
        assert_eq!(
            o.mounts("1", Kind::Active, &[]).unwrap()[0].options,
            ["rw", "rbind"]
        );
        let m = &o
            .mounts("3", Kind::Active, &["2".into(), "1".into()])
            .unwrap()[0];
        assert_eq!(m.r#type, "overlay");
        assert!(
            m.options
                .last()
                .unwrap()
                .ends_with(&format!("lowerdir={}:{}", fs("2"), fs("1")))
        );
        assert!(m.options.iter().any(|o| o.starts_with("upperdir=")));
        let v = &o.mounts("4", Kind::View, &["2".into()]).unwrap()[0];
        assert_eq!(
            (v.r#type.as_str(), v.source.as_str()),
            ("bind", fs("2").as_str())
        );
        assert_eq!(v.options, ["ro", "rbind"]);
        let v = &o
            .mounts("5", Kind::View, &["2".into(), "1".into()])
            .unwrap()[0];
        assert_eq!(v.options, [format!("lowerdir={}:{}", fs("2"), fs("1"))]);
    }

    #[test]
    fn native_copies_the_parent_and_usage_counts() {
        let d = tempfile::tempdir().unwrap();
        let n = Native::new(d.path());
        n.create("1", Kind::Active, &[]).unwrap();
        std::fs::write(n.fs("1").join("f"), vec![1u8; 10_000]).unwrap();
        std::os::unix::fs::symlink("f", n.fs("1").join("l")).unwrap();
        n.create("2", Kind::Active, &["1".into()]).unwrap();
        assert_eq!(std::fs::read(n.fs("2").join("f")).unwrap().len(), 10_000);
        assert_eq!(
            std::fs::read_link(n.fs("2").join("l")).unwrap(),
            Path::new("f")
        );
        let u = n.usage("2").unwrap();
        assert!(u.size >= 10_000 && u.inodes == 3, "{u:?}");
        let mut ids = n.ids_on_disk().unwrap();
        ids.sort();
        assert_eq!(ids, ["1", "2"]);
        n.remove("2").unwrap();
        n.remove("2").unwrap();
        assert_eq!(n.ids_on_disk().unwrap(), ["1"]);
    }
}
