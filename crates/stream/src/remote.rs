//! Remote command (exec and attach): the part both transports share, and the SPDY transport.
//!
//! Over SPDY the client opens one stream per stdio channel, told apart by their `streamType`
//! header (`error`, `stdin`, `stdout`, `stderr`, and `resize` from v3 on); the server waits for
//! the ones the request needs, runs the command, sends stdout and stderr until the process's
//! writers close, then the exit status on the error stream.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use crate::request::{Prepared, StdioOpts};
use crate::runtime::{StreamIo, TermSize};
use crate::server::Inner;
use crate::spdy::conn::{Session, Stream, StreamWriter};
use crate::status::Outcome;

/// Buffer of each stdio pipe between the runtime and the transport.
const PIPE_BUF: usize = 64 << 10;

/// What to run.
pub(crate) enum Target {
    Exec {
        container_id: String,
        cmd: Vec<String>,
    },
    Attach {
        container_id: String,
    },
}

impl Target {
    pub(crate) fn from_prepared(p: Prepared) -> Option<(Target, StdioOpts)> {
        match p {
            Prepared::Exec {
                container_id,
                cmd,
                opts,
            } => Some((Target::Exec { container_id, cmd }, opts)),
            Prepared::Attach { container_id, opts } => {
                Some((Target::Attach { container_id }, opts))
            }
            Prepared::PortForward(_) => None,
        }
    }

    /// Runs the command (or attaches) and says how it ended.
    pub(crate) async fn run(self, inner: &Inner, io: StreamIo) -> Outcome {
        match self {
            Target::Exec { container_id, cmd } => {
                match inner.runtime.exec(container_id, cmd.clone(), io).await {
                    Ok(code) => Outcome::exited(&cmd, code),
                    Err(e) => {
                        Outcome::Internal(format!("error executing command in container: {e}"))
                    }
                }
            }
            Target::Attach { container_id } => match inner.runtime.attach(container_id, io).await {
                Ok(()) => Outcome::Success,
                Err(e) => Outcome::Internal(format!("error attaching to container: {e}")),
            },
        }
    }
}

/// The transport's ends of the pipes behind a [`StreamIo`].
pub(crate) struct Pipes {
    pub(crate) stdin: Option<DuplexStream>,
    pub(crate) stdout: Option<DuplexStream>,
    pub(crate) stderr: Option<DuplexStream>,
    pub(crate) resize: Option<mpsc::Sender<TermSize>>,
}

/// Pipes for the streams present; the runtime gets the other ends.
pub(crate) fn pipes(
    stdin: bool,
    stdout: bool,
    stderr: bool,
    resize: bool,
    tty: bool,
) -> (StreamIo, Pipes) {
    fn pipe(want: bool) -> (Option<DuplexStream>, Option<DuplexStream>) {
        if want {
            let (a, b) = tokio::io::duplex(PIPE_BUF);
            (Some(a), Some(b))
        } else {
            (None, None)
        }
    }
    let (in_ours, in_theirs) = pipe(stdin);
    let (out_ours, out_theirs) = pipe(stdout);
    let (err_ours, err_theirs) = pipe(stderr);
    let (resize_tx, resize_rx) = if resize {
        let (tx, rx) = mpsc::channel(16);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let io = StreamIo {
        stdin: in_theirs.map(|p| Box::new(p) as Box<dyn AsyncRead + Send + Unpin>),
        stdout: out_theirs.map(|p| Box::new(p) as Box<dyn AsyncWrite + Send + Unpin>),
        stderr: err_theirs.map(|p| Box::new(p) as Box<dyn AsyncWrite + Send + Unpin>),
        tty,
        resize: resize_rx,
    };
    (
        io,
        Pipes {
            stdin: in_ours,
            stdout: out_ours,
            stderr: err_ours,
            resize: resize_tx,
        },
    )
}

/// Decodes the resize channel: a sequence of JSON objects, split anywhere.
#[derive(Default)]
pub(crate) struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// The sizes completed by `data`; `Err` once the input is not JSON (the kubelet then stops
    /// reading resizes).
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<Vec<TermSize>, ()> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
        loop {
            match it.next() {
                Some(Ok(s)) => sizes.push(s),
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return Err(()),
                None => break,
            }
        }
        let used = it.byte_offset();
        self.buf.drain(..used);
        if self.buf.len() > 4096 {
            return Err(());
        }
        Ok(sizes)
    }
}

/// Writes what the client sends into the runtime's stdin; the end of the client's stream is
/// the end of stdin. Input the runtime no longer reads is discarded.
async fn pump_stdin(mut rx: mpsc::Receiver<Bytes>, pipe: DuplexStream) {
    let mut pipe = Some(pipe);
    while let Some(b) = rx.recv().await {
        if let Some(p) = &mut pipe
            && p.write_all(&b).await.is_err()
        {
            pipe = None;
        }
    }
    if let Some(mut p) = pipe {
        let _ = p.shutdown().await;
    }
}

async fn pump_resize(mut rx: mpsc::Receiver<Bytes>, tx: mpsc::Sender<TermSize>) {
    let mut dec = ResizeDecoder::default();
    while let Some(b) = rx.recv().await {
        let Ok(sizes) = dec.push(&b) else {
            tracing::debug!("stream: resize stream is not JSON, ignoring the rest");
            return;
        };
        for s in sizes {
            if tx.send(s).await.is_err() {
                return;
            }
        }
    }
}

/// Sends the runtime's output until its writer closes, then half-closes the stream. Output the
/// client can no longer take is read and dropped, so the process never blocks on it.
async fn pump_output(mut pipe: DuplexStream, w: StreamWriter) {
    let mut buf = vec![0u8; 32 << 10];
    let mut open = true;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if open && w.write(&buf[..n]).await.is_err() {
            open = false;
        }
    }
    w.finish().await;
}

#[derive(Default)]
struct SpdyStreams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

/// Serves an exec or attach on an upgraded SPDY connection.
pub(crate) async fn serve_spdy<IO>(inner: Arc<Inner>, io: IO, protocol: &'static str, p: Prepared)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let Some((target, opts)) = Target::from_prepared(p) else {
        return;
    };
    let v4 = matches!(protocol, "v4.channel.k8s.io" | "v5.channel.k8s.io");
    let resizable = v4 || protocol == "v3.channel.k8s.io";
    let want_resize = opts.tty && resizable;
    let mut session = Session::start(io, inner.config.stream_idle_timeout);

    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(want_resize);
    let mut s = SpdyStreams::default();
    let mut received = 0;
    let deadline = tokio::time::sleep(inner.config.stream_creation_timeout);
    tokio::pin!(deadline);
    while received < expected {
        let new = tokio::select! {
            n = session.next_stream() => match n {
                Some(n) => n,
                None => return,
            },
            _ = &mut deadline => {
                tracing::warn!("stream: timed out waiting for client to create streams");
                session.close().await;
                return;
            }
        };
        let kind = new.headers.get("streamtype").unwrap_or("").to_owned();
        // Every stream gets its reply, as in the kubelet; only the expected ones count.
        let stream = new.accept().await;
        let slot = match kind.as_str() {
            "error" => &mut s.error,
            "stdin" if opts.stdin => &mut s.stdin,
            "stdout" if opts.stdout => &mut s.stdout,
            "stderr" if opts.stderr => &mut s.stderr,
            "resize" if want_resize => &mut s.resize,
            other => {
                tracing::debug!(stream_type = other, "stream: unexpected stream");
                continue;
            }
        };
        if slot.is_none() {
            *slot = Some(stream);
            received += 1;
        }
    }

    let (io, pipes) = pipes(
        s.stdin.is_some(),
        s.stdout.is_some(),
        s.stderr.is_some(),
        s.resize.is_some(),
        opts.tty,
    );
    let mut finish = Vec::new();
    if let (Some(st), Some(pipe)) = (s.stdin, pipes.stdin) {
        let (rx, w) = st.into_parts();
        finish.push(w);
        tokio::spawn(pump_stdin(rx, pipe));
    }
    if let (Some(st), Some(tx)) = (s.resize, pipes.resize) {
        let (rx, w) = st.into_parts();
        finish.push(w);
        tokio::spawn(pump_resize(rx, tx));
    }
    let mut outputs = Vec::new();
    for (st, pipe) in [(s.stdout, pipes.stdout), (s.stderr, pipes.stderr)] {
        if let (Some(st), Some(pipe)) = (st, pipe) {
            outputs.push(tokio::spawn(pump_output(pipe, st.writer())));
        }
    }

    // The client going away ends the session: the run is dropped, which undoes it (the
    // runtime kills an exec's process). Streams opened after the setup are refused.
    let run = target.run(&inner, io);
    tokio::pin!(run);
    let outcome = loop {
        tokio::select! {
            o = &mut run => break o,
            n = session.next_stream() => match n {
                Some(extra) => extra.refuse().await,
                None => {
                    tracing::debug!("stream: the client went away before the command ended");
                    return;
                }
            },
        }
    };
    for o in outputs {
        let _ = o.await;
    }
    if let Some(err) = s.error {
        let w = err.writer();
        let status = outcome.encode(v4);
        if !status.is_empty() {
            let _ = w.write(&status).await;
        }
        w.finish().await;
    }
    for w in finish {
        w.finish().await;
    }
    session.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_events_are_decoded_across_splits() {
        let mut d = ResizeDecoder::default();
        assert!(d.push(b"{\"Width\":80,").unwrap().is_empty());
        let got = d
            .push(b"\"Height\":24}\n{\"Width\":100,\"Height\":50}\n{\"Wi")
            .unwrap();
        assert_eq!(
            got,
            [
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 50
                }
            ]
        );
        assert_eq!(
            d.push(b"dth\":1,\"Height\":2}").unwrap(),
            [TermSize {
                width: 1,
                height: 2
            }]
        );
        assert!(d.push(b"not json").is_err());
    }
}
