//! CRI objects and where they are kept. A pod sandbox and a CRI container are each a containerd
//! container in the `k8s.io` namespace: their CRI config (protobuf) and state (JSON) travel as
//! its extensions, so they live in the daemon's sled store and a restarted berthd answers as
//! before. An in-memory index serves reads; every change is written through before the RPC
//! answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_api::containerd::services::containers::v1 as ctrd;
use berth_api::runtime::v1 as cri;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::api::Api;

/// containerd's CRI label saying what a container record is.
pub(crate) const LABEL_KIND: &str = "io.cri-containerd.kind";
/// Extension holding the CRI config (protobuf).
pub(crate) const EXT_CONFIG: &str = "io.berth.cri.config";
/// Extension holding the CRI state (JSON).
pub(crate) const EXT_STATE: &str = "io.berth.cri.state";
const STATE_TYPE: &str = "berth.cri.v1.State";

/// What a sandbox is besides its config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SandboxState {
    pub(crate) name: String,
    pub(crate) created_at: i64,
    /// The pause task runs.
    pub(crate) ready: bool,
    pub(crate) pid: u32,
    /// The pod's network namespace (a bind mount); empty with the host's network.
    pub(crate) netns: String,
    pub(crate) runtime_handler: String,
    pub(crate) runtime_type: String,
    /// The pod's /dev/shm (a tmpfs mount); empty with the host's IPC.
    pub(crate) shm: String,
    pub(crate) image: String,
    /// The pod's IPs from its CNI result (IPv4 first); empty without a CNI network.
    #[serde(default)]
    pub(crate) ips: Vec<String>,
}

/// What a container is besides its config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ContainerState {
    pub(crate) name: String,
    pub(crate) sandbox_id: String,
    /// The image id (config digest).
    pub(crate) image_id: String,
    /// The image's name as resolved at create (a repo digest when there is one).
    pub(crate) image_ref: String,
    pub(crate) created_at: i64,
    pub(crate) started_at: i64,
    pub(crate) finished_at: i64,
    pub(crate) exit_code: i32,
    pub(crate) reason: String,
    pub(crate) message: String,
    pub(crate) pid: u32,
    /// Absolute path of the CRI log, empty for none.
    pub(crate) log_path: String,
    /// The resources in force (protobuf `LinuxContainerResources`), after updates.
    #[serde(with = "b64", default)]
    pub(crate) resources: Vec<u8>,
    pub(crate) uid: i64,
    pub(crate) gid: i64,
    pub(crate) groups: Vec<i64>,
    /// The signal StopContainer sends first (`SIGTERM`, ...).
    pub(crate) stop_signal: String,
    pub(crate) runtime_type: String,
    /// The task's state could not be found out (its shim is gone without an exit).
    pub(crate) unknown: bool,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    pub(crate) id: String,
    pub(crate) config: cri::PodSandboxConfig,
    pub(crate) st: SandboxState,
}

#[derive(Debug, Clone)]
pub(crate) struct Container {
    pub(crate) id: String,
    pub(crate) config: cri::ContainerConfig,
    pub(crate) st: ContainerState,
}

impl Container {
    pub(crate) fn state(&self) -> cri::ContainerState {
        if self.st.unknown {
            cri::ContainerState::ContainerUnknown
        } else if self.st.finished_at > 0 {
            cri::ContainerState::ContainerExited
        } else if self.st.started_at > 0 {
            cri::ContainerState::ContainerRunning
        } else {
            cri::ContainerState::ContainerCreated
        }
    }

    pub(crate) fn resources(&self) -> Option<cri::LinuxContainerResources> {
        if self.st.resources.is_empty() {
            return self.config.linux.as_ref().and_then(|l| l.resources.clone());
        }
        cri::LinuxContainerResources::decode(&self.st.resources[..]).ok()
    }
}

impl Sandbox {
    pub(crate) fn state(&self) -> cri::PodSandboxState {
        if self.st.ready {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        }
    }

    pub(crate) fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }
}

fn state_any<T: Serialize>(st: &T) -> prost_types::Any {
    prost_types::Any {
        type_url: STATE_TYPE.into(),
        value: serde_json::to_vec(st).expect("state serialises"),
    }
}

fn config_any<T: prost::Name>(m: &T) -> prost_types::Any {
    prost_types::Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    }
}

/// The extensions of a new record.
pub(crate) fn extensions<C: prost::Name, S: Serialize>(
    config: &C,
    st: &S,
) -> HashMap<String, prost_types::Any> {
    HashMap::from([
        (EXT_CONFIG.to_string(), config_any(config)),
        (EXT_STATE.to_string(), state_any(st)),
    ])
}

/// The in-memory index of sandboxes and containers, and the names they hold.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) sandboxes: HashMap<String, Sandbox>,
    pub(crate) containers: HashMap<String, Container>,
    /// Reserved names (sandbox and container names have different shapes) → id.
    pub(crate) names: HashMap<String, String>,
}

/// The index behind a lock. A std mutex: it is held only to copy records in and out, never
/// across an await.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    inner: Arc<Mutex<Index>>,
    /// One async lock per object id, held across a lifecycle change (start, stop, exit
    /// handling, removal) so those never interleave on one object.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Meta {
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Index) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    pub(crate) async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let l = {
            let mut g = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            g.entry(id.to_string()).or_default().clone()
        };
        l.lock_owned().await
    }

    pub(crate) fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Reserves `name` for `id`; the error names the holder.
    pub(crate) fn reserve(&self, name: &str, id: &str, what: &str) -> Result<(), Status> {
        self.with(|ix| match ix.names.get(name) {
            Some(holder) if holder != id => Err(Status::already_exists(format!(
                "{what} name {name:?} is reserved for {holder:?}"
            ))),
            _ => {
                ix.names.insert(name.to_string(), id.to_string());
                Ok(())
            }
        })
    }

    pub(crate) fn release(&self, name: &str, id: &str) {
        self.with(|ix| {
            if ix.names.get(name).is_some_and(|h| h == id) {
                ix.names.remove(name);
            }
        });
    }

    pub(crate) fn sandbox(&self, id: &str) -> Option<Sandbox> {
        self.with(|ix| ix.sandboxes.get(id).cloned())
    }

    pub(crate) fn container(&self, id: &str) -> Option<Container> {
        self.with(|ix| ix.containers.get(id).cloned())
    }

    /// Finds a sandbox by id or unique id prefix (as crictl allows).
    pub(crate) fn find_sandbox(&self, id: &str) -> Result<Sandbox, Status> {
        self.with(|ix| find(&ix.sandboxes, id, "sandbox"))
    }

    /// The sandbox `id` (or an unambiguous prefix) names; none if it names nothing.
    pub(crate) fn sandbox_if_any(&self, id: &str) -> Result<Option<Sandbox>, Status> {
        match self.find_sandbox(id) {
            Ok(s) => Ok(Some(s)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// The ids of sandbox `id`'s containers.
    pub(crate) fn members(&self, id: &str) -> Vec<String> {
        self.with(|ix| {
            let of_it = ix.containers.values().filter(|c| c.st.sandbox_id == id);
            of_it.map(|c| c.id.clone()).collect()
        })
    }

    pub(crate) fn find_container(&self, id: &str) -> Result<Container, Status> {
        self.with(|ix| find(&ix.containers, id, "container"))
    }

    /// Loads every CRI record of the namespace.
    pub(crate) async fn load(&self, api: &Api) -> Result<(usize, usize), Status> {
        let list = api
            .containers()
            .list(api.req(ctrd::ListContainersRequest {
                filters: vec![format!("labels.\"{LABEL_KIND}\"")],
            }))
            .await?
            .into_inner()
            .containers;
        let (mut s, mut c) = (0, 0);
        for rec in list {
            let kind = rec.labels.get(LABEL_KIND).cloned().unwrap_or_default();
            let (Some(cfg), Some(st)) = (
                rec.extensions.get(EXT_CONFIG),
                rec.extensions.get(EXT_STATE),
            ) else {
                continue;
            };
            match kind.as_str() {
                "sandbox" => {
                    let (Ok(config), Ok(st)) = (
                        cri::PodSandboxConfig::decode(&cfg.value[..]),
                        serde_json::from_slice::<SandboxState>(&st.value),
                    ) else {
                        tracing::warn!(id = %rec.id, "skipping a sandbox record that does not decode");
                        continue;
                    };
                    self.with(|ix| {
                        ix.names.insert(st.name.clone(), rec.id.clone());
                        ix.sandboxes.insert(
                            rec.id.clone(),
                            Sandbox {
                                id: rec.id.clone(),
                                config,
                                st,
                            },
                        );
                    });
                    s += 1;
                }
                "container" => {
                    let (Ok(config), Ok(st)) = (
                        cri::ContainerConfig::decode(&cfg.value[..]),
                        serde_json::from_slice::<ContainerState>(&st.value),
                    ) else {
                        tracing::warn!(id = %rec.id, "skipping a container record that does not decode");
                        continue;
                    };
                    self.with(|ix| {
                        ix.names.insert(st.name.clone(), rec.id.clone());
                        ix.containers.insert(
                            rec.id.clone(),
                            Container {
                                id: rec.id.clone(),
                                config,
                                st,
                            },
                        );
                    });
                    c += 1;
                }
                _ => {}
            }
        }
        Ok((s, c))
    }

    /// Writes a sandbox's state through to the store, then to the index.
    pub(crate) async fn save_sandbox(&self, api: &Api, sb: &Sandbox) -> Result<(), Status> {
        save_state(api, &sb.id, &sb.st).await?;
        self.with(|ix| ix.sandboxes.insert(sb.id.clone(), sb.clone()));
        Ok(())
    }

    /// Writes a container's state through to the store, then to the index.
    pub(crate) async fn save_container(&self, api: &Api, c: &Container) -> Result<(), Status> {
        save_state(api, &c.id, &c.st).await?;
        self.with(|ix| ix.containers.insert(c.id.clone(), c.clone()));
        Ok(())
    }
}

async fn save_state<S: Serialize>(api: &Api, id: &str, st: &S) -> Result<(), Status> {
    let c = ctrd::Container {
        id: id.to_string(),
        extensions: HashMap::from([(EXT_STATE.to_string(), state_any(st))]),
        ..Default::default()
    };
    api.containers()
        .update(api.req(ctrd::UpdateContainerRequest {
            container: Some(c),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("extensions.{EXT_STATE}")],
            }),
        }))
        .await?;
    Ok(())
}

fn find<T: Clone>(map: &HashMap<String, T>, id: &str, what: &str) -> Result<T, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{what} id: must be set")));
    }
    if let Some(v) = map.get(id) {
        return Ok(v.clone());
    }
    let mut hits = map.iter().filter(|(k, _)| k.starts_with(id));
    match (hits.next(), hits.next()) {
        (Some((_, v)), None) => Ok(v.clone()),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "{what} id {id:?}: the prefix matches more than one"
        ))),
        _ => Err(Status::not_found(format!("{what} {id:?}: not found"))),
    }
}

#[cfg(test)]
mod tests;
