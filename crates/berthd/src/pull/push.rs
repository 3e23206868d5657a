//! Pushes: an image's blobs from the content store to a registry, manifests last.

use super::*;

impl Puller {
    /// Pushes image `name` of `ns` to `dest` (blobs the registry lacks, then manifests, then
    /// the tag), with the same hosts, credentials and progress as pulls.
    pub(crate) async fn push(
        &self,
        ns: &str,
        name: &str,
        dest: &ImageRef,
        session: &Session,
        progress: ProgressSink,
    ) -> Result<(), PullError> {
        let img = self.store.get_image(ns, name).map_err(PullError::Store)?;
        let target = ImgDesc {
            media_type: img.target.media_type.clone(),
            digest: Digest::parse(&img.target.digest)
                .map_err(|e| PullError::BadContent(format!("image {name}: target digest: {e}")))?,
            size: img.target.size,
            annotations: Default::default(),
        };
        let repo = self
            .registry
            .repository(dest, session)
            .map_err(PullError::Registry)?;
        let tag = dest.tag.clone();
        let manifests = if is_index(&target.media_type) {
            let index = self.read_small(ns, &target.digest).await?;
            // Only the manifests this store holds (a pull keeps one platform).
            let mut present = Vec::new();
            for m in berth_image::media::index_manifests(&index)
                .map_err(|e| PullError::Image("index".to_string(), e))?
            {
                if self.store.content_info(ns, &m.digest).is_ok() {
                    present.push(m);
                }
            }
            if present.is_empty() {
                return Err(PullError::Incomplete(format!(
                    "image {name}: no manifest of its index is in the content store"
                )));
            }
            present
        } else {
            vec![target.clone()]
        };
        for m in &manifests {
            let bytes = self.read_small(ns, &m.digest).await?;
            let (config, layers) =
                manifest_parts(&bytes).map_err(|e| PullError::Image("manifest".to_string(), e))?;
            for blob in std::iter::once(&config).chain(layers.iter()) {
                self.push_blob(ns, &repo, blob, &progress).await?;
            }
            // Children first; the manifest by digest unless it is the tagged target itself.
            if m.digest != target.digest || tag.is_none() {
                repo.push_manifest(m, bytes, None)
                    .await
                    .map_err(PullError::Registry)?;
            }
        }
        let top = self.read_small(ns, &target.digest).await?;
        repo.push_manifest(&target, top, tag.as_deref())
            .await
            .map_err(PullError::Registry)?;
        progress.send("pushed", &dest.to_string(), 0, 0, Some(&target));
        Ok(())
    }

    async fn push_blob(
        &self,
        ns: &str,
        repo: &Repository,
        desc: &ImgDesc,
        progress: &ProgressSink,
    ) -> Result<(), PullError> {
        let name = desc.digest.to_string();
        if repo.has_blob(desc).await.map_err(PullError::Registry)? {
            progress.send("exists", &name, desc.size, desc.size, Some(desc));
            return Ok(());
        }
        let reader = self
            .store
            .content_reader(ns, &desc.digest)
            .map_err(PullError::Store)?;
        progress.send("uploading", &name, 0, desc.size, Some(desc));
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        tokio::task::spawn_blocking(move || {
            let mut off = 0u64;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                match reader.read_at(off, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        off += n as u64;
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                }
            }
        });
        let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        repo.push_blob_body(desc, body)
            .await
            .map_err(PullError::Registry)?;
        progress.send("uploaded", &name, desc.size, desc.size, Some(desc));
        Ok(())
    }
}
