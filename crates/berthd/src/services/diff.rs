//! `containerd.services.diff.v1.Diff`: applying layers onto snapshot mounts.

use std::path::PathBuf;

use berth_api::containerd::services::diff::v1::{
    ApplyRequest, ApplyResponse, DiffRequest, DiffResponse, diff_server,
};
use berth_api::containerd::types::Descriptor;
use berth_store::Store;
use tonic::{Request, Response, Status};

use super::{digest, namespace};
use crate::errors::to_status;
use crate::mount::Mounted;

#[derive(Debug)]
pub(crate) struct Diff {
    store: Store,
    /// Where temporary mount points go (`<state>/diff`).
    mounts_dir: PathBuf,
}

impl Diff {
    pub(crate) fn new(store: Store, mounts_dir: PathBuf) -> Self {
        Diff { store, mounts_dir }
    }
}

/// Media types a layer may have (compression is detected from the bytes).
fn is_layer(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
        || mt.starts_with("application/vnd.oci.image.layer.nondistributable.")
}

#[tonic::async_trait]
impl diff_server::Diff for Diff {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let desc = r
            .diff
            .ok_or_else(|| Status::invalid_argument("diff: required"))?;
        let d = digest("diff.digest", &desc.digest)?;
        if !is_layer(&desc.media_type) {
            return Err(Status::invalid_argument(format!(
                "diff.media_type: {:?} is not a layer type",
                desc.media_type
            )));
        }
        if r.mounts.is_empty() {
            return Err(Status::invalid_argument("mounts: required"));
        }
        // Fail early (NotFound) if the blob is missing.
        let reader = self.store.content_reader(&ns, &d).map_err(to_status)?;
        let store = self.store.clone();
        let dir = self.mounts_dir.clone();
        let mounts = r.mounts;
        let applied =
            tokio::task::spawn_blocking(move || -> Result<berth_image::Applied, Status> {
                // One overlay mount: write into its upper directory, as containerd does (whiteouts
                // as overlay whiteouts), unless the layer needs its lower layers.
                let mut reader = Some(reader);
                if let Some(upper) = overlay_upper(&mounts) {
                    let first = reader.take().expect("set above");
                    match berth_image::apply_layer_with(
                        std::io::BufReader::with_capacity(1 << 20, first),
                        &upper,
                        berth_image::Whiteouts::Overlay,
                    ) {
                        Ok(a) => {
                            if r.sync_fs {
                                // SAFETY: sync(2) has no arguments and cannot fail.
                                unsafe { libc::sync() };
                            }
                            return Ok(a);
                        }
                        Err(berth_image::ImageError::NeedsLowerLayers(_)) => {
                            empty_dir(&upper).map_err(|e| {
                                Status::internal(format!("clearing {}: {e}", upper.display()))
                            })?;
                            reader = Some(store.content_reader(&ns, &d).map_err(to_status)?);
                        }
                        Err(e) => {
                            return Err(Status::invalid_argument(format!(
                                "applying {}: {}",
                                desc.digest,
                                chain(&e)
                            )));
                        }
                    }
                }
                let m = Mounted::new(&dir, &mounts)
                    .map_err(|e| Status::internal(format!("mounting the snapshot: {e}")))?;
                let applied =
                    berth_image::apply_layer(reader.take().expect("a reader is open"), m.path())
                        .map_err(|e| {
                            Status::invalid_argument(format!(
                                "applying {}: {}",
                                desc.digest,
                                chain(&e)
                            ))
                        })?;
                if r.sync_fs {
                    // SAFETY: sync(2) has no arguments and cannot fail.
                    unsafe { libc::sync() };
                }
                Ok(applied)
            })
            .await
            .map_err(|e| Status::internal(format!("apply task: {e}")))??;
        Ok(Response::new(ApplyResponse {
            applied: Some(Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest: applied.digest.to_string(),
                size: applied.size as i64,
                annotations: Default::default(),
            }),
        }))
    }

    async fn diff(&self, _req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        Err(Status::unimplemented(
            "Diff.Diff (creating a layer from two mount sets) is not implemented yet",
        ))
    }
}

/// The upper directory of a single overlay mount.
fn overlay_upper(mounts: &[berth_api::containerd::types::Mount]) -> Option<PathBuf> {
    let [m] = mounts else { return None };
    if m.r#type != "overlay" {
        return None;
    }
    m.options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
}

/// Removes everything inside `dir`.
fn empty_dir(dir: &std::path::Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if std::fs::symlink_metadata(&p)?.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
