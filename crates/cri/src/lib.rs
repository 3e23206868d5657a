//! `berth-cri`: Kubernetes' Container Runtime Interface (`runtime.v1.RuntimeService` and
//! `ImageService`) for berthd.
//!
//! In `DESIGN.md` terms this is a services-layer adapter that, like containerd's CRI plugin,
//! drives the daemon through the containerd API's services (in the `k8s.io` namespace, called
//! in process through [`Services`], the same objects berthd's gRPC server serves: typed
//! requests, no socket or encoding in between): a pod sandbox is a pause container holding the
//! pod's namespaces, a CRI container is a containerd container whose task joins them, and CRI
//! state lives in the records' extensions in the sled store. What those services have no
//! in-process verb for (a pull with the caller's credentials, reading a file of a rootfs,
//! writing a blob) the daemon provides through [`Host`].
//!
//! The two gRPC services are tables (`rpcs.rs`): each RPC and the CRI core's verb that answers
//! it. The core (`state.rs`'s `Inner`) keeps its jobs in one file each: sandboxes, containers,
//! exec and streaming URLs, stats, images, the runtime's status; `fake.rs` is an in-memory
//! containerd its unit tests run on.

#![warn(missing_docs)]

#[macro_use]
mod rpcs;

mod api;
mod cni;
mod config;
mod container;
mod exec;
#[cfg(test)]
mod fake;
mod image;
mod image_service;
mod meta;
mod metrics;
mod netns;
mod pause;
mod resources;
mod runtime_service;
mod sandbox;
mod seccomp_default;
mod spec;
mod state;
mod stats;
mod status;
mod streaming;
mod user;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use berth_api::containerd::services::images::v1::Image;
use berth_api::containerd::types::Mount;
use berth_api::runtime::v1::image_service_server::ImageServiceServer;
use berth_api::runtime::v1::runtime_service_server::RuntimeServiceServer;
use tonic::Status;

pub use api::{BoxStream, NAMESPACE, Services};
pub use cni::CniConfig;
pub use config::{BERTH_RUNTIME, CriConfig, RuntimeHandler};
pub use image_service::ImageService;
pub use runtime_service::RuntimeService;

/// A boxed future, for [`Host`]'s object-safe methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Registry credentials of a PullImage call.
#[derive(Clone, Default)]
pub struct PullAuth {
    /// User name (empty with a token).
    pub username: String,
    /// Password, or an identity/registry token when `username` is empty.
    pub secret: String,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What the daemon does for the CRI beyond its gRPC API.
pub trait Host: Send + Sync + std::fmt::Debug + 'static {
    /// Pulls and unpacks `reference` (normalised) into `snapshotter` in `namespace`, with
    /// `auth` for the registry if given, through the daemon's pull engine; returns the image
    /// record.
    fn pull<'a>(
        &'a self,
        namespace: &'a str,
        reference: &'a str,
        snapshotter: &'a str,
        auth: Option<PullAuth>,
    ) -> BoxFuture<'a, Result<Image, Status>>;

    /// Reads `path` (absolute, inside the root) of the file system `mounts` make, read-only;
    /// `None` if it does not exist.
    fn read_rootfs_file<'a>(
        &'a self,
        mounts: Vec<Mount>,
        path: &'a str,
    ) -> BoxFuture<'a, std::io::Result<Option<Vec<u8>>>>;

    /// Writes `data` as a blob of the content store in `namespace` under `lease`, with
    /// `labels`; its digest. Content that exists already is fine.
    fn write_blob<'a>(
        &'a self,
        namespace: &'a str,
        lease: &'a str,
        data: &'a [u8],
        labels: std::collections::HashMap<String, String>,
    ) -> BoxFuture<'a, Result<String, Status>>;
}

/// Where the CRI keeps its files.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Persistent files (pod hosts, hostname, resolv.conf): `<root>/io.berth.cri`.
    pub root: PathBuf,
    /// Runtime files (network namespaces, /dev/shm mounts, exec FIFOs): `<state>/io.berth.cri`.
    pub state: PathBuf,
    /// The image file system's mount point (the snapshotter's root), for ImageFsInfo.
    pub image_fs: PathBuf,
}

/// The CRI: both services, sharing one state.
#[derive(Debug, Clone)]
pub struct Cri {
    inner: Arc<state::Inner>,
}

impl Cri {
    /// Makes the CRI. Nothing is read until [`Cri::start`] runs, after the daemon serves.
    pub fn new(
        cfg: CriConfig,
        dirs: Dirs,
        services: Services,
        host: Arc<dyn Host>,
    ) -> Result<Cri, String> {
        cfg.validate()?;
        Ok(Cri {
            inner: Arc::new(state::Inner::new(cfg, dirs, services, host)),
        })
    }

    /// Once the daemon serves: subscribes to task events, lets `restore` (the daemon's
    /// reconnection to shims, which reports exits that happened while it was down) run, then
    /// loads the CRI's records and reconciles them with the tasks. RPCs wait until then.
    pub fn start<F>(&self, restore: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.start(restore).await });
    }

    /// The `runtime.v1.RuntimeService` server.
    pub fn runtime_service(&self) -> RuntimeServiceServer<RuntimeService> {
        RuntimeServiceServer::new(RuntimeService::new(self.inner.clone()))
    }

    /// The `runtime.v1.ImageService` server.
    pub fn image_service(&self) -> ImageServiceServer<ImageService> {
        ImageServiceServer::new(ImageService::new(self.inner.clone()))
    }
}

/// Nanoseconds since the epoch.
/// A status call's `info`: with `verbose`, `what()` as JSON under `key`; else nothing.
pub(crate) fn verbose_info(
    verbose: bool,
    key: &str,
    what: impl FnOnce() -> serde_json::Value,
) -> std::collections::HashMap<String, String> {
    let mut info = std::collections::HashMap::new();
    if verbose {
        info.insert(key.to_string(), what().to_string());
    }
    info
}

/// A field the request cannot go without.
pub(crate) fn must<T>(field: &str, v: Option<T>) -> Result<T, Status> {
    v.ok_or_else(|| Status::invalid_argument(format!("{field}: must be set")))
}

/// The reference an image spec names ("" when there is none).
pub(crate) fn image_ref(spec: Option<&berth_api::runtime::v1::ImageSpec>) -> String {
    spec.map(|i| i.image.clone()).unwrap_or_default()
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A new object id: 64 hex digits, as containerd's CRI makes them.
pub(crate) fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}
