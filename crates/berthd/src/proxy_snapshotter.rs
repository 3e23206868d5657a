//! A snapshotter backend that forwards to an external process serving containerd's Snapshots
//! gRPC API on a unix socket (`[proxy_plugins.<name>] type = "snapshot"` in the config), so
//! remote snapshotters plug into berthd as they do into containerd.
//!
//! berthd keeps the namespaced metadata (names, parents, labels, leases) as for its own
//! backends; the remote process sees one snapshot per backend id: an active snapshot or view
//! keyed by the id, committed as `berth.committed.<id>`. Calls carry the namespace
//! `berth-proxy`. It lives in the daemon, not in `crates/snapshot`, because it is a gRPC
//! adapter and the core crates know nothing of gRPC.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use berth_snapshot::{Kind, Mount, SnapshotError, Snapshotter, Usage};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Namespace sent to the remote snapshotter.
const NAMESPACE: &str = "berth-proxy";
/// Prefix of the names committed snapshots have on the remote side.
const COMMITTED: &str = "berth.committed.";
/// How long one remote call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A proxy to one remote snapshotter.
#[derive(Debug)]
pub(crate) struct Proxy {
    name: String,
    /// The snapshotter name sent to the remote.
    remote_name: String,
    address: PathBuf,
    channel: Channel,
    /// Remote calls run here: the store calls backends synchronously, from any thread.
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // May be dropped on an async thread, where a runtime cannot block to shut down.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn remote(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Remote(e.to_string())
}

/// Labels for what we create on the remote: a GC root, so that a remote with its own collector
/// (containerd, or another berthd) keeps it; berthd's own GC decides when it goes.
fn owned() -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([(
        "containerd.io/gc.root".to_string(),
        "berth-proxy".to_string(),
    )])
}

fn committed(id: &str) -> String {
    format!("{COMMITTED}{id}")
}

impl Proxy {
    /// A proxy named `name` for the snapshotter serving on `address` (connected lazily, so
    /// berthd starts while the remote process is still coming up).
    pub(crate) fn new(name: &str, remote_name: &str, address: &Path) -> anyhow::Result<Proxy> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("proxy-{name}"))
            .enable_all()
            .build()?;
        let path = address.to_path_buf();
        let channel = {
            let _g = rt.enter();
            Endpoint::try_from("http://snapshotter.local")?
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
        };
        Ok(Proxy {
            name: name.to_string(),
            remote_name: if remote_name.is_empty() {
                name.to_string()
            } else {
                remote_name.to_string()
            },
            address: address.to_path_buf(),
            channel,
            rt: Some(rt),
        })
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "containerd-namespace",
            tonic::metadata::MetadataValue::from_static(NAMESPACE),
        );
        r.set_timeout(CALL_TIMEOUT);
        r
    }

    /// Runs `f` on the proxy's runtime and waits for it (from any thread, async or not).
    fn call<T, F>(&self, f: impl FnOnce(SnapshotsClient<Channel>) -> F) -> Result<T, SnapshotError>
    where
        F: std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(SnapshotsClient::new(self.channel.clone()));
        let (tx, rx) = std::sync::mpsc::channel();
        let Some(rt) = self.rt.as_ref() else {
            return Err(remote(format!("{}: shutting down", self.name)));
        };
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv() {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(st)) => Err(remote(format!(
                "{} ({}): {} ({:?})",
                self.name,
                self.address.display(),
                st.message(),
                st.code()
            ))),
            Err(_) => Err(remote(format!("{}: the call was dropped", self.name))),
        }
    }

    fn pb_mounts(m: Vec<berth_api::containerd::types::Mount>) -> Vec<Mount> {
        crate::pb::mounts_from_pb(m)
    }
}

impl Snapshotter for Proxy {
    fn name(&self) -> &str {
        &self.name
    }

    fn root(&self) -> &Path {
        &self.address
    }

    /// The remote snapshotter keeps its own directories: nothing of ours to empty.
    fn empty_trash(&self) {}

    fn capabilities(&self) -> Vec<String> {
        Vec::new()
    }

    fn create(&self, id: &str, kind: Kind, parents: &[String]) -> Result<(), SnapshotError> {
        let parent = parents.first().map(|p| committed(p)).unwrap_or_default();
        let key = id.to_string();
        match kind {
            Kind::View => {
                let r = self.req(ViewSnapshotRequest {
                    snapshotter: self.remote_name.clone(),
                    key,
                    parent,
                    labels: owned(),
                });
                self.call(|mut c| async move { c.view(r).await.map(|_| ()) })
            }
            _ => {
                let r = self.req(PrepareSnapshotRequest {
                    snapshotter: self.remote_name.clone(),
                    key,
                    parent,
                    labels: owned(),
                });
                self.call(|mut c| async move { c.prepare(r).await.map(|_| ()) })
            }
        }
    }

    fn mounts(
        &self,
        id: &str,
        _kind: Kind,
        _parents: &[String],
    ) -> Result<Vec<Mount>, SnapshotError> {
        let r = self.req(MountsRequest {
            snapshotter: self.remote_name.clone(),
            key: id.to_string(),
        });
        let m =
            self.call(|mut c| async move { c.mounts(r).await.map(|r| r.into_inner().mounts) })?;
        Ok(Proxy::pb_mounts(m))
    }

    fn commit(&self, id: &str) -> Result<(), SnapshotError> {
        let r = self.req(CommitSnapshotRequest {
            snapshotter: self.remote_name.clone(),
            name: committed(id),
            key: id.to_string(),
            labels: owned(),
            parent: String::new(),
        });
        self.call(|mut c| async move { c.commit(r).await.map(|_| ()) })
    }

    fn remove(&self, id: &str) -> Result<(), SnapshotError> {
        for key in [id.to_string(), committed(id)] {
            let r = self.req(RemoveSnapshotRequest {
                snapshotter: self.remote_name.clone(),
                key,
            });
            let res = self.call(|mut c| async move {
                match c.remove(r).await {
                    Ok(_) => Ok(true),
                    Err(st) if st.code() == tonic::Code::NotFound => Ok(false),
                    Err(st) => Err(st),
                }
            })?;
            if res {
                return Ok(());
            }
        }
        Ok(())
    }

    fn usage(&self, id: &str) -> Result<Usage, SnapshotError> {
        for key in [id.to_string(), committed(id)] {
            let r = self.req(UsageRequest {
                snapshotter: self.remote_name.clone(),
                key,
            });
            let res = self.call(|mut c| async move {
                match c.usage(r).await {
                    Ok(u) => {
                        let u = u.into_inner();
                        Ok(Some(Usage {
                            size: u.size,
                            inodes: u.inodes,
                        }))
                    }
                    Err(st) if st.code() == tonic::Code::NotFound => Ok(None),
                    Err(st) => Err(st),
                }
            })?;
            if let Some(u) = res {
                return Ok(u);
            }
        }
        Err(remote(format!("{}: snapshot {id} not found", self.name)))
    }

    fn exists(&self, id: &str) -> bool {
        // Unreachable remote: keep the record (the repair must not lose data it cannot see).
        [id.to_string(), committed(id)].into_iter().any(|key| {
            let r = self.req(StatSnapshotRequest {
                snapshotter: self.remote_name.clone(),
                key,
            });
            !matches!(
                self.call(|mut c| async move { c.stat(r).await.map(|_| ()) }),
                Err(SnapshotError::Remote(ref m)) if m.contains("NotFound")
            )
        })
    }

    fn ids_on_disk(&self) -> Result<Vec<String>, SnapshotError> {
        let r = self.req(ListSnapshotsRequest {
            snapshotter: self.remote_name.clone(),
            filters: Vec::new(),
        });
        let infos = self.call(|mut c| async move {
            let mut s = c.list(r).await?.into_inner();
            let mut out = Vec::new();
            while let Some(m) = s.message().await? {
                out.extend(m.info.into_iter().map(|i| i.name));
            }
            Ok(out)
        })?;
        Ok(infos
            .into_iter()
            .map(|n| n.strip_prefix(COMMITTED).map(str::to_string).unwrap_or(n))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .collect())
    }

    fn fs(&self, id: &str) -> PathBuf {
        // Not a local directory; only local callers (overlay's parallel apply) use this.
        self.address.join(id)
    }
}
