//! Namespaces: named groups of objects, with labels.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::store::NAMESPACED_TREES;
use crate::{Store, StoreError, identifiers, labels};

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    /// The name (an identifier).
    pub name: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Record {
    labels: HashMap<String, String>,
}

fn decode(name: &str, v: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: format!("namespaces/{name}"),
        reason: e.to_string(),
    })
}

fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("a map of strings always serializes")
}

impl Store {
    /// Creates a namespace; fails with `AlreadyExists` if it is there.
    pub fn create_namespace(&self, ns: &Namespace) -> Result<(), StoreError> {
        identifiers::validate(&ns.name)?;
        labels::validate(&ns.labels)?;
        let rec = encode(&Record {
            labels: ns.labels.clone(),
        });
        match self.namespaces.compare_and_swap(
            ns.name.as_bytes(),
            None as Option<&[u8]>,
            Some(rec),
        )? {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::AlreadyExists(format!("namespace {}", ns.name))),
        }
    }

    /// Creates the namespace if it does not exist yet (objects create their namespace
    /// implicitly, as in containerd). Returns true if it was created.
    pub fn ensure_namespace(&self, name: &str) -> Result<bool, StoreError> {
        identifiers::validate(name)?;
        let rec = encode(&Record::default());
        Ok(self
            .namespaces
            .compare_and_swap(name.as_bytes(), None as Option<&[u8]>, Some(rec))?
            .is_ok())
    }

    /// Creates `name` if needed and holds it: it cannot be deleted until the guard is dropped.
    /// Object creation keeps the guard while it inserts, so a namespace is never deleted under it.
    pub(crate) fn hold_namespace(
        &self,
        name: &str,
    ) -> Result<std::sync::RwLockReadGuard<'_, ()>, StoreError> {
        let guard = self.ns_guard.read().unwrap_or_else(|e| e.into_inner());
        self.ensure_namespace(name)?;
        Ok(guard)
    }

    /// The namespace, or `None`.
    pub fn get_namespace(&self, name: &str) -> Result<Option<Namespace>, StoreError> {
        match self.namespaces.get(name.as_bytes())? {
            None => Ok(None),
            Some(v) => Ok(Some(Namespace {
                name: name.to_string(),
                labels: decode(name, &v)?.labels,
            })),
        }
    }

    /// Every namespace, sorted by name.
    pub fn list_namespaces(&self) -> Result<Vec<Namespace>, StoreError> {
        let mut out = Vec::new();
        for kv in self.namespaces.iter() {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let labels = decode(&name, &v)?.labels;
            out.push(Namespace { name, labels });
        }
        Ok(out)
    }

    /// Updates labels with containerd's field-mask rules: no paths replaces all labels;
    /// `labels` replaces all labels; `labels.<key>` sets (or, with no value, removes) one label.
    /// A missing namespace is created, as containerd does. Returns the updated namespace.
    pub fn update_namespace(
        &self,
        ns: &Namespace,
        paths: &[String],
    ) -> Result<Namespace, StoreError> {
        identifiers::validate(&ns.name)?;
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(StoreError::InvalidArgument(format!(
                    "cannot update {p:?} field on namespace {:?}",
                    ns.name
                )));
            }
        }
        let key = ns.name.as_bytes();
        let updated = self.namespaces.transaction(|tx| {
            let mut rec = match tx.get(key)? {
                Some(v) => decode(&ns.name, &v)
                    .map_err(sled::transaction::ConflictableTransactionError::Abort)?,
                None => Record::default(),
            };
            labels::apply_paths(&mut rec.labels, &ns.labels, paths, true);
            labels::validate(&rec.labels)
                .map_err(sled::transaction::ConflictableTransactionError::Abort)?;
            tx.insert(key, encode(&rec))?;
            Ok(rec)
        })?;
        Ok(Namespace {
            name: ns.name.clone(),
            labels: updated.labels,
        })
    }

    /// Deletes an empty namespace: `NotFound` if missing, `FailedPrecondition` if it still holds
    /// objects.
    pub fn delete_namespace(&self, name: &str) -> Result<(), StoreError> {
        let _guard = self.ns_guard.write().unwrap_or_else(|e| e.into_inner());
        if self.namespaces.get(name.as_bytes())?.is_none() {
            return Err(StoreError::NotFound(format!("namespace {name}")));
        }
        let prefix = format!("{name}/");
        let mut held = Vec::new();
        for t in NAMESPACED_TREES {
            if self
                .db
                .open_tree(t)?
                .scan_prefix(prefix.as_bytes())
                .next()
                .is_some()
            {
                held.push(*t);
            }
        }
        if !held.is_empty() {
            return Err(StoreError::FailedPrecondition(format!(
                "namespace {name} must be empty, but it still has {}",
                held.join(", ")
            )));
        }
        self.namespaces.remove(name.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    fn ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn create_get_list_delete() {
        let (_d, s) = store();
        s.create_namespace(&ns("b", &[("x", "1")])).unwrap();
        s.create_namespace(&ns("a", &[])).unwrap();
        assert!(matches!(
            s.create_namespace(&ns("a", &[])),
            Err(StoreError::AlreadyExists(_))
        ));
        let names: Vec<_> = s
            .list_namespaces()
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s.get_namespace("b").unwrap().unwrap().labels["x"], "1");
        assert!(s.get_namespace("zz").unwrap().is_none());
        s.delete_namespace("a").unwrap();
        assert!(matches!(
            s.delete_namespace("a"),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn update_follows_field_masks() {
        let (_d, s) = store();
        s.create_namespace(&ns("n", &[("a", "1"), ("b", "2")]))
            .unwrap();
        let u = s
            .update_namespace(&ns("n", &[("c", "3")]), &["labels.c".into()])
            .unwrap();
        assert_eq!(u.labels.len(), 3);
        let u = s
            .update_namespace(&ns("n", &[]), &["labels.a".into()])
            .unwrap();
        assert!(!u.labels.contains_key("a"));
        let u = s.update_namespace(&ns("n", &[("z", "9")]), &[]).unwrap();
        assert_eq!(u.labels, ns("", &[("z", "9")]).labels);
        assert!(matches!(
            s.update_namespace(&ns("n", &[]), &["name".into()]),
            Err(StoreError::InvalidArgument(_))
        ));
        // Updating a missing namespace creates it, as containerd does.
        s.update_namespace(&ns("fresh", &[("k", "v")]), &["labels.k".into()])
            .unwrap();
        assert!(s.get_namespace("fresh").unwrap().is_some());
    }

    #[test]
    fn invalid_input_is_rejected_and_changes_nothing() {
        let (_d, s) = store();
        assert!(matches!(
            s.create_namespace(&ns("bad/name", &[])),
            Err(StoreError::InvalidArgument(_))
        ));
        let big = "v".repeat(4096);
        assert!(matches!(
            s.create_namespace(&ns("n", &[("k", &big)])),
            Err(StoreError::InvalidArgument(_))
        ));
        assert!(s.get_namespace("n").unwrap().is_none());
        s.create_namespace(&ns("n", &[("a", "1")])).unwrap();
        assert!(
            s.update_namespace(&ns("n", &[("k", &big)]), &["labels.k".into()])
                .is_err()
        );
        assert_eq!(s.get_namespace("n").unwrap().unwrap().labels.len(), 1);
    }

    #[test]
    fn delete_refuses_non_empty_namespace() {
        let (_d, s) = store();
        s.create_namespace(&ns("n", &[])).unwrap();
        s.db.open_tree("images")
            .unwrap()
            .insert("n/busybox", b"{}".as_ref())
            .unwrap();
        match s.delete_namespace("n") {
            Err(StoreError::FailedPrecondition(m)) => assert!(m.contains("images"), "{m}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(s.get_namespace("n").unwrap().is_some());
    }
}
