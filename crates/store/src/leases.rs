//! Leases: named holds that keep content, ingests and snapshots alive while a client works.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::records::{decode, encode, key, list};
use crate::time::{Timestamp, parse_rfc3339};
use crate::{Store, StoreError, labels};

/// Label holding a lease's expiry (RFC 3339).
pub const LABEL_EXPIRE: &str = "containerd.io/gc.expire";
/// Label asking GC not to follow references from a lease's resources.
pub const LABEL_FLAT: &str = "containerd.io/gc.flat";

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lease {
    /// Its id.
    pub id: String,
    /// Labels (`containerd.io/gc.expire`, `containerd.io/gc.flat`, ...).
    #[serde(default)]
    pub labels: HashMap<String, String>,
    /// When it was created.
    #[serde(default)]
    pub created_at: Timestamp,
}

impl Lease {
    /// True once its `containerd.io/gc.expire` time has passed.
    pub fn expired(&self, now: Timestamp) -> bool {
        self.labels
            .get(LABEL_EXPIRE)
            .and_then(|v| parse_rfc3339(v))
            .is_some_and(|t| t <= now)
    }
}

/// A resource held by a lease: `content` (a digest), `ingests` (a ref) or
/// `snapshots/<snapshotter>` (a key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    /// The resource's id.
    pub id: String,
    /// Its type.
    pub r#type: String,
}

const TREE: &str = "leases";
const RESOURCES: &str = "lease_resources";

fn resource_key(ns: &str, lease: &str, r: &Resource) -> Vec<u8> {
    let mut k = resource_prefix(ns, lease);
    k.extend_from_slice(r.r#type.as_bytes());
    k.push(0);
    k.extend_from_slice(r.id.as_bytes());
    k
}

fn resource_prefix(ns: &str, lease: &str) -> Vec<u8> {
    let mut k = key(ns, lease);
    k.push(0);
    k
}

fn validate_resource(r: &Resource) -> Result<(), StoreError> {
    match r.r#type.as_str() {
        "content" => crate::validate_digest(&r.id)
            .map(|_| ())
            .map_err(|e| StoreError::InvalidArgument(format!("resource.id: {e}"))),
        "ingests" if !r.id.is_empty() => Ok(()),
        t if t.starts_with("snapshots/") && t.len() > "snapshots/".len() && !r.id.is_empty() => {
            Ok(())
        }
        "ingests" => Err(StoreError::InvalidArgument(
            "resource.id: must not be empty".into(),
        )),
        t => Err(StoreError::InvalidArgument(format!(
            "resource.type: unsupported resource type {t:?}"
        ))),
    }
}

impl Store {
    fn leases(&self) -> Result<(sled::Tree, sled::Tree), StoreError> {
        Ok((self.db.open_tree(TREE)?, self.db.open_tree(RESOURCES)?))
    }

    /// The resources tree, once lease `lease` of `ns` is known to exist (`NotFound` if not).
    fn resources_of(&self, ns: &str, lease: &str) -> Result<sled::Tree, StoreError> {
        let (leases, resources) = self.leases()?;
        if leases.get(key(ns, lease))?.is_none() {
            return Err(StoreError::NotFound(format!("lease {lease:?}")));
        }
        Ok(resources)
    }

    /// Creates a lease; `AlreadyExists` if the id is taken.
    pub fn create_lease(
        &self,
        ns: &str,
        id: &str,
        labels: HashMap<String, String>,
    ) -> Result<Lease, StoreError> {
        // Not an identifier: containerd's Go client makes ids like "<nanos>-<base64>", which may
        // hold "--" or "_-". Any printable id without NUL, '/' or spaces works as a key.
        if id.is_empty()
            || id.len() > 256
            || id
                .chars()
                .any(|c| c.is_control() || c == '/' || c.is_whitespace())
        {
            return Err(StoreError::InvalidArgument(format!(
                "lease.id: {id:?} must be 1 to 256 printable characters without '/' or spaces"
            )));
        }
        labels::validate(&labels)?;
        if let Some(v) = labels
            .get(LABEL_EXPIRE)
            .filter(|v| parse_rfc3339(v).is_none())
        {
            return Err(StoreError::InvalidArgument(format!(
                "labels: {LABEL_EXPIRE} {v:?} is not an RFC 3339 time"
            )));
        }
        let _ns = self.hold_namespace(ns)?;
        let lease = Lease {
            id: id.to_string(),
            labels,
            created_at: Timestamp::now(),
        };
        let (leases, _) = self.leases()?;
        match leases.compare_and_swap(key(ns, id), None as Option<&[u8]>, Some(encode(&lease)))? {
            Ok(()) => Ok(lease),
            Err(_) => Err(StoreError::AlreadyExists(format!("lease {id:?}"))),
        }
    }

    /// The lease `id`, or `NotFound`.
    pub fn get_lease(&self, ns: &str, id: &str) -> Result<Lease, StoreError> {
        let (leases, _) = self.leases()?;
        let k = key(ns, id);
        match leases.get(&k)? {
            Some(v) => decode(TREE, &k, &v),
            None => Err(StoreError::NotFound(format!("lease {id:?}"))),
        }
    }

    /// Every lease in `ns`.
    pub fn list_leases(&self, ns: &str) -> Result<Vec<Lease>, StoreError> {
        let (leases, _) = self.leases()?;
        Ok(list(&leases, TREE, ns)?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// Deletes a lease and releases its resources; `NotFound` if missing.
    pub fn delete_lease(&self, ns: &str, id: &str) -> Result<(), StoreError> {
        use sled::Transactional;
        use sled::transaction::ConflictableTransactionError::Abort;
        let (leases, resources) = self.leases()?;
        // The lease and its resources go in one transaction: a crash leaves both or neither.
        // A resource added after the scan (its writer saw the lease) is an orphan, which the
        // collector removes.
        let keys: Vec<sled::IVec> = resources
            .scan_prefix(resource_prefix(ns, id))
            .keys()
            .collect::<Result<_, _>>()?;
        let lease_key = key(ns, id);
        (&leases, &resources).transaction(|(l, r)| {
            if l.remove(lease_key.as_slice())?.is_none() {
                return Err(Abort(StoreError::NotFound(format!("lease {id:?}"))));
            }
            for k in &keys {
                r.remove(k)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Adds a resource to a lease (idempotent); `NotFound` if the lease does not exist.
    pub fn add_lease_resource(
        &self,
        ns: &str,
        lease: &str,
        r: &Resource,
    ) -> Result<(), StoreError> {
        validate_resource(r)?;
        let _gc = self.gc_read();
        self.add_lease_resource_locked(ns, lease, r)
    }

    /// As [`Store::add_lease_resource`], for callers already holding the GC read lock.
    pub(crate) fn add_lease_resource_locked(
        &self,
        ns: &str,
        lease: &str,
        r: &Resource,
    ) -> Result<(), StoreError> {
        let resources = self.resources_of(ns, lease)?;
        resources.insert(resource_key(ns, lease, r), &[])?;
        Ok(())
    }

    /// Removes a resource from a lease; `NotFound` if the lease does not exist.
    pub fn delete_lease_resource(
        &self,
        ns: &str,
        lease: &str,
        r: &Resource,
    ) -> Result<(), StoreError> {
        let resources = self.resources_of(ns, lease)?;
        resources.remove(resource_key(ns, lease, r))?;
        Ok(())
    }

    /// The resources a lease holds; `NotFound` if the lease does not exist.
    pub fn list_lease_resources(&self, ns: &str, lease: &str) -> Result<Vec<Resource>, StoreError> {
        let resources = self.resources_of(ns, lease)?;
        let p = resource_prefix(ns, lease);
        let mut out = Vec::new();
        for k in resources.scan_prefix(&p).keys() {
            let k = k?;
            let rest = &k[p.len()..];
            if let Some(i) = rest.iter().position(|&b| b == 0) {
                out.push(Resource {
                    r#type: String::from_utf8_lossy(&rest[..i]).into_owned(),
                    id: String::from_utf8_lossy(&rest[i + 1..]).into_owned(),
                });
            }
        }
        Ok(out)
    }

    /// Every lease resource in every namespace: `(namespace, lease, resource)`.
    /// Removes resource records (namespace, lease, resource) in one batch; how many.
    pub(crate) fn remove_lease_resources(
        &self,
        list: &[(String, String, Resource)],
    ) -> Result<usize, StoreError> {
        let (_, resources) = self.leases()?;
        let mut batch = sled::Batch::default();
        for (ns, lease, r) in list {
            batch.remove(resource_key(ns, lease, r));
        }
        resources.apply_batch(batch)?;
        Ok(list.len())
    }

    pub(crate) fn all_lease_resources(
        &self,
    ) -> Result<Vec<(String, String, Resource)>, StoreError> {
        let (_, resources) = self.leases()?;
        let mut out = Vec::new();
        for k in resources.iter().keys() {
            let k = k?;
            let Some(slash) = k.iter().position(|&b| b == b'/') else {
                continue;
            };
            let ns = String::from_utf8_lossy(&k[..slash]).into_owned();
            let parts: Vec<&[u8]> = k[slash + 1..].splitn(3, |&b| b == 0).collect();
            if let [lease, ty, id] = parts[..] {
                out.push((
                    ns,
                    String::from_utf8_lossy(lease).into_owned(),
                    Resource {
                        r#type: String::from_utf8_lossy(ty).into_owned(),
                        id: String::from_utf8_lossy(id).into_owned(),
                    },
                ));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Writes `data` under `lease` in namespace "t"; its digest.
    fn blob(s: &Store, lease: &str, data: &[u8]) -> berth_content::Digest {
        let mut w = s
            .content_writer(
                "t",
                &format!("r-{}", data.len()),
                None,
                None,
                Some(lease),
                crate::Sharing::Adopt,
            )
            .unwrap();
        w.inner().write_at(0, data).unwrap();
        s.content_commit(w, data.len() as i64, None, &HashMap::new())
            .unwrap()
    }

    #[test]
    fn a_lease_goes_with_its_resources_and_orphans_hold_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.create_lease("t", "one", HashMap::new()).unwrap();
        let d1 = blob(&s, "one", b"first blob");
        assert_eq!(s.list_lease_resources("t", "one").unwrap().len(), 1);
        s.delete_lease("t", "one").unwrap();
        assert!(s.all_lease_resources().unwrap().is_empty());
        assert!(matches!(
            s.delete_lease("t", "one"),
            Err(StoreError::NotFound(_))
        ));

        // A lease record gone without its resources (what a crash between two writes left
        // before deletion was one transaction): the resources are orphans, removed by the
        // next collection, and what only they held goes with them.
        s.create_lease("t", "two", HashMap::new()).unwrap();
        let d2 = blob(&s, "two", b"second blob, held by an orphan");
        let (leases, _) = s.leases().unwrap();
        leases.remove(key("t", "two")).unwrap();
        assert_eq!(s.all_lease_resources().unwrap().len(), 1);
        let stats = s.collect_garbage(Duration::from_secs(3600)).unwrap();
        assert_eq!(stats.lease_resources, 1, "{stats:?}");
        assert!(s.all_lease_resources().unwrap().is_empty());
        for d in [&d1, &d2] {
            assert!(s.content_info("t", d).is_err(), "{d} collected");
        }
    }
}
