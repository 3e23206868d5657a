//! `docker save` archives: `manifest.json` names each image's config and layers by path, and
//! its tags. A Docker schema2 manifest is built and stored for each image, as containerd does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BlobSink;
use super::import::TopLevel;
use super::scan::{File, Scan};
use crate::media::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST, Entry, OutDescriptor, OutIndex, shorten,
};
use crate::reference::{normalize, oci_ref_name};
use crate::{Descriptor, ImageError};

/// How many symbolic links a path may go through (old `docker save` links repeated layers).
const MAX_LINKS: usize = 8;

/// One image of `manifest.json`.
#[derive(Debug, Deserialize)]
struct Image {
    #[serde(rename = "Config", default)]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Option<Vec<String>>,
}

/// A Docker schema2 manifest, fields in the order containerd writes them (so the digest of a
/// manifest built here matches the one containerd builds from the same archive).
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: OutDescriptor<'a>,
    layers: Vec<OutDescriptor<'a>>,
}

/// Builds and stores a manifest per image of `manifest.json`; lists one entry per tag (with
/// containerd's name annotations), or one unnamed entry for an image without tags.
pub(super) fn top_level(
    scan: &Scan,
    manifest_json: &[u8],
    sink: &mut dyn BlobSink,
) -> Result<TopLevel, ImageError> {
    let images: Option<Vec<Image>> =
        serde_json::from_slice(manifest_json).map_err(|source| ImageError::Json {
            what: "manifest.json".into(),
            source,
        })?;
    let Some(images) = images else {
        return Err(ImageError::InvalidArchive("manifest.json is null".into()));
    };
    let mut entries = Vec::new();
    for image in images {
        let manifest = store_manifest(scan, &image, sink)?;
        let tags = image.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            entries.push(Entry {
                desc: manifest.clone(),
                platform: None,
            });
        }
        for tag in tags {
            let name = normalize(&tag).map_err(|why| {
                ImageError::InvalidArchive(format!("manifest.json: tag {}: {why}", shorten(&tag)))
            })?;
            let mut desc = manifest.clone();
            if let Some(ref_name) = oci_ref_name(&name) {
                desc.annotations
                    .insert(ANNOTATION_REF_NAME.to_string(), ref_name);
            }
            desc.annotations
                .insert(ANNOTATION_IMAGE_NAME.to_string(), name);
            entries.push(Entry {
                desc,
                platform: None,
            });
        }
    }
    let index = OutIndex::new(entries.iter().map(|e| &e.desc)).to_vec();
    Ok(TopLevel { entries, index })
}

fn store_manifest(
    scan: &Scan,
    image: &Image,
    sink: &mut dyn BlobSink,
) -> Result<Descriptor, ImageError> {
    let config = find(scan, &image.config, "image config")?;
    let config = descriptor(DOCKER_CONFIG, config)?;
    let mut layers = Vec::new();
    for path in image.layers.as_deref().unwrap_or_default() {
        let layer = find(scan, path, "layer")?;
        let media_type = if layer.gzip {
            DOCKER_LAYER_GZIP
        } else {
            DOCKER_LAYER
        };
        layers.push(descriptor(media_type, layer)?);
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: DOCKER_MANIFEST,
        config: OutDescriptor::from(&config),
        layers: layers.iter().map(OutDescriptor::from).collect(),
    };
    let bytes = serde_json::to_vec(&manifest).expect("strings and integers always serialise");
    let (digest, size) = sink.put(None, &mut bytes.as_slice())?;
    if size != bytes.len() as u64 {
        return Err(ImageError::InvalidArchive(format!(
            "manifest {digest}: {size} of {} bytes stored",
            bytes.len()
        )));
    }
    Ok(Descriptor {
        media_type: DOCKER_MANIFEST.to_string(),
        digest,
        size: bytes.len() as i64,
        annotations: BTreeMap::new(),
    })
}

/// The file stored for `path` (as `manifest.json` spells it), following symbolic links.
fn find<'s>(scan: &'s Scan, path: &str, what: &str) -> Result<&'s File, ImageError> {
    let not_found = || ImageError::InvalidArchive(format!("{what} {} not found", shorten(path)));
    let mut at = clean(path).ok_or_else(not_found)?;
    for _ in 0..=MAX_LINKS {
        if let Some(file) = scan.files.get(&at) {
            return Ok(file);
        }
        at = scan.symlinks.get(&at).ok_or_else(not_found)?.clone();
    }
    Err(not_found())
}

/// `path` without `.` and empty components; `None` if it climbs with `..` or is absolute.
fn clean(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

fn descriptor(media_type: &str, file: &File) -> Result<Descriptor, ImageError> {
    let size = i64::try_from(file.size)
        .map_err(|_| ImageError::InvalidArchive(format!("{}: size out of range", file.digest)))?;
    Ok(Descriptor {
        media_type: media_type.to_string(),
        digest: file.digest.clone(),
        size,
        annotations: BTreeMap::new(),
    })
}
