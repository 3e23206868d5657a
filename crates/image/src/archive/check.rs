//! Before anything is named: every blob the archive's images need must be in the archive or
//! already stored.

use std::collections::HashSet;

use super::BlobSink;
use super::io::Captured;
use super::scan::{JSON_BUDGET, JSON_LIMIT, Scan};
use crate::ImageError;
use crate::media::{Entry, Kind, Links};

/// Walks from the archive's top-level manifests through indexes and manifests to configs and
/// layers. What an index lists for another platform may be missing (containerd imports
/// partial multi-platform archives), and is not walked. A blob that is not in the archive but
/// already stored is taken as complete: its children were checked when it was stored.
pub(super) fn complete(
    scan: &Scan,
    sink: &mut dyn BlobSink,
    roots: &[Entry],
) -> Result<(), ImageError> {
    let mut stack: Vec<Entry> = roots.iter().filter(|e| e.is_for_host()).cloned().collect();
    let mut seen = HashSet::new();
    while let Some(Entry { desc, .. }) = stack.pop() {
        if !seen.insert(desc.digest.clone()) {
            continue;
        }
        let kind = Kind::of(&desc.media_type);
        let what = format!("{} {}", kind.name(), desc.digest);
        let Some(blob) = scan.blobs.get(&desc.digest) else {
            if sink.has(&desc.digest) {
                continue;
            }
            return Err(ImageError::InvalidArchive(format!(
                "{what} is missing from the archive"
            )));
        };
        if u64::try_from(desc.size) != Ok(blob.size) {
            return Err(ImageError::InvalidArchive(format!(
                "{what} has {} bytes, its descriptor says {}",
                blob.size, desc.size
            )));
        }
        if kind == Kind::Leaf {
            continue;
        }
        let bytes = match &blob.json {
            Captured::Json(bytes) => bytes,
            Captured::TooLarge if blob.size > JSON_LIMIT => {
                return Err(ImageError::TooLarge {
                    what,
                    limit: JSON_LIMIT,
                });
            }
            Captured::TooLarge => {
                return Err(ImageError::TooLarge {
                    what: "JSON documents of the archive".into(),
                    limit: JSON_BUDGET,
                });
            }
            Captured::NotJson | Captured::Off => {
                return Err(ImageError::InvalidArchive(format!("{what} is not JSON")));
            }
        };
        let children = Links::parse(bytes, &what)?.children(kind, &what)?;
        stack.extend(children.into_iter().filter(Entry::is_for_host));
    }
    Ok(())
}
