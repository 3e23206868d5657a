//! Port forwarding over SPDY (`portforward.k8s.io`): the client opens a pair of streams per
//! forwarded connection, `streamType: error` and `streamType: data`, both naming the `port` and
//! sharing a `requestID`. Each complete pair gets its own connection to the port inside the pod;
//! a failure is written as text on the pair's error stream, and both streams are half-closed
//! when the forwarding ends. The SPDY connection lives until the client closes it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::server::Inner;
use crate::spdy::conn::{NewStream, Session, Stream};
use crate::spdy::rst;

struct Pair {
    port: u16,
    data: Option<Stream>,
    error: Option<Stream>,
    deadline: Instant,
}

/// Checks a new stream's headers as the kubelet does; the refusal reason on error.
fn check(new: &NewStream) -> Result<(u16, bool), String> {
    let port = new
        .headers
        .get("port")
        .filter(|p| !p.is_empty())
        .ok_or("\"port\" header is required")?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port == 0 {
        return Err("port \"0\" must be > 0".into());
    }
    match new.headers.get("streamtype").unwrap_or("") {
        "data" => Ok((port, true)),
        "error" => Ok((port, false)),
        "" => Err("\"streamType\" header is required".into()),
        t => Err(format!("invalid stream type {t:?}")),
    }
}

/// The pair a stream belongs to: its `requestID`, or for old clients without one, the id
/// derived from stream ids as the kubelet derives it (error stream N, data stream N + 2).
fn request_id(new: &NewStream, is_data: bool) -> String {
    match new.headers.get("requestid") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ if is_data => new.id.saturating_sub(2).to_string(),
        _ => new.id.to_string(),
    }
}

pub(crate) async fn serve<IO>(inner: Arc<Inner>, io: IO, pod: String)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut session = Session::start(io, inner.config.stream_idle_timeout);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    loop {
        let next_deadline = pairs.values().map(|p| p.deadline).min();
        let new = tokio::select! {
            n = session.next_stream() => match n {
                Some(n) => n,
                None => break,
            },
            _ = tokio::time::sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {
                let now = Instant::now();
                let expired: Vec<String> = pairs.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| k.clone()).collect();
                for id in expired {
                    let p = pairs.remove(&id).expect("listed above");
                    if let Some(e) = p.error {
                        let w = e.writer();
                        let _ = w.write(format!("(request={id}) timed out waiting for streams").as_bytes()).await;
                        w.finish().await;
                    }
                    if let Some(d) = p.data {
                        d.writer().reset(rst::CANCEL).await;
                    }
                }
                continue;
            }
        };
        let (port, is_data) = match check(&new) {
            Ok(v) => v,
            Err(why) => {
                tracing::debug!(stream = new.id, %why, "port-forward: stream refused");
                new.refuse().await;
                continue;
            }
        };
        let id = request_id(&new, is_data);
        let stream = new.accept().await;
        let pair = pairs.entry(id.clone()).or_insert_with(|| Pair {
            port,
            data: None,
            error: None,
            deadline: Instant::now() + inner.config.stream_creation_timeout,
        });
        let slot = if is_data {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            let kind = if is_data { "data" } else { "error" };
            let msg =
                format!("error processing stream for request {id}: {kind} stream already assigned");
            if let Some(e) = &pair.error {
                let _ = e.writer().write(msg.as_bytes()).await;
            }
            stream.writer().reset(rst::PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some() && pair.error.is_some() {
            let p = pairs.remove(&id).expect("just completed");
            let (Some(data), Some(error)) = (p.data, p.error) else {
                continue;
            };
            let inner2 = inner.clone();
            let pod = pod.clone();
            inner.spawn(async move { forward(inner2, pod, p.port, data, error).await });
        }
    }
    session.close().await;
}

/// Forwards one connection: the data stream's input to the pod's port, the port's output back,
/// each direction half-closed on its own. When one direction has ended the other gets a second
/// to finish, then both streams are closed (containerd's rule): a client that never half-closes
/// (kubectl, crictl) waits for the error stream's end before it closes its local connection.
async fn forward(inner: Arc<Inner>, pod: String, port: u16, data: Stream, error: Stream) {
    let err_w = error.writer();
    let upstream = match inner.runtime.port_forward(pod.clone(), port).await {
        Ok(u) => u,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}, uid : {e}");
            tracing::debug!(%msg, "port-forward");
            let _ = err_w.write(msg.as_bytes()).await;
            err_w.finish().await;
            data.writer().finish().await;
            return;
        }
    };
    let (mut up_r, up_w) = tokio::io::split(upstream);
    let (rx, data_w) = data.into_parts();
    let to_pod = to_pod(rx, up_w);
    let from_pod = async {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let n = tokio::select! {
                r = up_r.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = data_w.closed() => break,
            };
            if data_w.write(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    {
        tokio::pin!(to_pod);
        tokio::pin!(from_pod);
        let grace = std::time::Duration::from_secs(1);
        tokio::select! {
            _ = &mut to_pod => {
                let _ = tokio::time::timeout(grace, &mut from_pod).await;
            }
            _ = &mut from_pod => {
                let _ = tokio::time::timeout(grace, &mut to_pod).await;
            }
        }
    }
    data_w.finish().await;
    err_w.finish().await;
}

/// Copies what the client sends into the pod's connection until either ends, then closes the
/// pod's side for writing.
pub(crate) async fn to_pod<B: AsRef<[u8]>>(
    mut rx: tokio::sync::mpsc::Receiver<B>,
    mut w: impl tokio::io::AsyncWrite + Unpin,
) {
    while let Some(b) = rx.recv().await {
        if w.write_all(b.as_ref()).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}
