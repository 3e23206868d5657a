//! Images: a name, labels and a target descriptor, per namespace.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::records::{decode, encode, key, list};
use crate::time::Timestamp;
use crate::{Store, StoreError, labels};

/// A content descriptor: what an image (or label) points at.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type of the target.
    pub media_type: String,
    /// Its digest, `sha256:<hex>`.
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
    /// OCI annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// An image record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Image {
    /// Its name, usually a reference such as `docker.io/library/busybox:latest`.
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// What it points at.
    pub target: Descriptor,
    /// When it was created.
    #[serde(default)]
    pub created_at: Timestamp,
    /// When it was last changed.
    #[serde(default)]
    pub updated_at: Timestamp,
}

const TREE: &str = "images";

fn validate(img: &Image) -> Result<(), StoreError> {
    if img.name.is_empty() {
        return Err(StoreError::InvalidArgument(
            "image.name: must not be empty".into(),
        ));
    }
    labels::validate(&img.labels)?;
    crate::validate_digest(&img.target.digest)
        .map_err(|e| StoreError::InvalidArgument(format!("image.target.digest: {e}")))?;
    if img.target.media_type.is_empty() {
        return Err(StoreError::InvalidArgument(
            "image.target.media_type: must be set".into(),
        ));
    }
    Ok(())
}

impl Store {
    fn images(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// The image `name` in `ns`.
    pub fn get_image(&self, ns: &str, name: &str) -> Result<Image, StoreError> {
        let k = key(ns, name);
        match self.images()?.get(&k)? {
            Some(v) => decode(TREE, &k, &v),
            None => Err(StoreError::NotFound(format!("image {name:?}"))),
        }
    }

    /// Every image in `ns`, sorted by name.
    pub fn list_images(&self, ns: &str) -> Result<Vec<Image>, StoreError> {
        Ok(list(&self.images()?, TREE, ns)?
            .into_iter()
            .map(|(_, i)| i)
            .collect())
    }

    /// Creates an image; `AlreadyExists` if the name is taken.
    pub fn create_image(&self, ns: &str, mut img: Image) -> Result<Image, StoreError> {
        validate(&img)?;
        let _gc = self.gc_read();
        let _ns = self.hold_namespace(ns)?;
        let now = Timestamp::now();
        img.created_at = now;
        img.updated_at = now;
        match self.images()?.compare_and_swap(
            key(ns, &img.name),
            None as Option<&[u8]>,
            Some(encode(&img)),
        )? {
            Ok(()) => Ok(img),
            Err(_) => Err(StoreError::AlreadyExists(format!("image {:?}", img.name))),
        }
    }

    /// Updates an image with containerd's field paths (`labels`, `labels.<k>`, `target`,
    /// `annotations`, `annotations.<k>`); no paths replaces labels and target.
    pub fn update_image(
        &self,
        ns: &str,
        img: Image,
        paths: &[String],
    ) -> Result<Image, StoreError> {
        if img.name.is_empty() {
            return Err(StoreError::InvalidArgument(
                "image.name: must not be empty".into(),
            ));
        }
        for p in paths {
            let known = p == "labels"
                || p == "target"
                || p == "annotations"
                || p.starts_with("labels.")
                || p.starts_with("annotations.");
            if !known {
                return Err(StoreError::InvalidArgument(format!(
                    "cannot update {p:?} field on image {:?}",
                    img.name
                )));
            }
        }
        let _gc = self.gc_read();
        let tree = self.images()?;
        let k = key(ns, &img.name);
        let updated = tree.transaction(|tx| {
            use sled::transaction::ConflictableTransactionError::Abort;
            let mut cur: Image = match tx.get(&k)? {
                Some(v) => decode(TREE, &k, &v).map_err(Abort)?,
                None => return Err(Abort(StoreError::NotFound(format!("image {:?}", img.name)))),
            };
            if paths.is_empty() {
                cur.labels = img.labels.clone();
                cur.target = img.target.clone();
            } else {
                labels::apply_paths(&mut cur.labels, &img.labels, paths, false);
                for p in paths {
                    if p == "target" {
                        cur.target = img.target.clone();
                    } else if p == "annotations" {
                        cur.target.annotations = img.target.annotations.clone();
                    } else if let Some(a) = p.strip_prefix("annotations.") {
                        match img.target.annotations.get(a) {
                            Some(v) => cur.target.annotations.insert(a.to_string(), v.clone()),
                            None => cur.target.annotations.remove(a),
                        };
                    }
                }
            }
            cur.updated_at = Timestamp::now();
            validate(&cur).map_err(Abort)?;
            tx.insert(k.as_slice(), encode(&cur))?;
            Ok(cur)
        })?;
        Ok(updated)
    }

    /// Deletes an image; `NotFound` if missing. With `target`, only if it still points there.
    pub fn delete_image(
        &self,
        ns: &str,
        name: &str,
        target: Option<&str>,
    ) -> Result<Image, StoreError> {
        let tree = self.images()?;
        let k = key(ns, name);
        let removed = tree.transaction(|tx| {
            use sled::transaction::ConflictableTransactionError::Abort;
            let cur: Image = match tx.get(&k)? {
                Some(v) => decode(TREE, &k, &v).map_err(Abort)?,
                None => return Err(Abort(StoreError::NotFound(format!("image {name:?}")))),
            };
            if let Some(t) = target.filter(|t| cur.target.digest != *t) {
                return Err(Abort(StoreError::FailedPrecondition(format!(
                    "image {name:?} target is {}, not {t}",
                    cur.target.digest
                ))));
            }
            tx.remove(k.as_slice())?;
            Ok(cur)
        })?;
        Ok(removed)
    }
}
