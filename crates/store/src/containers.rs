//! Containers: metadata records per namespace (what to run, from which image and snapshot, with
//! which runtime), as containerd's `metadata/containers.go` keeps them. They are GC roots for
//! their snapshot and for content and snapshots their labels reference.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::records::{decode, encode, key, list};
use crate::time::Timestamp;
use crate::{Store, StoreError, identifiers, labels};

/// A typed value (a protobuf `Any`): type URL and encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AnyValue {
    /// The type URL.
    pub type_url: String,
    /// The encoded value (JSON for OCI specs, protobuf otherwise), base64 in the record.
    #[serde(with = "b64")]
    pub value: Vec<u8>,
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// A container record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Container {
    /// Its id (an identifier).
    pub id: String,
    /// Labels.
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// The image it was made from (a name; may be empty).
    #[serde(default)]
    pub image: String,
    /// Runtime name (`io.containerd.runc.v2`).
    pub runtime_name: String,
    /// Runtime options.
    #[serde(default)]
    pub runtime_options: Option<AnyValue>,
    /// The OCI spec.
    pub spec: Option<AnyValue>,
    /// Snapshotter of its root file system.
    #[serde(default)]
    pub snapshotter: String,
    /// Key of its root file system's snapshot.
    #[serde(default)]
    pub snapshot_key: String,
    /// Extensions by name.
    #[serde(default)]
    pub extensions: HashMap<String, AnyValue>,
    /// The sandbox it belongs to, if any.
    #[serde(default)]
    pub sandbox: String,
    /// When it was created.
    #[serde(default)]
    pub created_at: Timestamp,
    /// When it was last changed.
    #[serde(default)]
    pub updated_at: Timestamp,
}

const TREE: &str = "containers";

fn validate(c: &Container) -> Result<(), StoreError> {
    identifiers::validate(&c.id)
        .map_err(|e| StoreError::InvalidArgument(format!("container.id: {e}")))?;
    labels::validate(&c.labels)?;
    if c.runtime_name.is_empty() {
        return Err(StoreError::InvalidArgument(
            "container.runtime.name: must be set".into(),
        ));
    }
    if c.spec.is_none() {
        return Err(StoreError::InvalidArgument(
            "container.spec: must be set".into(),
        ));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(StoreError::InvalidArgument(
            "container.snapshotter: must be set if container.snapshot_key is set".into(),
        ));
    }
    Ok(())
}

impl Store {
    fn containers(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    /// The container `id` in `ns`.
    pub fn get_container(&self, ns: &str, id: &str) -> Result<Container, StoreError> {
        let k = key(ns, id);
        match self.containers()?.get(&k)? {
            Some(v) => decode(TREE, &k, &v),
            None => Err(StoreError::NotFound(format!("container {id:?}"))),
        }
    }

    /// Every container in `ns`, sorted by id.
    pub fn list_containers(&self, ns: &str) -> Result<Vec<Container>, StoreError> {
        Ok(list::<Container>(&self.containers()?, TREE, ns)?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// Creates a container; AlreadyExists if the id is taken.
    pub fn create_container(&self, ns: &str, mut c: Container) -> Result<Container, StoreError> {
        validate(&c)?;
        let _gc = self.gc_read();
        let _ns = self.hold_namespace(ns)?;
        let now = Timestamp::now();
        c.created_at = now;
        c.updated_at = now;
        if self
            .containers()?
            .compare_and_swap(key(ns, &c.id), None as Option<&[u8]>, Some(encode(&c)))?
            .is_err()
        {
            return Err(StoreError::AlreadyExists(format!("container {:?}", c.id)));
        }
        Ok(c)
    }

    /// Updates the fields of container `c.id` named by `paths` (`labels`, `labels.<k>`, `spec`,
    /// `extensions`, `extensions.<k>`, `image`, `snapshotkey`; none means all of those).
    /// The runtime and snapshotter cannot change.
    pub fn update_container(
        &self,
        ns: &str,
        c: Container,
        paths: &[String],
    ) -> Result<Container, StoreError> {
        if c.id.is_empty() {
            return Err(StoreError::InvalidArgument(
                "container.id: must be set".into(),
            ));
        }
        let _gc = self.gc_read();
        let tree = self.containers()?;
        let k = key(ns, &c.id);
        let updated = tree.transaction(|tx| {
            use sled::transaction::ConflictableTransactionError::Abort;
            let mut cur: Container = match tx.get(&k)? {
                Some(v) => decode(TREE, &k, &v).map_err(Abort)?,
                None => {
                    return Err(Abort(StoreError::NotFound(format!("container {:?}", c.id))));
                }
            };
            if !c.runtime_name.is_empty() && c.runtime_name != cur.runtime_name {
                return Err(Abort(StoreError::InvalidArgument(
                    "container.runtime.name: field is immutable".into(),
                )));
            }
            if !c.snapshotter.is_empty() && c.snapshotter != cur.snapshotter {
                return Err(Abort(StoreError::InvalidArgument(
                    "container.snapshotter: field is immutable".into(),
                )));
            }
            let all: Vec<String> = ["labels", "spec", "extensions", "image", "snapshotkey"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let paths = if paths.is_empty() { &all[..] } else { paths };
            for p in paths {
                if let Some(l) = p.strip_prefix("labels.") {
                    match c.labels.get(l) {
                        Some(v) if !v.is_empty() => {
                            cur.labels.insert(l.to_string(), v.clone());
                        }
                        _ => {
                            cur.labels.remove(l);
                        }
                    }
                    continue;
                }
                if let Some(e) = p.strip_prefix("extensions.") {
                    match c.extensions.get(e) {
                        Some(v) => {
                            cur.extensions.insert(e.to_string(), v.clone());
                        }
                        None => {
                            cur.extensions.remove(e);
                        }
                    }
                    continue;
                }
                match p.as_str() {
                    "labels" => cur.labels = c.labels.clone(),
                    "spec" => cur.spec = c.spec.clone(),
                    "extensions" => cur.extensions = c.extensions.clone(),
                    "image" => cur.image = c.image.clone(),
                    "snapshotkey" | "snapshot_key" => cur.snapshot_key = c.snapshot_key.clone(),
                    other => {
                        return Err(Abort(StoreError::InvalidArgument(format!(
                            "cannot update {other:?} field on container {:?}",
                            c.id
                        ))));
                    }
                }
            }
            validate(&cur).map_err(Abort)?;
            cur.updated_at = Timestamp::now();
            tx.insert(k.as_slice(), encode(&cur))?;
            Ok(cur)
        })?;
        Ok(updated)
    }

    /// Deletes container `id`.
    pub fn delete_container(&self, ns: &str, id: &str) -> Result<(), StoreError> {
        if self.containers()?.remove(key(ns, id))?.is_none() {
            return Err(StoreError::NotFound(format!("container {id:?}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str) -> Container {
        Container {
            id: id.into(),
            runtime_name: "io.containerd.runc.v2".into(),
            spec: Some(AnyValue {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: b"{}".to_vec(),
            }),
            snapshotter: "overlayfs".into(),
            snapshot_key: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn containers_lifecycle_and_rules() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let made = s.create_container("ns", c("a")).unwrap();
        assert!(made.created_at.seconds > 0);
        assert!(matches!(
            s.create_container("ns", c("a")),
            Err(StoreError::AlreadyExists(_))
        ));
        let mut bad = c("b");
        bad.spec = None;
        assert!(
            s.create_container("ns", bad)
                .unwrap_err()
                .to_string()
                .contains("spec")
        );
        let mut bad = c("b");
        bad.runtime_name.clear();
        assert!(s.create_container("ns", bad).is_err());
        assert!(s.create_container("ns", c("bad/id")).is_err());
        let mut up = c("a");
        up.labels.insert("x".into(), "1".into());
        let got = s.update_container("ns", up, &["labels.x".into()]).unwrap();
        assert_eq!(got.labels["x"], "1");
        let mut up = c("a");
        up.runtime_name = "other".into();
        assert!(s.update_container("ns", up, &[]).is_err());
        assert!(
            s.update_container("ns", c("a"), &["runtime".into()])
                .is_err()
        );
        assert_eq!(s.list_containers("ns").unwrap().len(), 1);
        assert!(s.list_containers("other").unwrap().is_empty());
        s.delete_container("ns", "a").unwrap();
        assert!(matches!(
            s.delete_container("ns", "a"),
            Err(StoreError::NotFound(_))
        ));
    }
}
