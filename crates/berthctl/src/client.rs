//! The connection to berthd: a gRPC channel over the unix socket plus the namespace header.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connected client: the channel and the namespace every call carries.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub(crate) channel: Channel,
    namespace: MetadataValue<tonic::metadata::Ascii>,
}

impl Conn {
    pub(crate) async fn connect(
        address: &str,
        namespace: &str,
        timeout_secs: u64,
    ) -> anyhow::Result<Conn> {
        let path = address
            .strip_prefix("unix://")
            .unwrap_or(address)
            .to_string();
        let namespace = namespace
            .parse()
            .map_err(|_| anyhow::anyhow!("namespace {namespace:?} is not a valid header value"))?;
        // The URI is a placeholder: the connector below always dials the unix socket.
        let channel = Endpoint::try_from("http://berthd.local")?
            .connect_timeout(Duration::from_secs(timeout_secs))
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .max_frame_size(Some(1 << 20))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| {
                // The transport error wraps the socket's: say the socket's once, with a hint.
                let mut cause: &dyn std::error::Error = &e;
                while let Some(c) = cause.source() {
                    cause = c;
                }
                anyhow::anyhow!(
                    "cannot reach berthd at {address}: {cause} (is it running? --address or \
                     BERTH_ADDRESS names its socket)"
                )
            })?;
        Ok(Conn { channel, namespace })
    }

    /// As [`Conn::req`], also attaching the call to a lease.
    pub(crate) fn req_lease<T>(&self, msg: T, lease: &str) -> anyhow::Result<tonic::Request<T>> {
        let mut r = self.req(msg);
        r.metadata_mut().insert(
            "containerd-lease",
            lease
                .parse()
                .map_err(|_| anyhow::anyhow!("lease id {lease:?} is not a valid header value"))?,
        );
        Ok(r)
    }

    /// Wraps a message in a request carrying the namespace header.
    pub(crate) fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        r
    }
}
