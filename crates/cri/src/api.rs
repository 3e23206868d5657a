//! The CRI's way into the daemon: containerd API clients on berthd's own socket, in the
//! `k8s.io` namespace. Everything the CRI creates (containers, snapshots, tasks, images) goes
//! through the same services `ctr` uses, so `ctr -n k8s.io` sees it, and namespaces, leases and
//! garbage collection are enforced in one place.

use std::path::PathBuf;
use std::time::Duration;

use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{InfoRequest, ReadContentRequest};
use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
use berth_api::containerd::services::events::v1::events_client::EventsClient;
use berth_api::containerd::services::images::v1::images_client::ImagesClient;
use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::tasks::v1::tasks_client::TasksClient;
use hyper_util::rt::TokioIo;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Status};

/// The containerd namespace of everything the CRI makes, as containerd's CRI plugin.
pub const NAMESPACE: &str = "k8s.io";

/// Clients of the daemon's services, every call in [`NAMESPACE`].
#[derive(Debug, Clone)]
pub(crate) struct Api {
    channel: Channel,
    ns: MetadataValue<Ascii>,
}

impl Api {
    /// A channel that dials `socket` on first use (the daemon is not serving yet when the CRI is
    /// made).
    pub(crate) fn lazy(socket: PathBuf) -> Api {
        let channel = Endpoint::from_static("http://berthd.local")
            .connect_timeout(Duration::from_secs(10))
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }));
        Api {
            channel,
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

    pub(crate) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub(crate) fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub(crate) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub(crate) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub(crate) fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    pub(crate) fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub(crate) fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub(crate) fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }

    /// A whole blob of the content store.
    pub(crate) async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, Status> {
        let info = self
            .content()
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
            .content()
            .read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await?
            .into_inner();
        let mut out = Vec::with_capacity(info.size as usize);
        while let Some(chunk) = stream.message().await? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }
}
