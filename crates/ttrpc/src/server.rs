//! The ttrpc server: accepts unix connections, checks the peer, dispatches calls to services.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::BoxFuture;
use crate::context::{Context, Metadata};
use crate::frame::{
    Decoded, FLAG_NO_DATA, FLAG_REMOTE_CLOSED, FrameHeader, FrameReader, MAX_DATA_LEN, MessageType,
    encode_frame,
};
use crate::proto::{Request, Response};
use crate::status::{Code, Status};
use crate::stream::{FrameSink, RecvStream, SendStream, spawn_writer, too_large};

/// The shape of a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// One request, one response.
    Unary,
    /// A stream of requests, one response.
    ClientStreaming,
    /// One request, a stream of responses.
    ServerStreaming,
    /// Streams both ways.
    Bidi,
}

impl MethodKind {
    fn client_streams(self) -> bool {
        matches!(self, MethodKind::ClientStreaming | MethodKind::Bidi)
    }
    fn server_streams(self) -> bool {
        matches!(self, MethodKind::ServerStreaming | MethodKind::Bidi)
    }
}

/// One call as a service sees it.
#[derive(Debug)]
pub struct ServiceCall {
    /// Metadata and deadline.
    pub ctx: Context,
    /// Method name (without the service).
    pub method: String,
    /// The request message, for unary and server-streaming methods.
    pub payload: Bytes,
    /// Incoming messages, for client-streaming and bidi methods.
    pub inbound: Option<RecvStream>,
    /// Outgoing messages, for server-streaming and bidi methods.
    pub outbound: Option<SendStream>,
}

/// A ttrpc service; implemented by the code `berth-api` generates for each proto service.
pub trait Service: Send + Sync + 'static {
    /// Full service name, e.g. `containerd.task.v2.Task`.
    fn name(&self) -> &'static str;
    /// The shape of `method`, or `None` if the service has no such method.
    fn method_kind(&self, method: &str) -> Option<MethodKind>;
    /// Runs a call. Unary and client-streaming methods return the marshalled response;
    /// streaming-response methods return an empty vector after sending their messages.
    fn call(&self, call: ServiceCall) -> BoxFuture<Result<Vec<u8>, Status>>;
}

/// Which peers may connect, checked with `SO_PEERCRED` on accept.
#[derive(Clone, Default)]
pub enum PeerCheck {
    /// The peer's uid and gid must equal this process's effective ones (containerd's default).
    #[default]
    SameUser,
    /// Anyone who can open the socket.
    None,
    /// A custom predicate on (uid, gid, pid).
    Custom(Arc<dyn Fn(u32, u32, Option<i32>) -> bool + Send + Sync>),
}

impl std::fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerCheck::SameUser => f.write_str("SameUser"),
            PeerCheck::None => f.write_str("None"),
            PeerCheck::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl PeerCheck {
    fn allows(&self, s: &UnixStream) -> bool {
        match self {
            PeerCheck::None => true,
            PeerCheck::SameUser => match s.peer_cred() {
                Ok(c) => {
                    // SAFETY: geteuid has no preconditions and cannot fail.
                    let uid = unsafe { libc::geteuid() };
                    // SAFETY: getegid has no preconditions and cannot fail.
                    let gid = unsafe { libc::getegid() };
                    c.uid() == uid && c.gid() == gid
                }
                Err(_) => false,
            },
            PeerCheck::Custom(f) => match s.peer_cred() {
                Ok(c) => f(c.uid(), c.gid(), c.pid()),
                Err(_) => false,
            },
        }
    }
}

type Services = Arc<HashMap<&'static str, Arc<dyn Service>>>;

/// A ttrpc server. Register services, then [`Server::start`] it on a listener.
#[derive(Default)]
pub struct Server {
    services: HashMap<&'static str, Arc<dyn Service>>,
    peer_check: PeerCheck,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("peer_check", &self.peer_check)
            .finish()
    }
}

impl Server {
    /// A server with no services and the [`PeerCheck::SameUser`] check.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service. A second service with the same name replaces the first.
    pub fn register<S: Service>(mut self, service: S) -> Self {
        self.services.insert(service.name(), Arc::new(service));
        self
    }

    /// Sets the peer check.
    pub fn peer_check(mut self, check: PeerCheck) -> Self {
        self.peer_check = check;
        self
    }

    /// Starts serving `listener` in the background.
    pub fn start(self, listener: UnixListener) -> ServerHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let services: Services = Arc::new(self.services);
        let check = self.peer_check;
        let task = tokio::spawn(accept_loop(listener, services, check, stop_rx));
        ServerHandle { stop_tx, task }
    }
}

/// Controls a running server.
#[derive(Debug)]
pub struct ServerHandle {
    stop_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting, lets in-flight calls finish (up to `grace`), then closes every connection.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop_tx.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: UnixListener,
    services: Services,
    check: PeerCheck,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Transient accept errors (EMFILE...): back off briefly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if !check.allows(&stream) {
                    tracing::warn!("ttrpc: rejected connection from a peer that failed the credential check");
                    continue;
                }
                conns.spawn(serve_conn(stream, services.clone(), stop.clone()));
            }
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

type Inbound = Arc<Mutex<HashMap<u32, mpsc::Sender<Bytes>>>>;

fn send_status(sink: &FrameSink, id: u32, st: &Status) {
    let resp = Response {
        status: Some(st.to_proto()),
        payload: Vec::new(),
    };
    let _ = sink.send(encode_frame(
        id,
        MessageType::Response,
        0,
        &resp.encode_to_vec(),
    ));
}

async fn serve_conn(stream: UnixStream, services: Services, mut stop: watch::Receiver<bool>) {
    let (rd, wr) = stream.into_split();
    let mut rd = FrameReader::new(rd);
    let sink = spawn_writer(wr);
    // std Mutex: held only to insert/remove/lookup, never across an await.
    let inbound: Inbound = Arc::new(Mutex::new(HashMap::new()));
    let mut calls = JoinSet::new();
    let mut last_id = 0u32;
    loop {
        let incoming = tokio::select! {
            r = rd.next() => r,
            _ = stop.changed() => break,
            Some(_) = calls.join_next(), if !calls.is_empty() => continue,
        };
        let (h, payload) = match incoming {
            Ok(Some(Decoded::Frame(h, p))) => (h, p),
            Ok(Some(Decoded::TooLarge(h))) => {
                send_status(&sink, h.stream_id, &too_large(h.length as usize));
                continue;
            }
            Ok(None) | Err(_) => break,
        };
        if h.stream_id % 2 == 0 {
            send_status(
                &sink,
                h.stream_id,
                &Status::invalid_argument("StreamID must be odd for client initiated streams"),
            );
            continue;
        }
        match h.message_type {
            MessageType::Request => {
                if h.stream_id <= last_id {
                    send_status(
                        &sink,
                        h.stream_id,
                        &Status::invalid_argument("StreamID cannot be re-used and must increment"),
                    );
                    continue;
                }
                last_id = h.stream_id;
                if let Some(fut) = start_call(h, payload, &services, &sink, &inbound) {
                    calls.spawn(fut);
                }
            }
            MessageType::Data => deliver_data(h, payload, &sink, &inbound).await,
            // Responses never flow to a server; unknown types are ignored for compatibility.
            _ => {}
        }
    }
    // Let in-flight calls finish; their answers are written if the peer is still there.
    while calls.join_next().await.is_some() {}
}

async fn deliver_data(h: FrameHeader, payload: Bytes, sink: &FrameSink, inbound: &Inbound) {
    let tx = inbound
        .lock()
        .expect("inbound lock")
        .get(&h.stream_id)
        .cloned();
    let Some(tx) = tx else {
        send_status(
            sink,
            h.stream_id,
            &Status::invalid_argument("StreamID is no longer active"),
        );
        return;
    };
    if h.flags & FLAG_NO_DATA == 0 {
        // Backpressure: a handler that does not read stalls this connection's reader.
        let _ = tx.send(payload.clone()).await;
    }
    if h.flags & FLAG_REMOTE_CLOSED != 0 {
        inbound.lock().expect("inbound lock").remove(&h.stream_id);
        if h.flags & FLAG_NO_DATA == 0 && !payload.is_empty() {
            send_status(
                sink,
                h.stream_id,
                &Status::invalid_argument("data close message cannot include data"),
            );
        }
    }
}

fn start_call(
    h: FrameHeader,
    payload: Bytes,
    services: &Services,
    sink: &FrameSink,
    inbound: &Inbound,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let id = h.stream_id;
    let req = match Request::decode(payload) {
        Ok(r) => r,
        Err(e) => {
            send_status(
                sink,
                id,
                &Status::invalid_argument(format!("unmarshal request error: {e}")),
            );
            return None;
        }
    };
    let Some(svc) = services.get(req.service.as_str()).cloned() else {
        send_status(
            sink,
            id,
            &Status::unimplemented(format!("service {}", req.service)),
        );
        return None;
    };
    let Some(kind) = svc.method_kind(&req.method) else {
        send_status(
            sink,
            id,
            &Status::unimplemented(format!("method {}", req.method)),
        );
        return None;
    };
    let ctx = Context::new(
        format!("/{}/{}", req.service, req.method),
        Metadata::from_pairs(req.metadata),
        req.timeout_nano,
    );
    let mut request_payload = Bytes::from(req.payload);
    let inbound_rx = if kind.client_streams() {
        let (tx, rx) = mpsc::channel(64);
        if !request_payload.is_empty() {
            // A payload on the opening request is the first streamed message.
            let _ = tx.try_send(std::mem::take(&mut request_payload));
        }
        if h.flags & FLAG_REMOTE_CLOSED == 0 {
            inbound.lock().expect("inbound lock").insert(id, tx);
        }
        Some(RecvStream::new(rx))
    } else {
        None
    };
    let outbound = kind
        .server_streams()
        .then(|| SendStream::new(id, sink.clone()));
    let deadline = ctx.remaining();
    let call = ServiceCall {
        ctx,
        method: req.method,
        payload: request_payload,
        inbound: inbound_rx,
        outbound: outbound.clone(),
    };
    let fut = svc.call(call);
    let sink = sink.clone();
    let inbound = inbound.clone();
    Some(async move {
        let result = match deadline {
            Some(d) => match tokio::time::timeout(d, fut).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded("context deadline exceeded")),
            },
            None => fut.await,
        };
        inbound.lock().expect("inbound lock").remove(&id);
        match (result, outbound) {
            (Ok(body), Some(out)) => {
                let _ = out.close(Some(&body));
            }
            (Ok(body), None) if body.len() > MAX_DATA_LEN => {
                send_status(&sink, id, &too_large(body.len()));
            }
            (Ok(body), None) => {
                let resp = Response {
                    status: Some(Status::new(Code::Ok, "").to_proto()),
                    payload: body,
                };
                let _ = sink.send(encode_frame(
                    id,
                    MessageType::Response,
                    0,
                    &resp.encode_to_vec(),
                ));
            }
            (Err(st), _) => send_status(&sink, id, &st),
        }
    })
}
