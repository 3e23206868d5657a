//! The WebSocket transport (the kubelet's `wsstream`): every message starts with a channel
//! number. Binary subprotocols (`channel.k8s.io`, `v4.`, `v5.`) put it in the first byte; the
//! base64 ones (`base64.channel.k8s.io`, `v4.base64.`) send text whose first character is the
//! channel's digit and whose rest is base64.
//!
//! Remote command uses channels 0 stdin, 1 stdout, 2 stderr, 3 error (the status), 4 resize;
//! v5 adds 255, a message `[255, n]` closing channel n (the client's way to end stdin). Port
//! forwarding uses 2i for the data and 2i+1 for the errors of the i-th port, and the server's
//! first message on each is the port as 16-bit little-endian.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::remote::{ResizeDecoder, Target, pipes};
use crate::request::Prepared;
use crate::server::{Inner, Resp, Session, error, header_tokens};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
pub(crate) const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

pub(crate) const REMOTE_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
const PORT_FORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// The largest message (and frame) a client may send: client-go sends stdin and port-forward
/// data in chunks of at most 32 KiB; a bigger one closes the session (1009, message too big)
/// instead of being buffered.
pub(crate) const MAX_MESSAGE: usize = 1 << 20;

/// Bounded buffers: what is read is at most one message, and writes wait for the socket once
/// a few messages are queued.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .max_write_buffer_size(4 * MAX_MESSAGE)
}

/// How a negotiated subprotocol frames channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Codec {
    base64: bool,
    /// v4 or later: statuses as JSON.
    v4: bool,
    /// v5: the close signal.
    v5: bool,
}

impl Codec {
    pub(crate) fn of(protocol: &str) -> Codec {
        Codec {
            base64: protocol.contains("base64."),
            v4: protocol.starts_with("v4.") || protocol.starts_with("v5."),
            v5: protocol.starts_with("v5."),
        }
    }

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            s.push(char::from(b'0' + channel));
            B64.encode_string(data, &mut s);
            Message::text(s)
        } else {
            let mut v = Vec::with_capacity(1 + data.len());
            v.push(channel);
            v.extend_from_slice(data);
            Message::Binary(Bytes::from(v))
        }
    }

    /// A message's channel and payload; `None` for what carries neither (control messages,
    /// empty or undecodable ones, which the kubelet skips too).
    pub(crate) fn decode(self, msg: Message) -> Option<(u8, Vec<u8>)> {
        match msg {
            Message::Binary(b) if !self.base64 => {
                let (&ch, rest) = b.split_first()?;
                Some((ch, rest.to_vec()))
            }
            Message::Text(t) if self.base64 => {
                let (&ch, rest) = t.as_bytes().split_first()?;
                Some((ch.wrapping_sub(b'0'), B64.decode(rest).ok()?))
            }
            _ => None,
        }
    }
}

/// Validates the WebSocket handshake as golang.org/x/net/websocket does (405 for a method
/// other than GET, 400 for a bad version or key, 403 when no subprotocol matches), answers 101
/// and starts the session.
pub(crate) fn upgrade(
    inner: Arc<Inner>,
    mut req: Request<Incoming>,
    prepared: Prepared,
    session: Session,
) -> Resp {
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "websocket: method must be GET",
        );
    }
    let h = req.headers();
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut r = error(StatusCode::BAD_REQUEST, "websocket: missing or bad version");
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
        .filter(|k| !k.is_empty())
    else {
        return error(StatusCode::BAD_REQUEST, "websocket: missing key");
    };
    let server = match prepared {
        Prepared::PortForward(_) => PORT_FORWARD_PROTOCOLS,
        _ => REMOTE_PROTOCOLS,
    };
    let client: Vec<&str> = header_tokens(h, header::SEC_WEBSOCKET_PROTOCOL.as_str()).collect();
    // No subprotocol asked for is the binary protocol without a name.
    let protocol = if client.is_empty() {
        ""
    } else {
        match client
            .iter()
            .find_map(|c| server.iter().copied().find(|s| s == c))
        {
            Some(p) => p,
            None => {
                let msg = format!(
                    "requested protocol(s) are not supported: {client:?}; supports {server:?}"
                );
                return error(StatusCode::FORBIDDEN, &msg);
            }
        }
    };
    // Port forwarding learns its ports before the upgrade, so a missing one is still a 400.
    let ports = match &prepared {
        Prepared::PortForward(pf) if pf.ports.is_empty() => match query_ports(req.uri().query()) {
            Ok(p) => Some(p),
            Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
        },
        Prepared::PortForward(pf) => Some(pf.ports.iter().map(|&p| p as u16).collect()),
        _ => None,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_inner = inner.clone();
    inner.spawn_session(session, async move {
        let Some(io) = crate::server::upgraded(on_upgrade, "websocket").await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
        let codec = Codec::of(protocol);
        match (prepared, ports) {
            (Prepared::PortForward(pf), Some(ports)) => {
                port_forward(session_inner, ws, codec, pf.pod_sandbox_id, ports).await
            }
            (other, _) => remote(session_inner, ws, codec, other).await,
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if !protocol.is_empty() {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    r
}

/// The `port` query parameters (repeated or comma-separated), as the kubelet parses them.
pub(crate) fn query_ports(query: Option<&str>) -> Result<Vec<u16>, String> {
    let values: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| *k == "port")
        .map(|(_, v)| v)
        .collect();
    if values.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    let mut ports = Vec::new();
    for v in values {
        if v.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in v.split(',') {
            let port: u16 = p
                .parse()
                .map_err(|e| format!("unable to parse {v:?} as a port: {e}"))?;
            if port == 0 {
                return Err(format!("port {v:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    Ok(ports)
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Sends everything queued, then a normal close.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Message>,
) {
    while let Some(m) = rx.recv().await {
        if sink.send(m).await.is_err() {
            return;
        }
    }
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = sink.send(Message::Close(Some(close))).await;
}

async fn pump_output(mut pipe: DuplexStream, ch: u8, codec: Codec, out: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 << 10];
    let mut open = true;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if open && out.send(codec.encode(ch, &buf[..n])).await.is_err() {
            open = false;
        }
    }
}

async fn remote(inner: Arc<Inner>, ws: Ws, codec: Codec, p: Prepared) {
    let Some((target, opts)) = Target::from_prepared(p) else {
        return;
    };
    let (sink, mut stream) = ws.split();
    let (out, out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(write_loop(sink, out_rx));
    let (io, pipes) = pipes(opts.stdin, opts.stdout, opts.stderr, opts.tty, opts.tty);

    // An empty message on the lowest channel the server writes tells the client it is ready.
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out.send(codec.encode(first, &[])).await;

    let mut stdin = pipes.stdin;
    let resize = pipes.resize;
    let reader = tokio::spawn(async move {
        let mut dec = ResizeDecoder::default();
        let mut resize = resize;
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((ch, data)) = codec.decode(msg) else {
                continue;
            };
            match ch {
                STDIN => {
                    if let Some(p) = &mut stdin
                        && p.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                RESIZE => {
                    let sizes = match dec.push(&data) {
                        Ok(s) => s,
                        Err(()) => {
                            resize = None;
                            Vec::new()
                        }
                    };
                    for s in sizes {
                        if let Some(tx) = &resize
                            && tx.send(s).await.is_err()
                        {
                            resize = None;
                        }
                    }
                }
                CLOSE if codec.v5 => {
                    if data.first() == Some(&STDIN)
                        && let Some(mut p) = stdin.take()
                    {
                        let _ = p.shutdown().await;
                    }
                }
                _ => {}
            }
        }
        // The connection's end is the end of stdin.
        if let Some(mut p) = stdin {
            let _ = p.shutdown().await;
        }
    });

    let mut outputs = Vec::new();
    for (pipe, ch) in [(pipes.stdout, STDOUT), (pipes.stderr, STDERR)] {
        if let Some(pipe) = pipe {
            outputs.push(tokio::spawn(pump_output(pipe, ch, codec, out.clone())));
        }
    }
    // The client going away (its side of the connection ends) ends the session: the run is
    // dropped, which undoes it (the runtime kills an exec's process).
    let mut reader = reader;
    let run = target.run(&inner, io);
    tokio::pin!(run);
    let outcome = tokio::select! {
        o = &mut run => o,
        _ = &mut reader => {
            tracing::debug!("stream: the client went away before the command ended");
            return;
        }
    };
    for o in outputs {
        let _ = o.await;
    }
    let status = outcome.encode(codec.v4);
    if !status.is_empty() {
        let _ = out.send(codec.encode(ERROR, &status)).await;
    }
    drop(out);
    let _ = writer.await;
    // Give the client a moment to answer the close, then drop the connection.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await;
}

async fn port_forward(inner: Arc<Inner>, ws: Ws, codec: Codec, pod: String, ports: Vec<u16>) {
    let (sink, mut stream) = ws.split();
    let (out, out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(write_loop(sink, out_rx));
    let mut inputs = Vec::with_capacity(ports.len());
    let mut forwards = Vec::with_capacity(ports.len());
    for (i, &port) in ports.iter().enumerate() {
        let data_ch = (2 * i) as u8;
        let _ = out.send(codec.encode(data_ch, &port.to_le_bytes())).await;
        let _ = out
            .send(codec.encode(data_ch + 1, &port.to_le_bytes()))
            .await;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(32);
        inputs.push(tx);
        forwards.push(tokio::spawn(forward_port(
            inner.clone(),
            pod.clone(),
            port,
            data_ch,
            codec,
            rx,
            out.clone(),
        )));
    }
    drop(out);
    let reader = async move {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((ch, data)) = codec.decode(msg) else {
                continue;
            };
            if ch % 2 == 0
                && let Some(tx) = inputs.get(usize::from(ch / 2))
            {
                let _ = tx.send(data).await;
            }
        }
    };
    let aborts: Vec<_> = forwards.iter().map(|f| f.abort_handle()).collect();
    // Either every port is done, or the client went away: then nothing is left to forward to.
    tokio::select! {
        _ = futures_util::future::join_all(forwards) => {}
        _ = reader => {}
    }
    for a in aborts {
        a.abort();
    }
    let _ = writer.await;
}

async fn forward_port(
    inner: Arc<Inner>,
    pod: String,
    port: u16,
    ch: u8,
    codec: Codec,
    input: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<Message>,
) {
    let upstream = match inner.runtime.port_forward(pod.clone(), port).await {
        Ok(u) => u,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}, uid : {e}");
            let _ = out.send(codec.encode(ch + 1, msg.as_bytes())).await;
            return;
        }
    };
    let (mut up_r, up_w) = tokio::io::split(upstream);
    let to_pod = crate::spdy_portforward::to_pod(input, up_w);
    let from_pod = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = match up_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if out.send(codec.encode(ch, &buf[..n])).await.is_err() {
                break;
            }
        }
    };
    // The port's output ending ends this port, as in the kubelet.
    tokio::select! {
        _ = from_pod => {}
        _ = async { to_pod.await; std::future::pending::<()>().await } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_framed_per_subprotocol() {
        let bin = Codec::of("v4.channel.k8s.io");
        assert!(bin.v4 && !bin.v5 && !bin.base64);
        assert_eq!(
            bin.encode(1, b"hi"),
            Message::Binary(Bytes::from_static(b"\x01hi"))
        );
        assert_eq!(
            bin.decode(Message::Binary(Bytes::from_static(b"\x00in"))),
            Some((0, b"in".to_vec()))
        );
        assert_eq!(bin.decode(Message::Binary(Bytes::new())), None);
        let b64 = Codec::of("base64.channel.k8s.io");
        assert!(b64.base64 && !b64.v4);
        assert_eq!(b64.encode(1, b"hi"), Message::text("1aGk="));
        assert_eq!(
            b64.decode(Message::text("0Zm9vCg==")),
            Some((0, b"foo\n".to_vec()))
        );
        assert!(Codec::of("v5.channel.k8s.io").v5);
        assert!(!Codec::of("").v4);
    }

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(
            query_ports(Some("port=80&port=81,82")).unwrap(),
            [80, 81, 82]
        );
        assert!(query_ports(None).is_err());
        assert!(query_ports(Some("port=")).is_err());
        assert!(query_ports(Some("port=0")).is_err());
        assert!(query_ports(Some("port=http")).is_err());
    }
}
