//! Protocol tests of the ttrpc client against the ttrpc server, plus raw-frame tests of the server.

use std::time::Duration;

use berth_ttrpc::{
    BoxFuture, CallOptions, Client, Code, FrameHeader, MessageType, MethodKind, PeerCheck, Server,
    Service, ServiceCall, Status,
};
use bytes::Bytes;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// A raw-bytes test service: payloads are UTF-8 strings wrapped in `google.protobuf.StringValue`-like
/// messages (field 1, string).
#[derive(Clone, PartialEq, prost::Message)]
struct Text {
    #[prost(string, tag = "1")]
    value: String,
}

fn text(s: &str) -> Text {
    Text { value: s.into() }
}

struct Echo;

impl Service for Echo {
    fn name(&self) -> &'static str {
        "test.Echo"
    }
    fn method_kind(&self, method: &str) -> Option<MethodKind> {
        Some(match method {
            "Echo" | "Meta" | "Sleep" | "Big" => MethodKind::Unary,
            "Count" => MethodKind::ServerStreaming,
            "Sum" => MethodKind::ClientStreaming,
            "Upper" => MethodKind::Bidi,
            _ => return None,
        })
    }
    fn call(&self, call: ServiceCall) -> BoxFuture<Result<Vec<u8>, Status>> {
        Box::pin(async move {
            let ServiceCall {
                ctx,
                method,
                payload,
                inbound,
                outbound,
            } = call;
            let req = Text::decode(payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
            match method.as_str() {
                "Echo" => Ok(req.encode_to_vec()),
                "Meta" => {
                    let v = ctx.metadata.get_all(&req.value).join(",");
                    let deadline = ctx.deadline.is_some();
                    Ok(text(&format!("{v};{deadline}")).encode_to_vec())
                }
                "Sleep" => {
                    tokio::time::sleep(Duration::from_millis(req.value.parse().unwrap_or(0))).await;
                    Ok(text("woke").encode_to_vec())
                }
                "Big" => Ok(text(&"x".repeat(5 << 20)).encode_to_vec()),
                "Count" => {
                    let tx = outbound.expect("outbound");
                    let n: u32 = req.value.parse().unwrap_or(0);
                    for i in 0..n {
                        tx.send_msg(&text(&i.to_string()))?;
                    }
                    Ok(Vec::new())
                }
                "Sum" => {
                    let mut rx = inbound.expect("inbound");
                    let mut total = 0i64;
                    while let Some(m) = rx.recv_msg::<Text>().await? {
                        total += m.value.parse::<i64>().unwrap_or(0);
                    }
                    Ok(text(&total.to_string()).encode_to_vec())
                }
                "Upper" => {
                    let mut rx = inbound.expect("inbound");
                    let tx = outbound.expect("outbound");
                    while let Some(m) = rx.recv_msg::<Text>().await? {
                        tx.send_msg(&text(&m.value.to_uppercase()))?;
                    }
                    Ok(Vec::new())
                }
                _ => Err(Status::unimplemented("no")),
            }
        })
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    handle: Option<berth_ttrpc::ServerHandle>,
}

impl Harness {
    fn start(check: PeerCheck) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let l = UnixListener::bind(&path).unwrap();
        let handle = Server::new().register(Echo).peer_check(check).start(l);
        Harness {
            _dir: dir,
            path,
            handle: Some(handle),
        }
    }
    async fn client(&self) -> Client {
        Client::connect(&self.path).await.unwrap()
    }
}

async fn echo(c: &Client, method: &str, s: &str, opts: &CallOptions) -> Result<String, Status> {
    c.unary::<Text, Text>("test.Echo", method, &text(s), opts)
        .await
        .map(|t| t.value)
}

#[tokio::test]
async fn unary_round_trip_and_metadata() {
    let h = Harness::start(PeerCheck::SameUser);
    let c = h.client().await;
    assert_eq!(
        echo(&c, "Echo", "hi", &CallOptions::default())
            .await
            .unwrap(),
        "hi"
    );
    let opts = CallOptions::with_timeout(Duration::from_secs(5))
        .metadata("containerd-namespace-ttrpc", "ns1")
        .metadata("Containerd-Namespace-TTRPC", "ns2");
    assert_eq!(
        echo(&c, "Meta", "containerd-namespace-ttrpc", &opts)
            .await
            .unwrap(),
        "ns1,ns2;true"
    );
    assert_eq!(
        echo(&c, "Meta", "x", &CallOptions::default())
            .await
            .unwrap(),
        ";false"
    );
}

#[tokio::test]
async fn unknown_service_and_method_are_unimplemented() {
    let h = Harness::start(PeerCheck::SameUser);
    let c = h.client().await;
    let e = echo(&c, "Nope", "", &CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert_eq!(e.message(), "method Nope");
    let e = c
        .unary::<Text, Text>("test.Missing", "Echo", &text(""), &CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert_eq!(e.message(), "service test.Missing");
}

#[tokio::test]
async fn deadlines_are_enforced_on_both_sides() {
    let h = Harness::start(PeerCheck::SameUser);
    let c = h.client().await;
    // Server side: the handler is cut at the deadline sent in timeout_nano.
    let opts = CallOptions::with_timeout(Duration::from_millis(100));
    let e = echo(&c, "Sleep", "2000", &opts).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    // The connection is still usable afterwards.
    assert_eq!(
        echo(&c, "Sleep", "1", &CallOptions::default())
            .await
            .unwrap(),
        "woke"
    );
}

#[tokio::test]
async fn many_concurrent_calls_on_one_connection() {
    let h = Harness::start(PeerCheck::SameUser);
    let c = h.client().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            // Interleave slow and fast calls so answers come back out of order.
            let method = if i % 10 == 0 { "Sleep" } else { "Echo" };
            let arg = if i % 10 == 0 {
                "20".to_string()
            } else {
                i.to_string()
            };
            (
                i,
                method,
                echo(&c, method, &arg, &CallOptions::default())
                    .await
                    .unwrap(),
            )
        }));
    }
    for t in tasks {
        let (i, method, got) = t.await.unwrap();
        if method == "Echo" {
            assert_eq!(got, i.to_string());
        } else {
            assert_eq!(got, "woke");
        }
    }
}

#[tokio::test]
async fn streaming_in_every_direction() {
    let h = Harness::start(PeerCheck::SameUser);
    let c = h.client().await;
    let opts = CallOptions::default();

    let mut s = c
        .stream(
            "test.Echo",
            "Count",
            MethodKind::ServerStreaming,
            Some(text("5").encode_to_vec()),
            &opts,
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(m) = s.recv_msg::<Text>().await.unwrap() {
        got.push(m.value);
    }
    assert_eq!(got, ["0", "1", "2", "3", "4"]);

    let mut s = c
        .stream("test.Echo", "Sum", MethodKind::ClientStreaming, None, &opts)
        .await
        .unwrap();
    for i in 1..=10 {
        s.send_msg(&text(&i.to_string())).unwrap();
    }
    let total: Text = s.close_and_recv().await.unwrap();
    assert_eq!(total.value, "55");

    let mut s = c
        .stream("test.Echo", "Upper", MethodKind::Bidi, None, &opts)
        .await
        .unwrap();
    for w in ["a", "b", "c"] {
        s.send_msg(&text(w)).unwrap();
        let back: Text = s.recv_msg().await.unwrap().unwrap();
        assert_eq!(back.value, w.to_uppercase());
    }
    s.close_send().unwrap();
    assert!(s.recv_msg::<Text>().await.unwrap().is_none());
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted() {
    let h = Harness::start(PeerCheck::SameUser);
    let c = h.client().await;
    // Client refuses to send more than 4 MiB.
    let big = "y".repeat(5 << 20);
    let e = echo(&c, "Echo", &big, &CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Server refuses to answer with more than 4 MiB.
    let e = echo(&c, "Big", "", &CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(
        echo(&c, "Echo", "still ok", &CallOptions::default())
            .await
            .unwrap(),
        "still ok"
    );
}

async fn raw_frame(s: &mut UnixStream, id: u32, ty: MessageType, flags: u8, payload: &[u8]) {
    let h = FrameHeader {
        length: payload.len() as u32,
        stream_id: id,
        message_type: ty,
        flags,
    };
    s.write_all(&h.encode()).await.unwrap();
    s.write_all(payload).await.unwrap();
}

async fn read_status(s: &mut UnixStream) -> (u32, berth_ttrpc::Response) {
    let mut hb = [0u8; 10];
    s.read_exact(&mut hb).await.unwrap();
    let h = FrameHeader::decode(&hb);
    assert_eq!(h.message_type, MessageType::Response);
    let mut p = vec![0u8; h.length as usize];
    s.read_exact(&mut p).await.unwrap();
    (
        h.stream_id,
        berth_ttrpc::Response::decode(Bytes::from(p)).unwrap(),
    )
}

fn request(method: &str, v: &str) -> Vec<u8> {
    berth_ttrpc::Request {
        service: "test.Echo".into(),
        method: method.into(),
        payload: text(v).encode_to_vec(),
        timeout_nano: 0,
        metadata: vec![],
    }
    .encode_to_vec()
}

#[tokio::test]
async fn server_rejects_even_reused_ids_and_oversized_frames() {
    let h = Harness::start(PeerCheck::SameUser);
    let mut s = UnixStream::connect(&h.path).await.unwrap();

    raw_frame(&mut s, 2, MessageType::Request, 0, &request("Echo", "a")).await;
    let (id, r) = read_status(&mut s).await;
    assert_eq!(
        (id, r.status.unwrap().code),
        (2, Code::InvalidArgument as i32)
    );

    raw_frame(&mut s, 5, MessageType::Request, 0, &request("Echo", "b")).await;
    let (id, r) = read_status(&mut s).await;
    assert_eq!(id, 5);
    assert_eq!(Text::decode(Bytes::from(r.payload)).unwrap().value, "b");

    raw_frame(&mut s, 3, MessageType::Request, 0, &request("Echo", "c")).await;
    let (id, r) = read_status(&mut s).await;
    assert_eq!(
        (id, r.status.unwrap().code),
        (3, Code::InvalidArgument as i32)
    );

    // A header announcing 4 MiB + 1: the payload is discarded and the call refused.
    let big = vec![0u8; (4 << 20) + 1];
    raw_frame(&mut s, 7, MessageType::Request, 0, &big).await;
    let (id, r) = read_status(&mut s).await;
    assert_eq!(
        (id, r.status.unwrap().code),
        (7, Code::ResourceExhausted as i32)
    );

    // Garbage payload in a request.
    raw_frame(&mut s, 9, MessageType::Request, 0, &[0xff, 0xff, 0xff]).await;
    let (id, r) = read_status(&mut s).await;
    assert_eq!(
        (id, r.status.unwrap().code),
        (9, Code::InvalidArgument as i32)
    );

    raw_frame(
        &mut s,
        11,
        MessageType::Request,
        0,
        &request("Echo", "alive"),
    )
    .await;
    let (id, r) = read_status(&mut s).await;
    assert_eq!(id, 11);
    assert_eq!(Text::decode(Bytes::from(r.payload)).unwrap().value, "alive");
}

#[tokio::test]
async fn peer_check_rejects_other_users() {
    let h = Harness::start(PeerCheck::Custom(std::sync::Arc::new(|uid, _, _| {
        uid == 12345
    })));
    let c = h.client().await;
    let e = echo(
        &c,
        "Echo",
        "x",
        &CallOptions::with_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_calls_then_closes() {
    let mut h = Harness::start(PeerCheck::SameUser);
    let c = h.client().await;
    let c2 = c.clone();
    let slow =
        tokio::spawn(async move { echo(&c2, "Sleep", "200", &CallOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.handle
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
    assert_eq!(slow.await.unwrap().unwrap(), "woke");
    let e = echo(
        &c,
        "Echo",
        "x",
        &CallOptions::with_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(UnixStream::connect(&h.path).await.is_err() || c.is_closed());
}

/// A handler that takes its time answers once, on a connection that was quiet meanwhile.
#[tokio::test]
async fn a_slow_answer_arrives() {
    let h = Harness::start(PeerCheck::SameUser);
    let c = h.client().await;
    let opts = CallOptions::with_timeout(Duration::from_secs(10));
    for ms in ["300", "1100"] {
        assert_eq!(echo(&c, "Sleep", ms, &opts).await.unwrap(), "woke");
    }
}
