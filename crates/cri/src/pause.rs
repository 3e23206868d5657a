//! Berth's own pause image: the static `berth-pause` program (built by this crate's build
//! script) as a one-layer OCI image, made in the content store and unpacked locally, so pods run
//! with no registry at all.

use std::collections::HashMap;

use berth_api::containerd::services::diff::v1::ApplyRequest;
use berth_api::containerd::services::leases::v1 as leases;
use berth_api::containerd::services::snapshots::v1 as snaps;
use berth_api::containerd::types::Descriptor;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tonic::Status;

use crate::api::Api;
use crate::image::{ImageInfo, InfoCache, add_cri_records};

/// The pause program.
pub(crate) const PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// The name of the built-in image when the configuration names none.
pub(crate) fn builtin_name() -> String {
    format!("berth.local/pause:{}", env!("CARGO_PKG_VERSION"))
}

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// The layer: `/pause`, mode 0755, root-owned, mtime 0 (the same bytes every time).
pub(crate) fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("pause").expect("a short path");
    h.set_size(PAUSE.len() as u64);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, PAUSE).expect("writing to memory");
    b.into_inner().expect("writing to memory")
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Makes the pause image under `name` (and its id and digest names), unpacked in `snapshotter`.
pub(crate) async fn make_image(
    api: &Api,
    host: &dyn crate::Host,
    cache: &InfoCache,
    name: &str,
    snapshotter: &str,
) -> Result<ImageInfo, Status> {
    let layer = layer();
    let diff_id = digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": arch(),
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "berth-pause", "comment": "Berth's pause program"}],
    }))
    .expect("JSON");
    let lease = format!("berth-pause-{}", uuid::Uuid::new_v4().simple());
    api.leases()
        .create(api.req(leases::CreateRequest {
            id: lease.clone(),
            labels: HashMap::new(),
        }))
        .await?;
    let result = async {
        let layer_digest = host
            .write_blob(crate::NAMESPACE, &lease, &layer, HashMap::new())
            .await?;
        let config_digest = host
            .write_blob(
                crate::NAMESPACE,
                &lease,
                &config,
                HashMap::from([(
                    format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                    diff_id.clone(),
                )]),
            )
            .await?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer.len()}],
        }))
        .expect("JSON");
        let manifest_digest = host
            .write_blob(
                crate::NAMESPACE,
                &lease,
                &manifest,
                HashMap::from([
                    (
                        "containerd.io/gc.ref.content.config".to_string(),
                        config_digest.clone(),
                    ),
                    (
                        "containerd.io/gc.ref.content.l.0".to_string(),
                        layer_digest.clone(),
                    ),
                ]),
            )
            .await?;
        unpack(
            api,
            &lease,
            snapshotter,
            &diff_id,
            &layer_digest,
            layer.len(),
        )
        .await?;
        let target = Descriptor {
            media_type: MANIFEST_TYPE.into(),
            digest: manifest_digest,
            size: manifest.len() as i64,
            annotations: HashMap::new(),
        };
        add_cri_records(api, cache, name, &target, true).await
    }
    .await;
    let _ = api
        .leases()
        .delete(api.req(leases::DeleteRequest {
            id: lease,
            sync: false,
        }))
        .await;
    result
}

/// Applies the layer into a snapshot named by its chain id (one layer: its diff id).
async fn unpack(
    api: &Api,
    lease: &str,
    sn: &str,
    chain: &str,
    layer: &str,
    size: usize,
) -> Result<(), Status> {
    let stat = api
        .snapshots()
        .stat(api.req(snaps::StatSnapshotRequest {
            snapshotter: sn.into(),
            key: chain.into(),
        }))
        .await;
    if stat.is_ok() {
        return Ok(());
    }
    let key = format!("extract-{} {chain}", uuid::Uuid::new_v4().simple());
    let mounts = api.prepare_snapshot(sn, &key, "", lease).await?;
    let applied = api
        .diff()
        .apply(api.req_lease(
            ApplyRequest {
                diff: Some(Descriptor {
                    media_type: LAYER_TYPE.into(),
                    digest: layer.into(),
                    size: size as i64,
                    annotations: HashMap::new(),
                }),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            },
            lease,
        )?)
        .await;
    let committed = match applied {
        Ok(_) => api
            .snapshots()
            .commit(api.req_lease(
                snaps::CommitSnapshotRequest {
                    snapshotter: sn.into(),
                    name: chain.into(),
                    key: key.clone(),
                    labels: HashMap::new(),
                    parent: String::new(),
                },
                lease,
            )?)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = committed {
        let _ = api
            .snapshots()
            .remove(api.req(snaps::RemoveSnapshotRequest {
                snapshotter: sn.into(),
                key,
            }))
            .await;
        if e.code() != tonic::Code::AlreadyExists {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_is_reproducible_and_holds_the_program() {
        assert_eq!(layer(), layer());
        let bytes = layer();
        let mut a = tar::Archive::new(&bytes[..]);
        let mut e = a.entries().unwrap();
        let f = e.next().unwrap().unwrap();
        assert_eq!(f.path().unwrap().to_str(), Some("pause"));
        assert_eq!(f.header().mode().unwrap(), 0o755);
        assert_eq!(f.header().size().unwrap(), PAUSE.len() as u64);
        assert!(PAUSE.starts_with(b"\x7fELF"));
    }
}
