//! OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`): the index lists the
//! images.

use serde::Deserialize;

use super::import::TopLevel;
use super::scan::Scan;
use crate::ImageError;
use crate::media::{LAYOUT_VERSION, Links, shorten};

#[derive(Debug, Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion", default)]
    version: Option<String>,
}

/// The manifests `index.json` lists, after checking `oci-layout`.
pub(super) fn top_level(scan: &Scan, layout: &[u8]) -> Result<TopLevel, ImageError> {
    let layout: Layout = serde_json::from_slice(layout).map_err(|source| ImageError::Json {
        what: "oci-layout".into(),
        source,
    })?;
    let version = layout.version.unwrap_or_default();
    if version != LAYOUT_VERSION {
        return Err(ImageError::InvalidArchive(format!(
            "unsupported OCI layout version {}",
            shorten(&version)
        )));
    }
    let Some(index) = &scan.index else {
        return Err(ImageError::InvalidArchive(
            "OCI layout without index.json".into(),
        ));
    };
    let entries = Links::parse(index, "index.json")?.manifests("index.json")?;
    Ok(TopLevel {
        entries,
        index: index.clone(),
    })
}
