//! JSON records in sled trees, keyed `<namespace>/<id>`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;

pub(crate) fn key(ns: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 1 + id.len());
    k.extend_from_slice(ns.as_bytes());
    k.push(b'/');
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn prefix(ns: &str) -> Vec<u8> {
    key(ns, "")
}

pub(crate) fn decode<T: DeserializeOwned>(tree: &str, k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: format!("{tree}/{}", String::from_utf8_lossy(k)),
        reason: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records are plain data and always serialize")
}

/// Id part of a `<ns>/<id>` key.
pub(crate) fn id_of(ns: &str, k: &[u8]) -> String {
    String::from_utf8_lossy(&k[ns.len() + 1..]).into_owned()
}

/// Every `(id, record)` under `ns` in `tree`.
pub(crate) fn list<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &str,
    ns: &str,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(prefix(ns)) {
        let (k, v) = kv?;
        out.push((id_of(ns, &k), decode(name, &k, &v)?));
    }
    Ok(out)
}
