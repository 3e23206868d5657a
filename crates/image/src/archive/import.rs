//! `import`: an archive in, the images it holds out.

use std::collections::BTreeMap;
use std::io::Read;

use super::names::Names;
use super::{BlobSink, ImportOptions, ImportedImage, check, docker, oci, scan};
use crate::media::{Entry, OCI_INDEX};
use crate::{Descriptor, ImageError};

/// What an archive lists at its top: manifests (or indexes), and the index that lists them.
#[derive(Debug)]
pub(super) struct TopLevel {
    pub(super) entries: Vec<Entry>,
    /// `index.json`, or for a Docker archive an index built from `manifest.json`.
    pub(super) index: Vec<u8>,
}

/// Reads an image archive from `r` — an OCI image layout or a `docker save` tarball, plain or
/// gzipped — stores its blobs into `sink`, and returns the images it holds, named as
/// `ctr images import` names them (see [`ImportOptions`]).
///
/// Entries may come in any order. An OCI layout is preferred when both formats are present
/// (Docker 25 and later write both). Blobs under `blobs/` are streamed to the sink under the
/// digest their path names, which the sink verifies; for a Docker archive every other file is
/// stored too, as `manifest.json` names layers and configs by path. Every blob the images need
/// must be in the archive or already in the sink, except what an index lists for platforms
/// other than this host's.
///
/// Nothing is returned unless the whole archive is valid. Blobs stored before a failure stay
/// in the sink, referenced by nothing: the daemon's garbage collector removes them (the daemon
/// imports under a lease, so they are not collected while the import is still running).
pub fn import(
    r: impl Read,
    sink: &mut dyn BlobSink,
    opts: &ImportOptions,
) -> Result<Vec<ImportedImage>, ImageError> {
    let scan = scan::scan(r, sink)?;
    let top = if let Some(layout) = &scan.layout {
        let top = oci::top_level(&scan, layout)?;
        check::complete(&scan, sink, &top.entries)?;
        top
    } else if let Some(manifest) = &scan.docker_manifest {
        docker::top_level(&scan, manifest, sink)?
    } else {
        return Err(ImageError::InvalidArchive(
            "unrecognized image format: neither oci-layout nor manifest.json".into(),
        ));
    };

    let mut names = Names::default();
    if let Some(index_name) = opts.index_name.as_deref().filter(|n| !n.is_empty()) {
        let (digest, size) = sink.put(None, &mut top.index.as_slice())?;
        if size != top.index.len() as u64 {
            return Err(ImageError::InvalidArchive(format!(
                "index {digest}: {size} of {} bytes stored",
                top.index.len()
            )));
        }
        let target = Descriptor {
            media_type: OCI_INDEX.to_string(),
            digest,
            size: top.index.len() as i64,
            annotations: BTreeMap::new(),
        };
        names.add(index_name.to_string(), &target)?;
    }
    names.add_entries(&top.entries, opts)?;
    Ok(names.into_images())
}
