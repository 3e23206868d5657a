//! The state directory: `<root>/<id>/state.json` plus the `exec.fifo` of a created container.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroups::{CgroupPaths, FreezerState};
use crate::error::{PathContext, Result, RuntimeError};

/// The state file's name inside a container's directory.
pub(crate) const STATE_FILE: &str = "state.json";
/// The fifo a created container's init blocks on until `start`.
pub(crate) const EXEC_FIFO: &str = "exec.fifo";

/// The OCI version this runtime reports.
pub const OCI_VERSION: &str = "1.2.0";

/// Lifecycle status, spelled as runc spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `create` is setting the container up.
    Creating,
    /// Set up; its process waits for `start`.
    Created,
    /// Its process runs.
    Running,
    /// Frozen.
    Paused,
    /// Its process has exited.
    Stopped,
}

impl Status {
    /// runc's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What the runtime keeps about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// The container's id.
    pub id: String,
    /// Host pid of the init process.
    pub pid: i32,
    /// Start time of the init (field 22 of /proc/pid/stat), to detect pid reuse.
    pub pid_start: u64,
    /// Its bundle.
    pub bundle: PathBuf,
    /// Its root file system (absolute).
    pub rootfs: PathBuf,
    /// RFC 3339 with nanoseconds, UTC.
    pub created: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Its cgroup, once made.
    pub cgroup: Option<CgroupPaths>,
    /// The config the container was created with (exec and update start from it).
    pub config: Spec,
    /// Set once `start` ran (a created container has not run its process yet).
    #[serde(default)]
    pub started: bool,
}

/// runc's `state` output (the OCI state plus `rootfs`, `created` and `owner`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OciState {
    /// The OCI runtime spec version.
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// The container's id.
    pub id: String,
    /// Host pid of the init (0 when stopped).
    pub pid: i32,
    /// Its status.
    pub status: Status,
    /// Its bundle.
    pub bundle: PathBuf,
    /// Its root file system.
    pub rootfs: PathBuf,
    /// When it was created (RFC 3339).
    pub created: String,
    /// Who owns it ("" as runc prints for root).
    pub owner: String,
    /// The spec's annotations.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

/// Rejects ids that could name something outside the state root (runc's rule, plus length).
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(RuntimeError::InvalidId(id.into(), "empty"));
    }
    if id.len() > 1024 {
        return Err(RuntimeError::InvalidId(id.into(), "longer than 1024 bytes"));
    }
    if id == "." || id == ".." || id.contains("..") {
        return Err(RuntimeError::InvalidId(id.into(), "contains \"..\""));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
    {
        return Err(RuntimeError::InvalidId(
            id.into(),
            "only letters, digits and _ + - . are allowed",
        ));
    }
    Ok(())
}

impl ContainerState {
    /// The container's directory under `root`.
    pub fn dir(root: &Path, id: &str) -> PathBuf {
        root.join(id)
    }

    /// Loads `<root>/<id>/state.json`.
    pub fn load(root: &Path, id: &str) -> Result<ContainerState> {
        validate_id(id)?;
        let p = Self::dir(root, id).join(STATE_FILE);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotExist);
            }
            Err(e) => return Err(RuntimeError::path("read", p, e)),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::Spec(format!("corrupt state file {}: {e}", p.display())))
    }

    /// Writes the state file atomically (temp file, fsync-free rename: the state dir is on tmpfs).
    pub fn save(&self, root: &Path) -> Result<()> {
        let dir = Self::dir(root, &self.id);
        let bytes = serde_json::to_vec(self)
            .map_err(|e| RuntimeError::Spec(format!("encode state: {e}")))?;
        write_atomic(&dir.join(STATE_FILE), &bytes)
    }

    /// True while the init process (the one we started, not a reused pid) is alive.
    pub fn init_alive(&self) -> bool {
        self.pid > 0 && proc_start_time(self.pid).is_some_and(|t| t == self.pid_start)
    }

    /// Current status, worked out from the process, the fifo and the freezer.
    pub fn status(&self, root: &Path) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        if !self.started && Self::dir(root, &self.id).join(EXEC_FIFO).exists() {
            return Status::Created;
        }
        if let Some(cg) = &self.cgroup
            && matches!(cg.open().freezer_state(), Ok(FreezerState::Frozen))
        {
            return Status::Paused;
        }
        Status::Running
    }

    /// runc's `state` JSON for this container.
    pub fn oci_state(&self, root: &Path) -> OciState {
        let status = self.status(root);
        OciState {
            oci_version: OCI_VERSION.into(),
            id: self.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: String::new(),
            annotations: self.annotations.clone(),
        }
    }

    /// The OCI state handed to hooks on stdin.
    pub(crate) fn hook_state(&self, status: Status) -> Vec<u8> {
        let v = serde_json::json!({
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status.as_str(),
            "pid": self.pid,
            "bundle": self.bundle,
            "annotations": self.annotations,
        });
        v.to_string().into_bytes()
    }
}

/// Start time (clock ticks since boot) of a live, non-zombie process.
pub(crate) fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); start time is field 22.
    rest.split(' ').nth(19)?.parse().ok()
}

/// Writes `path` via a temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).at("create", &tmp)?;
    f.write_all(bytes).at("write", &tmp)?;
    drop(f);
    std::fs::rename(&tmp, path).at("rename into", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for bad in ["", "a/b", "..", "../x", "a..b", "/abs", "a b", "x\0"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc", "a-b_c.d+1", "0123"] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn start_time_of_self() {
        assert!(proc_start_time(std::process::id() as i32).is_some());
        assert!(proc_start_time(i32::MAX).is_none());
    }
}
