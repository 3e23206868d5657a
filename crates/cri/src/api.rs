//! The CRI's way into the daemon: its containerd API services, called in process, in the
//! `k8s.io` namespace. Everything the CRI creates (containers, snapshots, tasks, images) goes
//! through the same services `ctr` uses, so `ctr -n k8s.io` sees it, and namespaces, leases and
//! garbage collection are enforced in one place.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::containerd::services::containers::v1::ListContainerMessage;
use berth_api::containerd::services::containers::v1::containers_server::Containers;
use berth_api::containerd::services::content::v1::content_server::Content;
use berth_api::containerd::services::content::v1::{
    InfoRequest, ListContentResponse, ReadContentRequest, ReadContentResponse, WriteContentResponse,
};
use berth_api::containerd::services::diff::v1::diff_server::Diff;
use berth_api::containerd::services::events::v1::Envelope;
use berth_api::containerd::services::events::v1::events_server::Events;
use berth_api::containerd::services::images::v1::images_server::Images;
use berth_api::containerd::services::leases::v1::leases_server::Leases;
use berth_api::containerd::services::snapshots::v1::ListSnapshotsResponse;
use berth_api::containerd::services::snapshots::v1::snapshots_server::Snapshots;
use berth_api::containerd::services::tasks::v1::tasks_server::Tasks;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

/// The containerd namespace of everything the CRI makes, as containerd's CRI plugin.
pub const NAMESPACE: &str = "k8s.io";

/// A server stream of the daemon's services, boxed.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The daemon's services the CRI drives, in process: the same objects its gRPC server serves,
/// called with typed requests (namespace and lease in the request's metadata, as on the wire)
/// and no encoding, socket or HTTP/2 in between. A test can give fakes of them.
#[derive(Clone)]
pub struct Services {
    /// `containerd.services.containers.v1.Containers`.
    pub containers: Arc<dyn Containers<ListStreamStream = BoxStream<ListContainerMessage>>>,
    /// `containerd.services.tasks.v1.Tasks`.
    pub tasks: Arc<dyn Tasks>,
    /// `containerd.services.images.v1.Images`.
    pub images: Arc<dyn Images>,
    /// `containerd.services.snapshots.v1.Snapshots`.
    pub snapshots: Arc<dyn Snapshots<ListStream = BoxStream<ListSnapshotsResponse>>>,
    /// `containerd.services.content.v1.Content` (its Write needs a wire stream: blobs are
    /// written through [`crate::Host::write_blob`]).
    pub content: Arc<
        dyn Content<
                ListStream = BoxStream<ListContentResponse>,
                ReadStream = BoxStream<ReadContentResponse>,
                WriteStream = BoxStream<WriteContentResponse>,
            >,
    >,
    /// `containerd.services.diff.v1.Diff`.
    pub diff: Arc<dyn Diff>,
    /// `containerd.services.leases.v1.Leases`.
    pub leases: Arc<dyn Leases>,
    /// `containerd.services.events.v1.Events`.
    pub events: Arc<dyn Events<SubscribeStream = BoxStream<Envelope>>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}

/// The daemon's services, every call in [`NAMESPACE`].
#[derive(Debug, Clone)]
pub(crate) struct Api {
    svc: Services,
    ns: MetadataValue<Ascii>,
}

impl Api {
    pub(crate) fn new(svc: Services) -> Api {
        Api {
            svc,
            ns: MetadataValue::from_static(NAMESPACE),
        }
    }

    /// `msg` with the namespace header.
    pub(crate) fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", self.ns.clone());
        r
    }

    /// `msg` with the namespace header and a lease.
    /// A new active snapshot `key` on `parent` in `snapshotter`, made under `lease`; its mounts.
    pub(crate) async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        lease: &str,
    ) -> Result<Vec<berth_api::containerd::types::Mount>, Status> {
        let prepare = berth_api::containerd::services::snapshots::v1::PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels: Default::default(),
        };
        let answer = self.snapshots().prepare(self.req_lease(prepare, lease)?);
        Ok(answer.await?.into_inner().mounts)
    }

    pub(crate) fn req_lease<T>(&self, msg: T, lease: &str) -> Result<Request<T>, Status> {
        let mut r = self.req(msg);
        r.metadata_mut().insert(
            "containerd-lease",
            lease
                .parse()
                .map_err(|_| Status::internal(format!("lease {lease:?}: not a header value")))?,
        );
        Ok(r)
    }

    pub(crate) fn containers(
        &self,
    ) -> &dyn Containers<ListStreamStream = BoxStream<ListContainerMessage>> {
        &*self.svc.containers
    }
    pub(crate) fn tasks(&self) -> &dyn Tasks {
        &*self.svc.tasks
    }
    pub(crate) fn images(&self) -> &dyn Images {
        &*self.svc.images
    }
    pub(crate) fn snapshots(
        &self,
    ) -> &dyn Snapshots<ListStream = BoxStream<ListSnapshotsResponse>> {
        &*self.svc.snapshots
    }
    pub(crate) fn diff(&self) -> &dyn Diff {
        &*self.svc.diff
    }
    pub(crate) fn leases(&self) -> &dyn Leases {
        &*self.svc.leases
    }
    pub(crate) fn events(&self) -> &dyn Events<SubscribeStream = BoxStream<Envelope>> {
        &*self.svc.events
    }

    /// A whole blob of the content store.
    pub(crate) async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, Status> {
        let info = self
            .svc
            .content
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await?
            .into_inner()
            .info
            .ok_or_else(|| Status::internal("content info without info"))?;
        if info.size > 64 << 20 {
            return Err(Status::failed_precondition(format!(
                "blob {digest}: {} bytes is too large a document",
                info.size
            )));
        }
        let mut stream = self
            .svc
            .content
            .read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await?
            .into_inner();
        let mut out = Vec::with_capacity(info.size as usize);
        while let Some(chunk) = stream.next().await.transpose()? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }
}
