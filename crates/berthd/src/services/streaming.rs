//! `containerd.services.streaming.v1.Streaming`: client-opened bidirectional streams of `Any`,
//! named by the id in the first message, which other calls (Transfer) then use to send
//! progress and to ask for credentials.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use berth_api::containerd::services::streaming::v1::{StreamInit, streaming_server};
use prost::Name;
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming as InStream};

use super::namespace;

/// Both ends of an open stream, as a server-side user sees them.
#[derive(Debug)]
pub(crate) struct StreamEnds {
    /// Messages to the client; dropping it ends the stream.
    pub(crate) to_client: mpsc::Sender<Any>,
    /// Messages from the client.
    pub(crate) from_client: mpsc::Receiver<Any>,
}

/// Open streams by namespace and id, waiting to be taken by the call that names them.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    open: Mutex<HashMap<(String, String), StreamEnds>>,
}

impl Streams {
    /// Takes the stream `id` of namespace `ns` (each stream has one user).
    pub(crate) fn take(&self, ns: &str, id: &str) -> Option<StreamEnds> {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ns.to_string(), id.to_string()))
    }
}

/// Encodes a message as containerd's typeurl does: the bare full name.
pub(crate) fn any<M: Name>(m: &M) -> Any {
    Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

/// Decodes an `Any` holding `M` (with or without a `type.googleapis.com/` style prefix).
pub(crate) fn from_any<M: Name + Default>(a: &Any, field: &str) -> Result<M, Status> {
    let name = a.type_url.rsplit('/').next().unwrap_or_default();
    if name != M::full_name() {
        return Err(Status::invalid_argument(format!(
            "{field}: expected {}, got {:?}",
            M::full_name(),
            a.type_url
        )));
    }
    M::decode(a.value.as_slice())
        .map_err(|e| Status::invalid_argument(format!("{field}: {}: {e}", M::full_name())))
}

#[derive(Debug, Clone)]
pub(crate) struct Streaming {
    streams: Arc<Streams>,
}

impl Streaming {
    pub(crate) fn new(streams: Arc<Streams>) -> Self {
        Streaming { streams }
    }
}

type AnyStream = Pin<Box<dyn Stream<Item = Result<Any, Status>> + Send>>;

#[tonic::async_trait]
impl streaming_server::Streaming for Streaming {
    type StreamStream = AnyStream;

    async fn stream(
        &self,
        req: Request<InStream<Any>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let ns = namespace(&req)?;
        let mut incoming = req.into_inner();
        let first = incoming.message().await?.ok_or_else(|| {
            Status::invalid_argument("stream: the first message must be a StreamInit")
        })?;
        let init: StreamInit = from_any(&first, "stream init")?;
        if init.id.is_empty() {
            return Err(Status::invalid_argument("stream init: id: required"));
        }
        let (to_client, mut out_rx) = mpsc::channel::<Any>(64);
        let (in_tx, from_client) = mpsc::channel::<Any>(16);
        {
            let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
            let k = (ns.clone(), init.id.clone());
            if open.contains_key(&k) {
                return Err(Status::already_exists(format!("stream {:?}", init.id)));
            }
            open.insert(
                k,
                StreamEnds {
                    to_client,
                    from_client,
                },
            );
        }
        let streams = self.streams.clone();
        let id = init.id.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = incoming.message().await {
                if in_tx.send(m).await.is_err() {
                    break;
                }
            }
            // The client went away before anyone took the stream: forget it.
            streams.take(&ns, &id);
        });
        let (tx, rx) = mpsc::channel::<Result<Any, Status>>(16);
        tokio::spawn(async move {
            let ack = Any {
                type_url: "google.protobuf.Empty".into(),
                value: Vec::new(),
            };
            if tx.send(Ok(ack)).await.is_err() {
                return;
            }
            while let Some(m) = out_rx.recv().await {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
        });
        let out: AnyStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(out))
    }
}
