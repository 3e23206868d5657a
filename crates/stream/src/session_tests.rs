//! The server end to end over TCP with a WebSocket client and a runtime double: the v5 channel
//! protocol (stdin, its close, stdout, the status), port forwarding, the session limit, and
//! messages past the size limit.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::runtime::{BoxError, BoxFuture, Runtime, StreamIo, Upstream};
use crate::{Config, ExecRequest, PortForwardRequest, Server};

/// Exec copies stdin to stdout until stdin ends, then exits 3. Port forwarding reaches a
/// duplex whose far end echoes.
struct Echo;

impl Runtime for Echo {
    fn exec(
        &self,
        _container_id: String,
        _cmd: Vec<String>,
        mut io: StreamIo,
    ) -> BoxFuture<'_, Result<i32, BoxError>> {
        Box::pin(async move {
            let (Some(mut stdin), Some(mut stdout)) = (io.stdin.take(), io.stdout.take()) else {
                return Err("exec needs stdin and stdout".into());
            };
            tokio::io::copy(&mut stdin, &mut stdout).await?;
            Ok(3)
        })
    }

    fn attach(&self, _container_id: String, _io: StreamIo) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Err("no attach here".into()) })
    }

    fn port_forward(
        &self,
        _pod_sandbox_id: String,
        _port: u16,
    ) -> BoxFuture<'_, Result<Box<dyn Upstream>, BoxError>> {
        Box::pin(async {
            let (near, mut far) = tokio::io::duplex(64 << 10);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = far.read(&mut buf).await {
                    if n == 0 || far.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Box::new(near) as Box<dyn Upstream>)
        })
    }
}

async fn server(max_sessions: usize) -> Server {
    let config = Config {
        max_sessions,
        ..Default::default()
    };
    Server::start(config, Echo).await.unwrap()
}

fn exec_url(s: &Server) -> String {
    s.get_exec(ExecRequest {
        container_id: "c".into(),
        cmd: vec!["cat".into()],
        stdin: true,
        stdout: true,
        ..Default::default()
    })
    .unwrap()
}

type Ws = WebSocketStream<TcpStream>;

async fn connect(url: &str, protocol: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.replace("http://", "ws://").into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let host = req.uri().authority().unwrap().as_str().to_owned();
    let tcp = TcpStream::connect(host).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

/// The next data message: (channel, payload).
async fn next(ws: &mut Ws) -> Option<(u8, Vec<u8>)> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")?
            .ok()?;
        match m {
            Message::Binary(b) if !b.is_empty() => return Some((b[0], b[1..].to_vec())),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

#[tokio::test]
async fn exec_over_websocket_v5() {
    let s = server(8).await;
    let mut ws = connect(&exec_url(&s), "v5.channel.k8s.io").await.unwrap();
    // The ready signal: an empty message on stdout.
    assert_eq!(next(&mut ws).await, Some((1, Vec::new())));
    ws.send(Message::binary(b"\x00hello".to_vec()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Some((1, b"hello".to_vec())));
    // v5's close of stdin ends the process.
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let (ch, status) = next(&mut ws).await.unwrap();
    assert_eq!(ch, 3);
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert_eq!(next(&mut ws).await, None);
}

#[tokio::test]
async fn port_forward_over_websocket() {
    let s = server(8).await;
    let url = s
        .get_port_forward(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![8080],
        })
        .unwrap();
    let mut ws = connect(&url, "v4.channel.k8s.io").await.unwrap();
    // Each channel of the port starts with the port, little-endian.
    let mut first = [next(&mut ws).await.unwrap(), next(&mut ws).await.unwrap()];
    first.sort();
    assert_eq!(first, [(0, vec![0x90, 0x1f]), (1, vec![0x90, 0x1f])]);
    ws.send(Message::binary(b"\x00ping".to_vec()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Some((0, b"ping".to_vec())));
}

#[tokio::test]
async fn sessions_past_the_limit_are_refused_and_may_retry() {
    let s = server(1).await;
    let mut first = connect(&exec_url(&s), "v5.channel.k8s.io").await.unwrap();
    assert_eq!(next(&mut first).await, Some((1, Vec::new())));
    let url = exec_url(&s);
    match connect(&url, "v5.channel.k8s.io").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 429);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default());
            assert!(body.contains("too many streaming sessions"), "{body}");
        }
        other => panic!("a second session at once: {:?}", other.map(|_| ())),
    }
    // The first one ends: its place is free, and the refused URL still works.
    first.send(Message::binary(vec![255, 0])).await.unwrap();
    while next(&mut first).await.is_some() {}
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        match connect(&url, "v5.channel.k8s.io").await {
            Ok(ws) => break ws,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "retry: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(next(&mut again).await, Some((1, Vec::new())));
}

#[tokio::test]
async fn a_message_past_the_limit_closes_the_session() {
    let s = Arc::new(server(8).await);
    let mut ws = connect(&exec_url(&s), "v5.channel.k8s.io").await.unwrap();
    assert_eq!(next(&mut ws).await, Some((1, Vec::new())));
    let mut big = vec![0u8; crate::websocket::MAX_MESSAGE + 1];
    big[0] = 0;
    let _ = ws.send(Message::binary(big)).await;
    // The server ends the session instead of buffering the message: nothing of it reaches
    // the process (the echo would come back on stdout), and the connection closes.
    while let Some((ch, data)) = next(&mut ws).await {
        assert_ne!(ch, 1, "{} bytes echoed", data.len());
    }
    // And it still serves others.
    let mut other = connect(&exec_url(&s), "v5.channel.k8s.io").await.unwrap();
    assert_eq!(next(&mut other).await, Some((1, Vec::new())));
}
