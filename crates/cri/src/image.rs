//! CRI images over the image store: an image is identified by its config digest (its id), and
//! named by tags (`repo:tag`), repo digests (`repo@sha256:...`) and its id, each a record of
//! the `k8s.io` namespace pointing at the same target, as containerd's CRI keeps them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_api::containerd::services::images::v1 as imgs;
use berth_api::containerd::types::Descriptor;
use berth_api::runtime::v1 as cri;
use berth_image::ImageRef;
use berth_image::media::{
    PlatformSpec, chain_ids, config_diff_ids, is_index, manifest_parts, select_manifest,
};
use serde_json::Value;
use tonic::Status;

use crate::api::Api;

/// containerd's CRI label on the records it manages.
pub(crate) const LABEL_MANAGED: &str = "io.cri-containerd.image";
/// Pinned images (the sandbox image) are never removed by the kubelet's image GC.
pub(crate) const LABEL_PINNED: &str = "io.cri-containerd.pinned";

/// What one image target resolves to.
#[derive(Debug, Clone)]
pub(crate) struct ImageInfo {
    /// The config digest: the CRI image id.
    pub(crate) id: String,
    /// Bytes of the manifest, config and layers (and index).
    pub(crate) size: u64,
    /// The image config's `config` object (Entrypoint, Cmd, Env, User, StopSignal, ...).
    pub(crate) config: Value,
    /// The top layer's chain id: the parent of a container's snapshot.
    pub(crate) chain_id: String,
}

/// Resolved targets, by target digest: a target's blobs never change.
#[derive(Debug, Default, Clone)]
pub(crate) struct InfoCache(Arc<Mutex<HashMap<String, ImageInfo>>>);

impl InfoCache {
    pub(crate) async fn resolve(
        &self,
        api: &Api,
        target: &Descriptor,
    ) -> Result<ImageInfo, Status> {
        if let Some(i) = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target.digest)
        {
            return Ok(i.clone());
        }
        let mut size = target.size.max(0) as u64;
        let mut manifest = target.digest.clone();
        if is_index(&target.media_type) {
            let index = api.read_blob(&manifest).await?;
            let d = select_manifest(&index, &PlatformSpec::host())
                .map_err(|e| Status::failed_precondition(format!("image index {manifest}: {e}")))?
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "image index {manifest}: no manifest for this platform"
                    ))
                })?;
            manifest = d.digest.to_string();
            size += d.size.max(0) as u64;
        }
        let bytes = api.read_blob(&manifest).await?;
        let (config, layers) = manifest_parts(&bytes)
            .map_err(|e| Status::failed_precondition(format!("manifest {manifest}: {e}")))?;
        size +=
            config.size.max(0) as u64 + layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>();
        let cfg = api.read_blob(config.digest.as_str()).await?;
        let diff_ids = config_diff_ids(&cfg).map_err(|e| {
            Status::failed_precondition(format!("image config {}: {e}", config.digest))
        })?;
        let chain = chain_ids(&diff_ids);
        let json: Value = serde_json::from_slice(&cfg).map_err(|e| {
            Status::failed_precondition(format!("image config {}: {e}", config.digest))
        })?;
        let info = ImageInfo {
            id: config.digest.to_string(),
            size,
            config: json.get("config").cloned().unwrap_or(Value::Null),
            chain_id: chain.last().map(|c| c.to_string()).unwrap_or_default(),
        };
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target.digest.clone(), info.clone());
        Ok(info)
    }
}

/// The names a CRI image reference may be stored under: the id itself, or the normalised
/// reference.
pub(crate) fn candidate_names(reference: &str) -> Result<Vec<String>, Status> {
    if reference.is_empty() {
        return Err(Status::invalid_argument("image.image: must be set"));
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(vec![format!("sha256:{}", hex.to_ascii_lowercase())]);
    }
    let r = ImageRef::parse(reference)
        .map_err(|e| Status::invalid_argument(format!("image.image: {reference:?}: {e}")))?;
    Ok(vec![r.to_string()])
}

/// An image record by CRI reference. An image id also finds images that have no record named
/// by it (imported with `ctr -n k8s.io images import`, pulled by a containerd client): the
/// kubelet creates containers by the id ImageStatus gave it, as containerd's CRI allows.
pub(crate) async fn get_record(
    api: &Api,
    cache: &InfoCache,
    reference: &str,
) -> Result<Option<imgs::Image>, Status> {
    for name in candidate_names(reference)? {
        match api
            .images()
            .get(api.req(imgs::GetImageRequest { name: name.clone() }))
            .await
        {
            Ok(r) => return Ok(r.into_inner().image),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s),
        }
        if name.starts_with("sha256:") {
            let mut same: Vec<imgs::Image> = all(api, cache)
                .await?
                .into_iter()
                .filter(|(_, info)| info.id == name)
                .map(|(r, _)| r)
                .collect();
            same.sort_by(|a, b| a.name.cmp(&b.name));
            if let Some(r) = same.into_iter().next() {
                return Ok(Some(r));
            }
        }
    }
    Ok(None)
}

/// Every record and what it resolves to.
pub(crate) async fn all(
    api: &Api,
    cache: &InfoCache,
) -> Result<Vec<(imgs::Image, ImageInfo)>, Status> {
    let list = api
        .images()
        .list(api.req(imgs::ListImagesRequest { filters: vec![] }))
        .await?
        .into_inner()
        .images;
    let mut out = Vec::new();
    for img in list {
        let Some(t) = img.target.clone() else {
            continue;
        };
        match cache.resolve(api, &t).await {
            Ok(info) => out.push((img, info)),
            Err(e) => tracing::debug!(image = %img.name, error = %e, "image not usable by the CRI"),
        }
    }
    Ok(out)
}

/// The CRI view of an image: every record of the id.
pub(crate) fn cri_image(info: &ImageInfo, records: &[&imgs::Image]) -> cri::Image {
    let mut tags = Vec::new();
    let mut digests = Vec::new();
    let mut pinned = false;
    for r in records {
        pinned |= r.labels.get(LABEL_PINNED).is_some_and(|v| v == "pinned");
        if r.name.starts_with("sha256:") {
            continue;
        }
        if r.name.contains('@') {
            digests.push(r.name.clone());
        } else {
            tags.push(r.name.clone());
            if let (Some((repo, _)), Some(t)) = (split_tag(&r.name), &r.target) {
                let d = format!("{repo}@{}", t.digest);
                if !digests.contains(&d) {
                    digests.push(d);
                }
            }
        }
    }
    tags.sort();
    tags.dedup();
    digests.sort();
    digests.dedup();
    let user = info
        .config
        .get("User")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let u = user.split(':').next().unwrap_or_default();
    let (uid, username) = match u.parse::<i64>() {
        Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
        Err(_) => (None, u.to_string()),
    };
    cri::Image {
        id: info.id.clone(),
        repo_tags: tags,
        repo_digests: digests,
        size: info.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: info.id.clone(),
            ..Default::default()
        }),
        pinned,
    }
}

fn split_tag(name: &str) -> Option<(&str, &str)> {
    let slash = name.rfind('/').unwrap_or(0);
    let colon = name.rfind(':')?;
    (colon > slash).then(|| (&name[..colon], &name[colon + 1..]))
}

/// Creates or updates the record `name` → `target`.
pub(crate) async fn put_record(
    api: &Api,
    name: &str,
    target: &Descriptor,
    labels: HashMap<String, String>,
) -> Result<(), Status> {
    let image = imgs::Image {
        name: name.to_string(),
        labels,
        target: Some(target.clone()),
        ..Default::default()
    };
    match api
        .images()
        .create(api.req(imgs::CreateImageRequest {
            image: Some(image.clone()),
            ..Default::default()
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            api.images()
                .update(api.req(imgs::UpdateImageRequest {
                    image: Some(image),
                    ..Default::default()
                }))
                .await?;
            Ok(())
        }
        Err(s) => Err(s),
    }
}

/// After a pull of `name`: the repo-digest and id records, as containerd's CRI makes them.
pub(crate) async fn add_cri_records(
    api: &Api,
    cache: &InfoCache,
    name: &str,
    target: &Descriptor,
    pinned: bool,
) -> Result<ImageInfo, Status> {
    let info = cache.resolve(api, target).await?;
    let mut labels = HashMap::from([(LABEL_MANAGED.to_string(), "managed".to_string())]);
    if pinned {
        labels.insert(LABEL_PINNED.into(), "pinned".into());
    }
    put_record(api, name, target, labels.clone()).await?;
    if let Ok(r) = ImageRef::parse(name) {
        put_record(
            api,
            &format!("{}@{}", r.repository(), target.digest),
            target,
            labels.clone(),
        )
        .await?;
    }
    put_record(api, &info.id, target, labels).await?;
    Ok(info)
}

/// Removes every record of the image `info.id`.
pub(crate) async fn remove_all(api: &Api, cache: &InfoCache, id: &str) -> Result<(), Status> {
    for (img, info) in all(api, cache).await? {
        if info.id != id {
            continue;
        }
        match api
            .images()
            .delete(api.req(imgs::DeleteImageRequest {
                name: img.name.clone(),
                sync: false,
                ..Default::default()
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_ids() {
        let id = "a".repeat(64);
        assert_eq!(candidate_names(&id).unwrap(), vec![format!("sha256:{id}")]);
        assert_eq!(
            candidate_names(&format!("sha256:{id}")).unwrap(),
            vec![format!("sha256:{id}")]
        );
        assert_eq!(
            candidate_names("busybox").unwrap(),
            vec!["docker.io/library/busybox:latest".to_string()]
        );
        assert_eq!(
            candidate_names("").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            candidate_names("Bad Name").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn tags_split_after_the_last_slash() {
        assert_eq!(split_tag("h:5000/a/b:1"), Some(("h:5000/a/b", "1")));
        assert_eq!(split_tag("h:5000/a/b"), None);
    }
}
