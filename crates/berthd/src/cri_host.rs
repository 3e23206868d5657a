//! What berthd does for the CRI beyond its gRPC API (see `berth_cri::Host`): a pull with the
//! caller's credentials through the pull engine, and reading a file of a snapshot's file
//! system (the image's /etc/passwd and /etc/group, for user names and groups).

use berth_store::Sharing;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use berth_api::containerd::services::images::v1::Image;
use berth_api::containerd::types::Mount;
use berth_cri::{BoxFuture, PullAuth};
use berth_image::ImageRef;
use berth_image::media::PlatformSpec;
use berth_image::registry::{Credentials, HostOptions, Session};
use tonic::Status;

use crate::errors::pull_status;
use crate::mount::{Mounted, read_only};
use crate::pull::{ProgressSink, PullSpec, Puller};

#[derive(Debug)]
pub(crate) struct CriHost {
    /// For blobs the CRI writes (its pause image).
    pub(crate) store: berth_store::Store,
    pub(crate) puller: Puller,
    pub(crate) hosts: HostOptions,
    /// Where snapshots are mounted to be read.
    pub(crate) mounts_dir: PathBuf,
}

impl berth_cri::Host for CriHost {
    fn pull<'a>(
        &'a self,
        namespace: &'a str,
        reference: &'a str,
        snapshotter: &'a str,
        auth: Option<PullAuth>,
    ) -> BoxFuture<'a, Result<Image, Status>> {
        Box::pin(async move {
            let r = ImageRef::parse(reference)
                .map_err(|e| Status::invalid_argument(format!("image {reference:?}: {e}")))?;
            self.puller
                .check_snapshotter(snapshotter)
                .map_err(pull_status)?;
            let credentials = auth.map(|a| {
                let c = Credentials {
                    username: a.username,
                    secret: a.secret,
                };
                let cb: berth_image::registry::CredentialCallback = Arc::new(move |_, _| {
                    let c = c.clone();
                    Box::pin(async move { Some(c) })
                });
                cb
            });
            let spec = PullSpec {
                ns: namespace.to_string(),
                name: r.to_string(),
                reference: r,
                platform: PlatformSpec::host(),
                snapshotter: Some(snapshotter.to_string()),
                session: Session {
                    hosts: self.hosts.clone(),
                    credentials,
                    headers: Vec::new(),
                },
                labels: HashMap::new(),
            };
            let img = self.puller.pull(spec, ProgressSink::default()).await;
            let img = img.map_err(pull_status)?;
            Ok(crate::pb::image(img))
        })
    }

    fn read_rootfs_file<'a>(
        &'a self,
        mounts: Vec<Mount>,
        path: &'a str,
    ) -> BoxFuture<'a, std::io::Result<Option<Vec<u8>>>> {
        let dir = self.mounts_dir.clone();
        let path = path.trim_start_matches('/').to_string();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let m = Mounted::new(&dir, &read_only(&mounts))?;
                // Resolved inside the mounted root: a symlink in the image cannot lead out.
                let root = m.path().to_path_buf();
                let full = root.join(&path);
                match std::fs::canonicalize(&full) {
                    Ok(real) if real.starts_with(&root) => match std::fs::read(&real) {
                        Ok(b) => Ok(Some(b)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                        Err(e) => Err(e),
                    },
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| std::io::Error::other(format!("reading a rootfs file: {e}")))?
        })
    }

    fn write_blob<'a>(
        &'a self,
        namespace: &'a str,
        lease: &'a str,
        data: &'a [u8],
        labels: HashMap<String, String>,
    ) -> BoxFuture<'a, Result<String, Status>> {
        let (store, ns, lease, data) = (
            self.store.clone(),
            namespace.to_string(),
            lease.to_string(),
            data.to_vec(),
        );
        Box::pin(crate::pool::blocking(move || {
            use crate::errors::to_status;
            let d = berth_store::Digest::of(&data);
            let r = format!("berth-cri-{d}");
            let size = data.len() as i64;
            match store.content_writer(
                &ns,
                &r,
                Some(size),
                Some(d.clone()),
                Some(&lease),
                Sharing::Adopt,
            ) {
                Ok(mut w) => {
                    w.write_at(0, &data).map_err(to_status)?;
                    match store.content_commit(w, size, Some(d.clone()), &labels) {
                        Ok(_) | Err(berth_store::StoreError::AlreadyExists(_)) => {}
                        Err(e) => return Err(to_status(e)),
                    }
                }
                Err(berth_store::StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(to_status(e)),
            }
            store.flush_blocking().map_err(to_status)?;
            Ok(d.to_string())
        }))
    }
}
