//! `runtime.v1.ImageService`: pulls through the daemon's pull engine (hosts.toml mirrors,
//! credentials, streaming unpack), and the image store seen as CRI images.

use std::sync::Arc;

use berth_api::runtime::v1 as cri;
use tonic::Status;

use crate::PullAuth;
use crate::api::NAMESPACE;
use crate::image::{self, cri_image};
use crate::image_ref;
use crate::rpcs::once;
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
}

impl Inner {
    /// The CRI image `reference` names, with every record of its id.
    async fn find_image(&self, reference: &str) -> Result<Option<cri::Image>, Status> {
        let Some(rec) = image::get_record(&self.api, &self.images, reference).await? else {
            return Ok(None);
        };
        let target = rec.target.clone().unwrap_or_default();
        let info = self.images.resolve(&self.api, &target).await?;
        let all = image::all(&self.api, &self.images).await?;
        let same: Vec<_> = all
            .iter()
            .filter(|(_, i)| i.id == info.id)
            .map(|(r, _)| r)
            .collect();
        Ok(Some(cri_image(&info, &same)))
    }

    /// The CRI images `filter` selects (by reference), or all.
    async fn list_images(
        &self,
        filter: Option<&cri::ImageFilter>,
    ) -> Result<Vec<cri::Image>, Status> {
        if let Some(r) = filter
            .and_then(|f| f.image.as_ref())
            .map(|i| i.image.as_str())
            .filter(|s| !s.is_empty())
        {
            return Ok(self.find_image(r).await?.into_iter().collect());
        }
        let all = image::all(&self.api, &self.images).await?;
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

impl Inner {
    /// ImageStatus: a missing image is an empty answer, not an error (the kubelet pulls on
    /// that).
    async fn image_status(
        &self,
        r: cri::ImageStatusRequest,
    ) -> Result<cri::ImageStatusResponse, Status> {
        let image = self.find_image(&image_ref(r.image.as_ref())).await?;
        let info = match &image {
            Some(i) => crate::verbose_info(
                r.verbose,
                "info",
                || serde_json::json!({"id": i.id, "size": i.size}),
            ),
            None => Default::default(),
        };
        Ok(cri::ImageStatusResponse { image, info })
    }

    /// PullImage through the daemon's pull engine with the request's credentials; the image
    /// gets the CRI's records (its id and digest names).
    async fn pull_image(&self, r: cri::PullImageRequest) -> Result<cri::PullImageResponse, Status> {
        let reference = image_ref(r.image.as_ref());
        if reference.is_empty() {
            return Err(Status::invalid_argument("image.image: must be set"));
        }
        let name = berth_image::ImageRef::parse(&reference)
            .map_err(|e| Status::invalid_argument(format!("image.image: {reference:?}: {e}")))?
            .to_string();
        let auth = auth_of(r.auth.as_ref())?;
        let sn = &self.cfg.snapshotter;
        let img = self.host.pull(NAMESPACE, &name, sn, auth).await?;
        let target = img.target.clone().unwrap_or_default();
        let pinned = img
            .labels
            .get(image::LABEL_PINNED)
            .is_some_and(|v| v == "pinned");
        let info =
            image::add_cri_records(&self.api, &self.images, &img.name, &target, pinned).await?;
        Ok(cri::PullImageResponse { image_ref: info.id })
    }

    /// RemoveImage: every record of the image's id; a missing image is already removed.
    async fn remove_image(&self, r: cri::RemoveImageRequest) -> Result<(), Status> {
        let reference = image_ref(r.image.as_ref());
        let Some(rec) = image::get_record(&self.api, &self.images, &reference).await? else {
            return Ok(());
        };
        let target = rec.target.unwrap_or_default();
        let info = self.images.resolve(&self.api, &target).await?;
        image::remove_all(&self.api, &self.images, &info.id).await
    }

    /// ImageFsInfo: the use of the snapshotter's root (images' and containers' layers share
    /// it).
    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, Status> {
        let dir = self.dirs.image_fs.clone();
        let (bytes, inodes) = tokio::task::spawn_blocking(move || usage(&dir))
            .await
            .map_err(|e| Status::internal(format!("image fs usage: {e}")))?;
        let fs = cri::FilesystemUsage {
            timestamp: crate::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.dirs.image_fs.to_string_lossy().into_owned(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        })
    }
}

rpcs! {
    impl cri::image_service_server::ImageService, for ImageService;
    streams {
        StreamImagesStream = cri::StreamImagesResponse;
    }

    open list_images(ListImagesRequest) -> cri::ListImagesResponse = |core, r| {
        let images = core.list_images(r.filter.as_ref()).await?;
        Ok(cri::ListImagesResponse { images })
    }
    open stream_images(StreamImagesRequest) -> Self::StreamImagesStream = |core, r| {
        let images = core.list_images(r.filter.as_ref()).await?;
        Ok(once(cri::StreamImagesResponse { images }))
    }
    open image_status(ImageStatusRequest) -> cri::ImageStatusResponse = |core, r| {
        core.image_status(r).await
    }
    open pull_image(PullImageRequest) -> cri::PullImageResponse = |core, r| {
        core.pull_image(r).await
    }
    open remove_image(RemoveImageRequest) -> cri::RemoveImageResponse = |core, r| {
        core.remove_image(r).await?;
        Ok(cri::RemoveImageResponse {})
    }
    open image_fs_info(ImageFsInfoRequest) -> cri::ImageFsInfoResponse = |core, _r| {
        core.image_fs_info().await
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
