//! `containerd.services.diff.v1.Diff`: applying layers onto snapshot mounts, and making a layer
//! from the difference of two mount sets.

use berth_store::Sharing;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use berth_api::containerd::services::diff::v1::{
    ApplyRequest, ApplyResponse, DiffRequest, DiffResponse, diff_server,
};
use berth_api::containerd::types::{Descriptor, Mount};
use berth_image::{Compression, DiffOptions};
use berth_store::{NsWriter, Store, StoreError};
use tonic::{Request, Response, Status};

use super::{digest, lease, namespace};
use crate::errors::{image_status, to_status};
use crate::mount::{Mounted, overlay_upper, read_only};

/// The label containerd puts on a compressed layer: the digest of its uncompressed tar.
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

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
                if let Some(upper) = single_overlay_upper(&mounts) {
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
                            return Err(image_status(&format!("applying {}", desc.digest), e));
                        }
                    }
                }
                let m = Mounted::new(&dir, &mounts)
                    .map_err(|e| Status::internal(format!("mounting the snapshot: {e}")))?;
                let applied =
                    berth_image::apply_layer(reader.take().expect("a reader is open"), m.path())
                        .map_err(|e| image_status(&format!("applying {}", desc.digest), e))?;
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

    async fn diff(&self, req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let ns = namespace(&req)?;
        let lease = lease(&req);
        let r = req.into_inner();
        if r.left.is_empty() {
            return Err(Status::invalid_argument("left: required"));
        }
        if r.right.is_empty() {
            return Err(Status::invalid_argument("right: required"));
        }
        // Checked now rather than at commit, after the work.
        berth_store::validate_labels(&r.labels).map_err(to_status)?;
        let compression = Compression::for_media_type(&r.media_type).ok_or_else(|| {
            Status::invalid_argument(format!(
                "media_type: {:?} is not a layer type Diff writes (use {}, {} or {})",
                r.media_type,
                berth_image::MEDIA_TYPE_LAYER,
                berth_image::MEDIA_TYPE_LAYER_GZIP,
                berth_image::MEDIA_TYPE_LAYER_ZSTD
            ))
        })?;
        let media_type = if r.media_type.is_empty() {
            berth_image::MEDIA_TYPE_LAYER_GZIP.to_string()
        } else {
            r.media_type
        };
        let job = DiffJob {
            store: self.store.clone(),
            mounts_dir: self.mounts_dir.clone(),
            ns,
            lease,
            generated_ref: r.r#ref.is_empty(),
            r#ref: if r.r#ref.is_empty() {
                format!("diff-{}", uuid::Uuid::new_v4().simple())
            } else {
                r.r#ref
            },
            labels: r.labels,
            opts: DiffOptions {
                compression,
                source_date_epoch: r.source_date_epoch.map(|t| t.seconds),
            },
        };
        let (left, right) = (r.left, r.right);
        let (digest, size) = tokio::task::spawn_blocking(move || job.run(&left, &right))
            .await
            .map_err(|e| Status::internal(format!("diff task: {e}")))??;
        Ok(Response::new(DiffResponse {
            diff: Some(Descriptor {
                media_type,
                digest,
                size,
                annotations: Default::default(),
            }),
        }))
    }
}

/// One `Diff.Diff`, run on the blocking pool.
struct DiffJob {
    store: Store,
    mounts_dir: PathBuf,
    ns: String,
    lease: Option<String>,
    r#ref: String,
    /// The ref was made up here, so a failed diff aborts its ingest (a client's ref is the
    /// client's to resume or abort, as in containerd).
    generated_ref: bool,
    labels: HashMap<String, String>,
    opts: DiffOptions,
}

/// Mounts `mounts` read-only; a mount the kernel refuses for its arguments names the field.
fn mount_ro(dir: &std::path::Path, field: &str, mounts: &[Mount]) -> Result<Mounted, Status> {
    Mounted::new(dir, &read_only(mounts)).map_err(|e| {
        let msg = format!("{field}: mounting: {e}");
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::EINVAL | libc::ENOTDIR | libc::ENODEV) => {
                Status::invalid_argument(msg)
            }
            _ => Status::internal(msg),
        }
    })
}

/// The content writer as an `io::Write`, appending at its offset.
struct IngestWrite<'a>(&'a mut NsWriter);

impl std::io::Write for IngestWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let w = self.0.inner();
        let off = w.offset();
        w.write_at(off, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl DiffJob {
    fn run(self, left: &[Mount], right: &[Mount]) -> Result<(String, i64), Status> {
        let started = Instant::now();
        // Both guards unmount on every way out, errors and panics included.
        let lower = mount_ro(&self.mounts_dir, "left", left)?;
        let fast = match overlay_upper(left, right) {
            Some(upper) => berth_image::overlay_changes(lower.path(), &upper)
                .map_err(|e| image_status("computing the diff", e))?,
            None => None,
        };
        let fast_path = fast.is_some();
        let (changes, _upper) = match fast {
            Some(c) => (c, None),
            None => {
                let upper = mount_ro(&self.mounts_dir, "right", right)?;
                let c = berth_image::tree_changes(lower.path(), upper.path())
                    .map_err(|e| image_status("computing the diff", e))?;
                (c, Some(upper))
            }
        };
        let mut w = self
            .store
            .content_writer(
                &self.ns,
                &self.r#ref,
                None,
                None,
                self.lease.as_deref(),
                Sharing::Adopt,
            )
            .map_err(to_status)?;
        let written = (|| {
            if w.inner().offset() > 0 {
                // A client's ref with an earlier partial ingest: start it over.
                w.inner()
                    .write_at(0, &[])
                    .map_err(|e| Status::internal(format!("restarting ingest: {e}")))?;
            }
            changes
                .write(&self.opts, IngestWrite(&mut w))
                .map_err(|e| image_status("computing the diff", e))
        })();
        let diffed = match written {
            Ok(d) => d,
            Err(st) => {
                drop(w);
                self.abort();
                return Err(st);
            }
        };
        let mut labels = self.labels.clone();
        if self.opts.compression != Compression::None {
            labels.insert(UNCOMPRESSED_LABEL.into(), diffed.diff_id.to_string());
        }
        match self
            .store
            .content_commit(w, diffed.size as i64, Some(diffed.digest.clone()), &labels)
        {
            Ok(_) => {}
            Err(StoreError::AlreadyExists(_)) => {
                // The same layer was made before: make sure it says what it unpacks to.
                let info = self
                    .store
                    .content_info(&self.ns, &diffed.digest)
                    .map_err(to_status)?;
                if let Some(v) = labels.get(UNCOMPRESSED_LABEL)
                    && !info.labels.contains_key(UNCOMPRESSED_LABEL)
                {
                    let l = HashMap::from([(UNCOMPRESSED_LABEL.to_string(), v.clone())]);
                    let path = format!("labels.{UNCOMPRESSED_LABEL}");
                    self.store
                        .content_update(&self.ns, &diffed.digest, &l, &[path])
                        .map_err(to_status)?;
                }
            }
            Err(e) => {
                self.abort();
                return Err(to_status(e));
            }
        }
        self.store.flush_blocking().map_err(to_status)?;
        tracing::debug!(
            namespace = %self.ns,
            digest = %diffed.digest,
            diff_id = %diffed.diff_id,
            size = diffed.size,
            uncompressed = diffed.uncompressed_size,
            changes = changes.len(),
            fast_path,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "diff written"
        );
        Ok((diffed.digest.to_string(), diffed.size as i64))
    }

    fn abort(&self) {
        if self.generated_ref {
            let _ = self.store.content_abort(&self.ns, &self.r#ref);
        }
    }
}

/// The upper directory of a single overlay mount (where Apply writes an overlay layer).
fn single_overlay_upper(mounts: &[berth_api::containerd::types::Mount]) -> Option<PathBuf> {
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
