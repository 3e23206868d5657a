//! The ttrpc client: many concurrent calls multiplexed on one unix connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::context::Metadata;
use crate::frame::{
    Decoded, FLAG_NO_DATA, FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN, FrameReader, MAX_DATA_LEN,
    MessageType, encode_frame,
};
use crate::proto::{Request, Response};
use crate::server::MethodKind;
use crate::status::{Code, Status};
use crate::stream::{FrameSink, spawn_writer, too_large};

/// Per-call options: metadata and a timeout (sent as `timeout_nano` and enforced locally).
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Metadata sent with the request.
    pub metadata: Metadata,
    /// How long to wait for the answer.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Options with a timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        CallOptions {
            timeout: Some(timeout),
            ..Default::default()
        }
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: &str, value: impl Into<String>) -> Self {
        self.metadata.append(key, value);
        self
    }
}

enum StreamEvent {
    Data(Bytes),
    Closed,
    Response(Result<Bytes, Status>),
}

enum Slot {
    Unary(oneshot::Sender<Result<Bytes, Status>>),
    Stream(mpsc::UnboundedSender<StreamEvent>),
}

struct Calls {
    next_id: u32,
    slots: HashMap<u32, Slot>,
}

struct Inner {
    sink: FrameSink,
    // std Mutex: held to allocate an id, queue the request frame and touch the map — never across
    // an await. Allocating and queueing under one lock keeps ids strictly increasing on the wire.
    calls: Mutex<Calls>,
    closed: AtomicBool,
}

impl Inner {
    fn remove(&self, id: u32) -> Option<Slot> {
        self.calls.lock().expect("calls lock").slots.remove(&id)
    }

    fn open(&self, slot: Slot, frame: impl FnOnce(u32) -> Vec<u8>) -> Result<u32, Status> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Status::unavailable("ttrpc: closed"));
        }
        let mut calls = self.calls.lock().expect("calls lock");
        let id = calls.next_id;
        calls.next_id = id.wrapping_add(2);
        self.sink
            .send(frame(id))
            .map_err(|_| Status::unavailable("ttrpc: closed"))?;
        calls.slots.insert(id, slot);
        Ok(id)
    }

    fn fail_all(&self) {
        self.closed.store(true, Ordering::Release);
        let slots = std::mem::take(&mut self.calls.lock().expect("calls lock").slots);
        for (_, slot) in slots {
            let st = Status::unavailable("ttrpc: closed");
            match slot {
                Slot::Unary(tx) => {
                    let _ = tx.send(Err(st));
                }
                Slot::Stream(tx) => {
                    let _ = tx.send(StreamEvent::Response(Err(st)));
                }
            }
        }
    }
}

/// A connection to a ttrpc server. Cheap to clone; all clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

fn decode_response(payload: Bytes) -> Result<Bytes, Status> {
    let resp = Response::decode(payload).map_err(|e| Status::decode_error("response", e))?;
    match resp.status {
        Some(s) if s.code != 0 => Err(Status::from_proto(s)),
        _ => Ok(Bytes::from(resp.payload)),
    }
}

impl Client {
    /// Connects to a server listening on the unix socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> std::io::Result<Client> {
        let stream = UnixStream::connect(path).await?;
        Ok(Client::new(stream))
    }

    /// Wraps an already connected stream.
    pub fn new(stream: UnixStream) -> Client {
        let (rd, wr) = stream.into_split();
        let mut rd = FrameReader::new(rd);
        let sink = spawn_writer(wr);
        let inner = Arc::new(Inner {
            sink,
            calls: Mutex::new(Calls {
                next_id: 1,
                slots: HashMap::new(),
            }),
            closed: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                let incoming = rd.next().await;
                let Some(inner) = weak.upgrade() else { return };
                match incoming {
                    Ok(Some(Decoded::Frame(h, payload))) => match h.message_type {
                        MessageType::Response => match inner.remove(h.stream_id) {
                            Some(Slot::Unary(tx)) => {
                                let _ = tx.send(decode_response(payload));
                            }
                            Some(Slot::Stream(tx)) => {
                                let _ = tx.send(StreamEvent::Response(decode_response(payload)));
                            }
                            None => {}
                        },
                        MessageType::Data => {
                            let closed = h.flags & FLAG_REMOTE_CLOSED != 0;
                            let slot = if closed {
                                inner.remove(h.stream_id)
                            } else {
                                let calls = inner.calls.lock().expect("calls lock");
                                match calls.slots.get(&h.stream_id) {
                                    Some(Slot::Stream(tx)) => Some(Slot::Stream(tx.clone())),
                                    _ => None,
                                }
                            };
                            if let Some(Slot::Stream(tx)) = slot {
                                if h.flags & FLAG_NO_DATA == 0 {
                                    let _ = tx.send(StreamEvent::Data(payload));
                                }
                                if closed {
                                    let _ = tx.send(StreamEvent::Closed);
                                }
                            }
                        }
                        _ => {}
                    },
                    Ok(Some(Decoded::TooLarge(h))) => {
                        let st = too_large(h.length as usize);
                        match inner.remove(h.stream_id) {
                            Some(Slot::Unary(tx)) => {
                                let _ = tx.send(Err(st));
                            }
                            Some(Slot::Stream(tx)) => {
                                let _ = tx.send(StreamEvent::Response(Err(st)));
                            }
                            None => {}
                        }
                    }
                    Ok(None) | Err(_) => {
                        inner.fail_all();
                        return;
                    }
                }
            }
        });
        Client { inner }
    }

    /// True once the connection has gone away.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn request_frame(
        service: &str,
        method: &str,
        payload: Vec<u8>,
        opts: &CallOptions,
        flags: u8,
    ) -> Result<impl FnOnce(u32) -> Vec<u8>, Status> {
        let req = Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: opts
                .timeout
                .map(|t| t.as_nanos().min(i64::MAX as u128) as i64)
                .unwrap_or(0),
            metadata: opts.metadata.to_pairs(),
        };
        let body = req.encode_to_vec();
        if body.len() > MAX_DATA_LEN {
            return Err(too_large(body.len()));
        }
        Ok(move |id| encode_frame(id, MessageType::Request, flags, &body))
    }

    /// A unary call with a marshalled request; returns the marshalled response.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        opts: &CallOptions,
    ) -> Result<Bytes, Status> {
        let frame = Self::request_frame(service, method, payload, opts, 0)?;
        let (tx, rx) = oneshot::channel();
        let id = self.inner.open(Slot::Unary(tx), frame)?;
        let wait = async {
            rx.await
                .unwrap_or_else(|_| Err(Status::unavailable("ttrpc: closed")))
        };
        match opts.timeout {
            None => wait.await,
            Some(t) => match tokio::time::timeout(t, wait).await {
                Ok(r) => r,
                Err(_) => {
                    self.inner.remove(id);
                    Err(Status::deadline_exceeded("context deadline exceeded"))
                }
            },
        }
    }

    /// A unary call with typed messages.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        req: &Req,
        opts: &CallOptions,
    ) -> Result<Resp, Status> {
        let body = self
            .call(service, method, req.encode_to_vec(), opts)
            .await?;
        Resp::decode(body).map_err(|e| Status::decode_error("response payload", e))
    }

    /// Opens a streaming call. For server-streaming calls `first` is the request; for
    /// client-streaming and bidi calls it is optional and counts as the first message.
    pub async fn stream(
        &self,
        service: &str,
        method: &str,
        kind: MethodKind,
        first: Option<Vec<u8>>,
        opts: &CallOptions,
    ) -> Result<ClientStream, Status> {
        let flags = match kind {
            MethodKind::ServerStreaming | MethodKind::Unary => FLAG_REMOTE_CLOSED,
            MethodKind::ClientStreaming | MethodKind::Bidi => FLAG_REMOTE_OPEN,
        };
        let frame = Self::request_frame(service, method, first.unwrap_or_default(), opts, flags)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.inner.open(Slot::Stream(tx), frame)?;
        Ok(ClientStream {
            id,
            inner: self.inner.clone(),
            rx,
            finished: false,
            send_closed: flags == FLAG_REMOTE_CLOSED,
            timeout: opts.timeout,
        })
    }
}

/// The client's end of a streaming call.
pub struct ClientStream {
    id: u32,
    inner: Arc<Inner>,
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    finished: bool,
    send_closed: bool,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("id", &self.id)
            .finish()
    }
}

impl ClientStream {
    /// Sends one marshalled message.
    pub fn send(&self, payload: &[u8]) -> Result<(), Status> {
        if self.send_closed {
            return Err(Status::failed_precondition(
                "ttrpc: stream send side is closed",
            ));
        }
        if payload.len() > MAX_DATA_LEN {
            return Err(too_large(payload.len()));
        }
        self.inner
            .sink
            .send(encode_frame(self.id, MessageType::Data, 0, payload))
            .map_err(|_| Status::unavailable("ttrpc: closed"))
    }

    /// Marshals and sends one message.
    pub fn send_msg<M: Message>(&self, msg: &M) -> Result<(), Status> {
        self.send(&msg.encode_to_vec())
    }

    /// Tells the server no more messages follow.
    pub fn close_send(&mut self) -> Result<(), Status> {
        if self.send_closed {
            return Ok(());
        }
        self.send_closed = true;
        self.inner
            .sink
            .send(encode_frame(
                self.id,
                MessageType::Data,
                FLAG_REMOTE_CLOSED | FLAG_NO_DATA,
                &[],
            ))
            .map_err(|_| Status::unavailable("ttrpc: closed"))
    }

    /// The next message from the server; `Ok(None)` when the server ended the stream.
    /// For client-streaming calls the single response arrives here.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, Status> {
        if self.finished {
            return Ok(None);
        }
        let ev = match self.timeout {
            None => self.rx.recv().await,
            Some(t) => match tokio::time::timeout(t, self.rx.recv()).await {
                Ok(ev) => ev,
                Err(_) => {
                    self.finished = true;
                    self.inner.remove(self.id);
                    return Err(Status::deadline_exceeded("context deadline exceeded"));
                }
            },
        };
        match ev {
            Some(StreamEvent::Data(b)) => Ok(Some(b)),
            Some(StreamEvent::Response(Ok(b))) => {
                self.finished = true;
                Ok(Some(b))
            }
            Some(StreamEvent::Response(Err(st))) => {
                self.finished = true;
                Err(st)
            }
            Some(StreamEvent::Closed) => {
                self.finished = true;
                Ok(None)
            }
            None => {
                self.finished = true;
                Err(Status::unavailable("ttrpc: closed"))
            }
        }
    }

    /// The next message, decoded.
    pub async fn recv_msg<M: Message + Default>(&mut self) -> Result<Option<M>, Status> {
        match self.recv().await? {
            None => Ok(None),
            Some(b) => M::decode(b)
                .map(Some)
                .map_err(|e| Status::decode_error("stream message", e)),
        }
    }

    /// For client-streaming calls: closes the send side and waits for the response.
    pub async fn close_and_recv<M: Message + Default>(&mut self) -> Result<M, Status> {
        self.close_send()?;
        match self.recv_msg().await? {
            Some(m) => Ok(m),
            None => Err(Status::new(
                Code::Internal,
                "ttrpc: stream ended without a response",
            )),
        }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        if !self.finished {
            self.inner.remove(self.id);
        }
    }
}
