//! `export`: images out, as an OCI image-layout tarball — what `ctr images export` writes, and
//! what `skopeo copy oci-archive:` and `ctr images import` read.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use berth_content::Digest;
use tar::{EntryType, Header};

use super::io::{Fuse, Hashing};
use super::scan::JSON_LIMIT;
use super::{BlobSource, ExportImage, ExportOptions};
use crate::media::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Kind, LAYOUT_VERSION, Links, OutIndex,
};
use crate::reference::oci_ref_name;
use crate::{Descriptor, ImageError};

/// Writes `images` and every blob they reach (index → manifests → config and layers) to `w` as
/// an OCI image-layout tarball: `oci-layout`, `index.json` with one entry per image (its
/// target, annotated with `io.containerd.image.name` and `org.opencontainers.image.ref.name`),
/// and `blobs/sha256/<hex>`, each blob once.
///
/// The output is deterministic: entries sorted by path, owner 0:0, mode 0644 (0755 for
/// directories), mtime 0. Blobs are streamed, and checked against their digests as they are.
/// Indexes and manifests are read first, so that a missing blob fails the export before
/// anything is written; a failure while blobs are being written leaves the output without its
/// end-of-archive marker, so it cannot pass for a whole archive.
pub fn export(
    w: impl Write,
    src: &dyn BlobSource,
    images: &[ExportImage],
    opts: &ExportOptions,
) -> Result<(), ImageError> {
    let mut blobs = BTreeMap::new();
    let mut manifests = Vec::with_capacity(images.len());
    for image in images {
        collect(src, &image.target, opts, &mut blobs)?;
        manifests.push(annotated(image));
    }
    let index = OutIndex::new(&manifests).to_vec();
    let layout = format!(r#"{{"imageLayoutVersion":"{LAYOUT_VERSION}"}}"#);

    let mut tar = tar::Builder::new(Fuse::new(w));
    match write_entries(&mut tar, src, &blobs, &index, layout.as_bytes()) {
        Ok(()) => {
            let mut w = tar.into_inner()?.into_inner();
            w.flush()?;
            Ok(())
        }
        Err(e) => {
            tar.get_mut().blow();
            Err(e)
        }
    }
}

/// The image's target, with its name in the annotations.
fn annotated(image: &ExportImage) -> Descriptor {
    let mut desc = image.target.clone();
    let annotations = &mut desc.annotations;
    annotations.insert(ANNOTATION_IMAGE_NAME.to_string(), image.name.clone());
    match oci_ref_name(&image.name) {
        Some(ref_name) => annotations.insert(ANNOTATION_REF_NAME.to_string(), ref_name),
        None => annotations.remove(ANNOTATION_REF_NAME),
    };
    desc
}

/// Adds every blob reachable from `target` to `blobs` (archive path → digest and size).
fn collect(
    src: &dyn BlobSource,
    target: &Descriptor,
    opts: &ExportOptions,
    blobs: &mut BTreeMap<String, (Digest, u64)>,
) -> Result<(), ImageError> {
    // Each descriptor with whether an index lists it (then, with `skip_missing`, it is
    // optional).
    let mut stack = vec![(target.clone(), false)];
    while let Some((desc, listed_by_index)) = stack.pop() {
        let path = blob_path(&desc.digest);
        if blobs.contains_key(&path) {
            continue;
        }
        let optional = listed_by_index && opts.skip_missing;
        let size = match src.size(&desc.digest) {
            Ok(size) => size,
            Err(e) if optional && e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        if u64::try_from(desc.size) != Ok(size) {
            return Err(ImageError::InvalidArchive(format!(
                "{}: the store holds {size} bytes, its descriptor says {}",
                desc.digest, desc.size
            )));
        }
        blobs.insert(path, (desc.digest.clone(), size));
        let kind = Kind::of(&desc.media_type);
        if kind == Kind::Leaf {
            continue;
        }
        let what = format!("{} {}", kind.name(), desc.digest);
        let bytes = read_json(src, &desc.digest, size, &what)?;
        let children = Links::parse(&bytes, &what)?.children(kind, &what)?;
        // As containerd's skip-missing: a manifest of another platform whose config or layers
        // are not all stored goes out alone.
        if optional && kind == Kind::Manifest && !all_stored(src, &children)? {
            continue;
        }
        let listed = kind == Kind::Index;
        stack.extend(children.into_iter().map(|child| (child.desc, listed)));
    }
    Ok(())
}

fn all_stored(src: &dyn BlobSource, entries: &[crate::media::Entry]) -> Result<bool, ImageError> {
    for entry in entries {
        match src.size(&entry.desc.digest) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads a whole index or manifest, checking its size cap and digest.
fn read_json(
    src: &dyn BlobSource,
    digest: &Digest,
    size: u64,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    if size > JSON_LIMIT {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            limit: JSON_LIMIT,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    src.open(digest)?.take(size + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != size {
        return Err(short_read(digest, bytes.len() as u64, size));
    }
    let actual = Digest::of(&bytes);
    if actual != *digest {
        return Err(ImageError::DigestMismatch {
            expected: digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

fn write_entries<W: Write>(
    tar: &mut tar::Builder<W>,
    src: &dyn BlobSource,
    blobs: &BTreeMap<String, (Digest, u64)>,
    index: &[u8],
    layout: &[u8],
) -> Result<(), ImageError> {
    tar.append(&header("blobs/", 0, EntryType::Directory)?, io::empty())?;
    let mut algorithm_dir = String::new();
    for (path, (digest, size)) in blobs {
        let dir = &path[..=path.rfind('/').unwrap_or_default()];
        if dir != algorithm_dir {
            algorithm_dir = dir.to_string();
            tar.append(&header(dir, 0, EntryType::Directory)?, io::empty())?;
        }
        let mut blob = Hashing::new(src.open(digest)?.take(*size));
        tar.append(&header(path, *size, EntryType::Regular)?, &mut blob)?;
        if blob.count != *size {
            return Err(short_read(digest, blob.count, *size));
        }
        let actual = blob.digest();
        if actual != *digest {
            return Err(ImageError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
    }
    tar.append(
        &header("index.json", index.len() as u64, EntryType::Regular)?,
        index,
    )?;
    tar.append(
        &header("oci-layout", layout.len() as u64, EntryType::Regular)?,
        layout,
    )?;
    Ok(())
}

fn header(path: &str, size: u64, kind: EntryType) -> io::Result<Header> {
    let mut header = Header::new_ustar();
    header.set_path(path)?;
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_mode(if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    Ok(header)
}

fn blob_path(digest: &Digest) -> String {
    let algorithm = digest.as_str().split(':').next().unwrap_or_default();
    format!("blobs/{algorithm}/{}", digest.hex())
}

fn short_read(digest: &Digest, got: u64, size: u64) -> ImageError {
    ImageError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{digest}: read {got} of {size} bytes"),
    ))
}
