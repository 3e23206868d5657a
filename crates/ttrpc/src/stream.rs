//! Server-side stream halves handed to streaming handlers, and the shared frame writer.

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::frame::{FLAG_NO_DATA, FLAG_REMOTE_CLOSED, MAX_DATA_LEN, MessageType, encode_frame};
use crate::status::{Code, Status};

/// Queue of encoded frames for one connection's writer task.
pub(crate) type FrameSink = mpsc::UnboundedSender<Vec<u8>>;

/// Spawns the task that owns the write half of a connection. Frames queued while a write is in
/// progress are coalesced into one write, so concurrent calls share syscalls. No buffer is
/// kept between writes: an idle connection (one per container in the daemon) holds nothing.
pub(crate) fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(mut w: W) -> FrameSink {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(mut batch) = rx.recv().await {
            while batch.len() < COALESCE_MAX
                && let Ok(more) = rx.try_recv()
            {
                batch.extend_from_slice(&more);
            }
            if w.write_all(&batch).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    tx
}

/// Frames are appended to one write until it is this long.
const COALESCE_MAX: usize = 64 * 1024;

pub(crate) fn too_large(len: usize) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!("message length {len} exceed maximum message size of {MAX_DATA_LEN}"),
    )
}

/// Sends messages on a stream: the server's half of a server-streaming or bidi call.
#[derive(Debug, Clone)]
pub struct SendStream {
    id: u32,
    sink: FrameSink,
}

impl SendStream {
    pub(crate) fn new(id: u32, sink: FrameSink) -> Self {
        SendStream { id, sink }
    }

    /// Sends one marshalled message.
    pub fn send(&self, payload: &[u8]) -> Result<(), Status> {
        if payload.len() > MAX_DATA_LEN {
            return Err(too_large(payload.len()));
        }
        self.sink
            .send(encode_frame(self.id, MessageType::Data, 0, payload))
            .map_err(|_| Status::unavailable("ttrpc: closed"))
    }

    /// Marshals and sends one message.
    pub fn send_msg<M: prost::Message>(&self, msg: &M) -> Result<(), Status> {
        self.send(&msg.encode_to_vec())
    }

    pub(crate) fn close(&self, payload: Option<&[u8]>) -> Result<(), Status> {
        let (flags, data): (u8, &[u8]) = match payload {
            Some(p) if !p.is_empty() => (FLAG_REMOTE_CLOSED, p),
            _ => (FLAG_REMOTE_CLOSED | FLAG_NO_DATA, &[]),
        };
        self.sink
            .send(encode_frame(self.id, MessageType::Data, flags, data))
            .map_err(|_| Status::unavailable("ttrpc: closed"))
    }
}

/// Receives messages on a stream: the server's half of a client-streaming or bidi call.
#[derive(Debug)]
pub struct RecvStream {
    rx: mpsc::Receiver<Bytes>,
}

impl RecvStream {
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        RecvStream { rx }
    }

    /// The next marshalled message; `None` once the client closed its side.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// The next message, decoded.
    pub async fn recv_msg<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        match self.rx.recv().await {
            None => Ok(None),
            Some(b) => M::decode(b)
                .map(Some)
                .map_err(|e| Status::decode_error("stream message", e)),
        }
    }
}
