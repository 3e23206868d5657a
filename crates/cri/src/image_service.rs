//! `runtime.v1.ImageService`: pulls through the daemon's pull engine (hosts.toml mirrors,
//! credentials, streaming unpack), and the image store seen as CRI images.

use std::sync::Arc;

use berth_api::runtime::v1 as cri;
use cri::image_service_server::ImageService as Svc;
use tonic::{Request, Response, Status};

use crate::PullAuth;
use crate::api::NAMESPACE;
use crate::image::{self, cri_image};
use crate::image_ref;
use crate::state::Inner;

/// The image service.
#[derive(Debug, Clone)]
pub struct ImageService {
    inner: Arc<Inner>,
}

impl ImageService {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        ImageService { inner }
    }

    /// The CRI image `reference` names, with every record of its id.
    async fn find(&self, reference: &str) -> Result<Option<cri::Image>, Status> {
        let Some(rec) = image::get_record(&self.inner.api, &self.inner.images, reference).await?
        else {
            return Ok(None);
        };
        let target = rec.target.clone().unwrap_or_default();
        let info = self.inner.images.resolve(&self.inner.api, &target).await?;
        let all = image::all(&self.inner.api, &self.inner.images).await?;
        let same: Vec<_> = all
            .iter()
            .filter(|(_, i)| i.id == info.id)
            .map(|(r, _)| r)
            .collect();
        Ok(Some(cri_image(&info, &same)))
    }

    async fn list(&self, filter: Option<&cri::ImageFilter>) -> Result<Vec<cri::Image>, Status> {
        if let Some(r) = filter
            .and_then(|f| f.image.as_ref())
            .map(|i| i.image.as_str())
            .filter(|s| !s.is_empty())
        {
            return Ok(self.find(r).await?.into_iter().collect());
        }
        let all = image::all(&self.inner.api, &self.inner.images).await?;
        let mut ids: Vec<&str> = all.iter().map(|(_, i)| i.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        Ok(ids
            .into_iter()
            .map(|id| {
                let recs: Vec<_> = all
                    .iter()
                    .filter(|(_, i)| i.id == id)
                    .map(|(r, _)| r)
                    .collect();
                let info = &all.iter().find(|(_, i)| i.id == id).expect("listed").1;
                cri_image(info, &recs)
            })
            .collect())
    }
}

/// The credentials of a PullImage request: a token, user and password, or `auth`
/// (base64 `user:password`).
pub(crate) fn auth_of(a: Option<&cri::AuthConfig>) -> Result<Option<PullAuth>, Status> {
    use base64::Engine as _;
    let Some(a) = a else { return Ok(None) };
    if !a.identity_token.is_empty() {
        return Ok(Some(PullAuth {
            username: String::new(),
            secret: a.identity_token.clone(),
        }));
    }
    if !a.registry_token.is_empty() {
        return Ok(Some(PullAuth {
            username: String::new(),
            secret: a.registry_token.clone(),
        }));
    }
    if !a.username.is_empty() {
        return Ok(Some(PullAuth {
            username: a.username.clone(),
            secret: a.password.clone(),
        }));
    }
    if !a.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| Status::invalid_argument("auth.auth: not base64"))?;
        let s =
            String::from_utf8(raw).map_err(|_| Status::invalid_argument("auth.auth: not UTF-8"))?;
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth.auth: want base64 of user:password"))?;
        return Ok(Some(PullAuth {
            username: u.to_string(),
            secret: p.to_string(),
        }));
    }
    Ok(None)
}

type Stream2<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Svc for ImageService {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let images = self.list(req.into_inner().filter.as_ref()).await?;
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    type StreamImagesStream = Stream2<cri::StreamImagesResponse>;
    async fn stream_images(
        &self,
        req: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.list(req.into_inner().filter.as_ref()).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(
            cri::StreamImagesResponse { images },
        )]))))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let r = req.into_inner();
        let reference = image_ref(r.image.as_ref());
        // A missing image is an empty answer, not an error (the kubelet pulls on that).
        let image = self.find(&reference).await?;
        let info = match &image {
            Some(i) => crate::verbose_info(
                r.verbose,
                "info",
                || serde_json::json!({"id": i.id, "size": i.size}),
            ),
            None => Default::default(),
        };
        Ok(Response::new(cri::ImageStatusResponse { image, info }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let r = req.into_inner();
        let reference = image_ref(r.image.as_ref());
        if reference.is_empty() {
            return Err(Status::invalid_argument("image.image: must be set"));
        }
        let name = berth_image::ImageRef::parse(&reference)
            .map_err(|e| Status::invalid_argument(format!("image.image: {reference:?}: {e}")))?
            .to_string();
        let auth = auth_of(r.auth.as_ref())?;
        let img = self
            .inner
            .host
            .pull(NAMESPACE, &name, &self.inner.cfg.snapshotter, auth)
            .await?;
        let target = img.target.clone().unwrap_or_default();
        let pinned = img
            .labels
            .get(image::LABEL_PINNED)
            .is_some_and(|v| v == "pinned");
        let info = image::add_cri_records(
            &self.inner.api,
            &self.inner.images,
            &img.name,
            &target,
            pinned,
        )
        .await?;
        Ok(Response::new(cri::PullImageResponse { image_ref: info.id }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let reference = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        // A missing image is already removed.
        let Some(rec) = image::get_record(&self.inner.api, &self.inner.images, &reference).await?
        else {
            return Ok(Response::new(cri::RemoveImageResponse {}));
        };
        let info = self
            .inner
            .images
            .resolve(&self.inner.api, &rec.target.unwrap_or_default())
            .await?;
        image::remove_all(&self.inner.api, &self.inner.images, &info.id).await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let dir = self.inner.dirs.image_fs.clone();
        let (bytes, inodes) = tokio::task::spawn_blocking(move || usage(&dir))
            .await
            .map_err(|e| Status::internal(format!("image fs usage: {e}")))?;
        let fs = cri::FilesystemUsage {
            timestamp: crate::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.inner.dirs.image_fs.to_string_lossy().into_owned(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        }))
    }
}

/// Bytes (allocated blocks) and inodes under `dir`, each hard-linked inode once, not crossing
/// into other file systems (the mounted rootfs of running containers).
pub(crate) fn usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = top.dev();
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if seen.insert(m.ino()) {
                bytes += m.blocks() * 512;
                inodes += 1;
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_forms() {
        let a = |f: fn(&mut cri::AuthConfig)| {
            let mut c = cri::AuthConfig::default();
            f(&mut c);
            auth_of(Some(&c))
        };
        let u = a(|c| {
            c.username = "u".into();
            c.password = "p".into();
        })
        .unwrap()
        .unwrap();
        assert_eq!((u.username.as_str(), u.secret.as_str()), ("u", "p"));
        let b = a(|c| c.auth = "dTpw".into()).unwrap().unwrap();
        assert_eq!((b.username.as_str(), b.secret.as_str()), ("u", "p"));
        let t = a(|c| c.identity_token = "tok".into()).unwrap().unwrap();
        assert_eq!((t.username.as_str(), t.secret.as_str()), ("", "tok"));
        assert!(a(|c| c.auth = "!!".into()).is_err());
        assert!(a(|_| {}).unwrap().is_none());
        assert!(auth_of(None).unwrap().is_none());
    }

    #[test]
    fn usage_counts_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 10000]).unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let (bytes, inodes) = usage(d.path());
        assert_eq!(inodes, 2);
        assert!(bytes >= 10000);
    }
}
