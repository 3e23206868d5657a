//! What imported images are called: containerd's rules, as `ctr images import` (1.6, 1.7)
//! applies them.

use std::collections::{BTreeMap, HashMap};

use super::{ImportOptions, ImportedImage};
use crate::media::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Entry, shorten};
use crate::reference::{has_image_prefix, repository};
use crate::{Descriptor, ImageError};

const NAME_MAX: usize = 4096;

/// The images, in order; a name given twice names the last target given.
#[derive(Debug, Default)]
pub(super) struct Names {
    images: Vec<ImportedImage>,
    by_name: HashMap<String, usize>,
}

impl Names {
    pub(super) fn add(&mut self, name: String, target: &Descriptor) -> Result<(), ImageError> {
        if name.is_empty()
            || name.len() > NAME_MAX
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ImageError::InvalidArchive(format!(
                "invalid image name {}",
                shorten(&name)
            )));
        }
        match self.by_name.get(&name) {
            Some(&i) => self.images[i].target = target.clone(),
            None => {
                self.by_name.insert(name.clone(), self.images.len());
                self.images.push(ImportedImage {
                    name,
                    target: target.clone(),
                });
            }
        }
        Ok(())
    }

    /// Names each top-level manifest: by its name annotations, and by digest if asked.
    pub(super) fn add_entries(
        &mut self,
        entries: &[Entry],
        opts: &ImportOptions,
    ) -> Result<(), ImageError> {
        let base = opts.base_name.as_deref().filter(|b| !b.is_empty());
        for entry in entries {
            let name = image_name(&entry.desc.annotations, base);
            if let Some(name) = &name {
                self.add(name.clone(), &entry.desc)?;
            }
            if opts.digests {
                // ctr names by digest under its base name; without one, under the image's
                // repository.
                let prefix = base.or(name.as_deref().map(repository));
                if let Some(prefix) = prefix {
                    self.add(format!("{prefix}@{}", entry.desc.digest), &entry.desc)?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn into_images(self) -> Vec<ImportedImage> {
        self.images
    }
}

/// containerd's `io.containerd.image.name` if present; else the OCI reference name, which is
/// used as it is when it is a full name (has `/`, `:` or `@`) — but with a base name, only if
/// it lies under it — and appended to the base name as a tag otherwise.
fn image_name(annotations: &BTreeMap<String, String>, base: Option<&str>) -> Option<String> {
    if let Some(name) = annotations.get(ANNOTATION_IMAGE_NAME)
        && !name.is_empty()
    {
        return Some(name.clone());
    }
    let ref_name = annotations
        .get(ANNOTATION_REF_NAME)
        .filter(|r| !r.is_empty())?;
    if ref_name.contains(['/', ':', '@']) {
        match base {
            Some(base) if !has_image_prefix(ref_name, base) => None,
            _ => Some(ref_name.clone()),
        }
    } else {
        base.map(|base| format!("{base}:{ref_name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_like_ctr() {
        let full = annotations(&[(ANNOTATION_IMAGE_NAME, "docker.io/library/a:1")]);
        let tag = annotations(&[(ANNOTATION_REF_NAME, "latest")]);
        let ref_full = annotations(&[(ANNOTATION_REF_NAME, "example.com/x:2")]);
        let both = annotations(&[
            (ANNOTATION_IMAGE_NAME, "docker.io/library/a:1"),
            (ANNOTATION_REF_NAME, "1"),
        ]);
        assert_eq!(
            image_name(&full, None).as_deref(),
            Some("docker.io/library/a:1")
        );
        assert_eq!(
            image_name(&full, Some("other")).as_deref(),
            Some("docker.io/library/a:1")
        );
        assert_eq!(
            image_name(&both, Some("b")).as_deref(),
            Some("docker.io/library/a:1")
        );
        assert_eq!(image_name(&tag, None), None);
        assert_eq!(image_name(&tag, Some("b")).as_deref(), Some("b:latest"));
        assert_eq!(
            image_name(&ref_full, None).as_deref(),
            Some("example.com/x:2")
        );
        assert_eq!(
            image_name(&ref_full, Some("example.com/x")).as_deref(),
            Some("example.com/x:2")
        );
        assert_eq!(image_name(&ref_full, Some("example.com/y")), None);
        assert_eq!(image_name(&BTreeMap::new(), Some("b")), None);
    }
}
