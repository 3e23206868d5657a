//! Media types, annotation keys, and the few JSON shapes this crate reads and writes.
//!
//! Reading is deliberately lenient: only the fields that link a document to its children are
//! parsed (unknown fields are ignored), so any OCI or Docker schema2 index or manifest walks.

use std::collections::BTreeMap;

use berth_content::Digest;
use serde::{Deserialize, Serialize};

use crate::{Descriptor, ImageError};

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub(crate) const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// containerd's annotation holding an image's full name on an index entry.
pub(crate) const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation holding an index entry's reference (by convention, the tag).
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The content of `oci-layout`, the only layout version there is.
pub(crate) const LAYOUT_VERSION: &str = "1.0.0";

/// What a blob is, as far as walking an image goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Lists manifests (an OCI index or a Docker manifest list).
    Index,
    /// Names a config and layers.
    Manifest,
    /// Has no children (config, layer, or anything unknown).
    Leaf,
}

impl Kind {
    pub(crate) fn of(media_type: &str) -> Kind {
        match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Kind::Index,
            OCI_MANIFEST | DOCKER_MANIFEST => Kind::Manifest,
            _ => Kind::Leaf,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Index => "index",
            Kind::Manifest => "manifest",
            Kind::Leaf => "blob",
        }
    }
}

/// A descriptor as found in JSON, before its digest and size are checked.
#[derive(Debug, Deserialize)]
pub(crate) struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
}

/// The part of an OCI platform that decides whether it is this host's.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    /// Whether an image for this platform runs on this host (OS and architecture, as containerd
    /// normalises them; variants are not compared).
    pub(crate) fn is_host(&self) -> bool {
        let os = self.os.as_deref().unwrap_or_default();
        let arch = normalize_arch(self.architecture.as_deref().unwrap_or_default());
        os == host_os() && arch == normalize_arch(std::env::consts::ARCH)
    }
}

fn host_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        os => os,
    }
}

/// Maps Rust's and uname's architecture spellings onto GOARCH, which images use.
fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i386" | "i686" => "386",
        "armhf" | "armel" => "arm",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// An entry of an index or a manifest's config or layer, checked.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) desc: Descriptor,
    pub(crate) platform: Option<Platform>,
}

impl Entry {
    /// Whether a walk must find this entry: anything but an index child for another platform.
    pub(crate) fn is_for_host(&self) -> bool {
        self.platform.as_ref().is_none_or(Platform::is_host)
    }
}

impl RawDescriptor {
    /// Checks the digest and size; `what` names the document it came from, for the error.
    pub(crate) fn check(self, what: &str) -> Result<Entry, ImageError> {
        let Some(digest) = self.digest else {
            return Err(ImageError::InvalidArchive(format!(
                "{what}: descriptor without a digest"
            )));
        };
        let digest = Digest::parse(&digest).map_err(|_| {
            ImageError::InvalidArchive(format!("{what}: invalid digest {}", shorten(&digest)))
        })?;
        let size = match self.size {
            Some(size) if size >= 0 => size,
            _ => {
                return Err(ImageError::InvalidArchive(format!(
                    "{what}: descriptor of {digest} has no valid size"
                )));
            }
        };
        Ok(Entry {
            desc: Descriptor {
                media_type: self.media_type.unwrap_or_default(),
                digest,
                size,
                annotations: self.annotations.unwrap_or_default(),
            },
            platform: self.platform,
        })
    }
}

/// The fields of an index or manifest that point at other blobs.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Links {
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
}

impl Links {
    /// Parses an index or manifest; `what` names it in errors.
    pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<Links, ImageError> {
        serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            what: what.to_string(),
            source,
        })
    }

    /// The manifests an index lists.
    pub(crate) fn manifests(self, what: &str) -> Result<Vec<Entry>, ImageError> {
        let raw = self.manifests.unwrap_or_default();
        raw.into_iter().map(|d| d.check(what)).collect()
    }

    /// The config and layers a manifest names.
    pub(crate) fn config_and_layers(self, what: &str) -> Result<Vec<Entry>, ImageError> {
        let Some(config) = self.config else {
            return Err(ImageError::InvalidArchive(format!(
                "{what}: manifest without a config"
            )));
        };
        let mut out = vec![config.check(what)?];
        for layer in self.layers.unwrap_or_default() {
            out.push(layer.check(what)?);
        }
        Ok(out)
    }

    /// The children of a blob of `kind`.
    pub(crate) fn children(self, kind: Kind, what: &str) -> Result<Vec<Entry>, ImageError> {
        match kind {
            Kind::Index => self.manifests(what),
            Kind::Manifest => self.config_and_layers(what),
            Kind::Leaf => Ok(Vec::new()),
        }
    }
}

/// A descriptor as written, fields in the order Go's image-spec types marshal them.
#[derive(Debug, Serialize)]
pub(crate) struct OutDescriptor<'a> {
    #[serde(rename = "mediaType")]
    pub(crate) media_type: &'a str,
    pub(crate) digest: &'a str,
    pub(crate) size: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) annotations: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a Descriptor> for OutDescriptor<'a> {
    fn from(d: &'a Descriptor) -> Self {
        OutDescriptor {
            media_type: &d.media_type,
            digest: d.digest.as_str(),
            size: d.size,
            annotations: &d.annotations,
        }
    }
}

/// An OCI index as written.
#[derive(Debug, Serialize)]
pub(crate) struct OutIndex<'a> {
    #[serde(rename = "schemaVersion")]
    pub(crate) schema_version: u32,
    #[serde(rename = "mediaType")]
    pub(crate) media_type: &'a str,
    pub(crate) manifests: Vec<OutDescriptor<'a>>,
}

impl<'a> OutIndex<'a> {
    pub(crate) fn new(manifests: impl IntoIterator<Item = &'a Descriptor>) -> Self {
        OutIndex {
            schema_version: 2,
            media_type: OCI_INDEX,
            manifests: manifests.into_iter().map(OutDescriptor::from).collect(),
        }
    }

    pub(crate) fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings, integers and string maps always serialise")
    }
}

/// Makes a message built from hostile bytes fit to print: control characters escaped, and cut
/// to a reasonable length.
pub(crate) fn printable(s: &str) -> String {
    const MAX: usize = 300;
    let mut out = String::new();
    for c in s.chars() {
        if out.len() >= MAX {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Cuts hostile strings down to a size fit for an error message, quoted and escaped.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 120;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &s[..end])
}

/// A platform an image may be for: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    /// GOOS spelling (`linux`).
    pub os: String,
    /// GOARCH spelling (`amd64`, `arm64`).
    pub architecture: String,
    /// Architecture variant (`v7`, `v8`), empty if none.
    pub variant: String,
}

impl PlatformSpec {
    /// This host's platform.
    pub fn host() -> PlatformSpec {
        let architecture = normalize_arch(std::env::consts::ARCH).to_string();
        let variant = match architecture.as_str() {
            "arm64" => "v8",
            _ => "",
        };
        PlatformSpec {
            os: host_os().to_string(),
            architecture,
            variant: variant.to_string(),
        }
    }

    /// Parses `os[/arch[/variant]]` (also `arch` alone, for this host's OS).
    pub fn parse(s: &str) -> Result<PlatformSpec, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || format!("invalid platform {s:?}: want os/arch[/variant]");
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        }) {
            return Err(bad());
        }
        let (os, arch, variant) = match parts.as_slice() {
            [one] if *one == host_os() => (one.to_string(), PlatformSpec::host().architecture, ""),
            [arch] => (host_os().to_string(), arch.to_string(), ""),
            [os, arch] => (os.to_string(), arch.to_string(), ""),
            [os, arch, variant] => (os.to_string(), arch.to_string(), *variant),
            _ => return Err(bad()),
        };
        Ok(PlatformSpec {
            os: os.to_lowercase(),
            architecture: normalize_arch(&arch.to_lowercase()).to_string(),
            variant: variant.to_lowercase(),
        })
    }

    /// Whether an image built for `p` runs here. The variant must match when both sides name
    /// one (`arm64` `v8` is the same as no variant).
    pub(crate) fn matches(&self, p: &Platform) -> bool {
        let os = p.os.as_deref().unwrap_or_default();
        let arch = normalize_arch(p.architecture.as_deref().unwrap_or_default());
        let norm = |arch: &str, v: &str| -> String {
            if arch == "arm64" && v == "v8" {
                String::new()
            } else {
                v.to_string()
            }
        };
        let theirs = norm(arch, p.variant.as_deref().unwrap_or_default());
        let ours = norm(&self.architecture, &self.variant);
        os == self.os
            && arch == self.architecture
            && (theirs.is_empty() || ours.is_empty() || theirs == ours)
    }
}

impl std::fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// Picks the manifest for `want` from an index's entries: the first that matches, preferring
/// one whose variant is exactly the one asked for.
pub fn select_manifest(
    index: &[u8],
    want: &PlatformSpec,
) -> Result<Option<Descriptor>, ImageError> {
    let entries = Links::parse(index, "index")?.manifests("index")?;
    let exact = entries.iter().find(|e| {
        e.platform.as_ref().is_some_and(|p| {
            want.matches(p) && p.variant.as_deref().unwrap_or_default() == want.variant
        })
    });
    let any = entries
        .iter()
        .find(|e| e.platform.as_ref().is_some_and(|p| want.matches(p)));
    Ok(exact.or(any).map(|e| e.desc.clone()))
}

/// The config and layer descriptors of a manifest.
pub fn manifest_parts(manifest: &[u8]) -> Result<(Descriptor, Vec<Descriptor>), ImageError> {
    let mut all = Links::parse(manifest, "manifest")?.config_and_layers("manifest")?;
    let config = all.remove(0).desc;
    Ok((config, all.into_iter().map(|e| e.desc).collect()))
}

/// Whether a media type is an index (OCI or Docker list).
pub fn is_index(media_type: &str) -> bool {
    Kind::of(media_type) == Kind::Index
}

/// Whether a media type is a manifest (OCI or Docker schema2).
pub fn is_manifest(media_type: &str) -> bool {
    Kind::of(media_type) == Kind::Manifest
}

/// The diff ids (`rootfs.diff_ids`) of an image config.
pub fn config_diff_ids(config: &[u8]) -> Result<Vec<Digest>, ImageError> {
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Config {
        rootfs: Option<RootFs>,
    }
    let c: Config = serde_json::from_slice(config).map_err(|source| ImageError::Json {
        what: "image config".into(),
        source,
    })?;
    c.rootfs
        .map(|r| r.diff_ids)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            Digest::parse(d).map_err(|_| {
                ImageError::InvalidArchive(format!("image config: invalid diff id {}", shorten(d)))
            })
        })
        .collect()
}

/// containerd's chain ids: `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The manifests an index lists.
pub fn index_manifests(index: &[u8]) -> Result<Vec<Descriptor>, ImageError> {
    Ok(Links::parse(index, "index")?
        .manifests("index")?
        .into_iter()
        .map(|e| e.desc)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str, &str)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut p = serde_json::json!({"os": os, "architecture": arch});
                if !variant.is_empty() {
                    p["variant"] = serde_json::json!(variant);
                }
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": Digest::of(format!("m{i}").as_bytes()).to_string(),
                    "size": 10 + i,
                    "platform": p,
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
            .unwrap()
    }

    fn pick(idx: &[u8], want: &str) -> Option<i64> {
        select_manifest(idx, &PlatformSpec::parse(want).unwrap())
            .unwrap()
            .map(|d| d.size - 10)
    }

    #[test]
    fn platforms_parse_and_match_like_containerd() {
        let idx = index(&[
            ("linux", "arm", "v6"),
            ("linux", "arm", "v7"),
            ("linux", "arm64", "v8"),
            ("linux", "amd64", ""),
            ("windows", "amd64", ""),
            ("linux", "s390x", ""),
        ]);
        assert_eq!(pick(&idx, "linux/amd64"), Some(3));
        assert_eq!(pick(&idx, "linux/arm/v7"), Some(1));
        assert_eq!(pick(&idx, "linux/arm64"), Some(2));
        assert_eq!(pick(&idx, "linux/aarch64"), Some(2));
        assert_eq!(pick(&idx, "linux/arm64/v8"), Some(2));
        assert_eq!(pick(&idx, "windows/amd64"), Some(4));
        assert_eq!(pick(&idx, "linux/riscv64"), None);
        assert_eq!(pick(&idx, "s390x"), Some(5));
        let host = PlatformSpec::host();
        assert_eq!(host.os, "linux");
        assert!(PlatformSpec::parse("linux/").is_err());
        assert!(PlatformSpec::parse("a/b/c/d").is_err());
        assert!(PlatformSpec::parse("linux/am d64").is_err());
        assert_eq!(
            PlatformSpec::parse("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
    }

    #[test]
    fn chain_ids_follow_containerd() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn configs_give_diff_ids_or_clear_errors() {
        let d = Digest::of(b"x");
        let cfg = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{d}"]}}}}"#);
        assert_eq!(config_diff_ids(cfg.as_bytes()).unwrap(), vec![d]);
        assert!(config_diff_ids(br#"{"rootfs":{"diff_ids":["nope"]}}"#).is_err());
        assert!(config_diff_ids(b"garbage").is_err());
        assert!(config_diff_ids(b"{}").unwrap().is_empty());
    }
}
