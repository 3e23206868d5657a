//! The server side of a SPDY/3.1 connection, as the Kubernetes streaming clients use it: the
//! client opens every stream (odd ids, increasing) with SYN_STREAM, the server answers each it
//! accepts with an empty SYN_REPLY or refuses it with RST_STREAM, and both sides half-close with
//! FIN. PINGs from the client are echoed.
//!
//! Flow control is not enforced in either direction: the Go implementation the clients are built
//! on (spdystream) neither sends WINDOW_UPDATE nor honours it, so a window would only stall.
//! Back-pressure comes from bounded queues instead: a stream's inbound queue is bounded, and a
//! full queue stops the connection's reader, as in spdystream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::frame::{Frame, FrameDecoder, FrameEncoder, Headers, goaway, rst};

/// Largest data frame this side writes (what Go's io.Copy writes too).
const WRITE_CHUNK: usize = 32 << 10;
/// Inbound frames queued per stream before the connection's reader waits.
const STREAM_QUEUE: usize = 32;
/// Streams open at once on one connection (a port-forward opens two per connection it
/// forwards); past it a new stream is refused with REFUSED_STREAM.
pub(crate) const MAX_STREAMS: usize = 256;
/// How long [`Session::close`] waits for the client to close its side.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

enum Out {
    Frame(Frame),
    /// Write everything queued, shut the write side down, then acknowledge.
    Shutdown(oneshot::Sender<()>),
}

/// The inbound side of a stream, as the reader task keeps it.
struct Slot {
    /// Dropped on the client's FIN or RST_STREAM: the stream's reader then sees the end.
    tx: Option<mpsc::Sender<Bytes>>,
    /// Set when the client resets the stream; dropped (which the writers also see) when the
    /// connection ends.
    reset: watch::Sender<bool>,
    /// The writers' FIN state: a stream closed both ways is forgotten.
    local_fin: Arc<AtomicBool>,
}

impl Slot {
    fn open(&self) -> bool {
        self.tx.is_some() || !self.local_fin.load(Ordering::Acquire)
    }
}

struct Shared {
    // std's Mutex: held only to look a slot up or change it, never across an await.
    streams: Mutex<HashMap<u32, Slot>>,
    last_stream: AtomicU32,
    /// Milliseconds since `epoch` of the last frame read or written, for the idle timeout.
    activity: AtomicU64,
    epoch: Instant,
}

impl Shared {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
    }
}

/// A stream the client opened, not yet answered.
pub(crate) struct NewStream {
    pub(crate) id: u32,
    pub(crate) headers: Headers,
    rx: mpsc::Receiver<Bytes>,
    writer: StreamWriter,
}

impl NewStream {
    /// Answers with SYN_REPLY. The reply is queued before this returns, so it precedes anything
    /// written on the stream.
    pub(crate) async fn accept(self) -> Stream {
        let _ = self
            .writer
            .out
            .send(Out::Frame(Frame::SynReply {
                stream_id: self.id,
                fin: false,
                headers: Headers::new(),
            }))
            .await;
        Stream {
            rx: self.rx,
            writer: self.writer,
        }
    }

    /// Refuses the stream with RST_STREAM (REFUSED_STREAM).
    pub(crate) async fn refuse(self) {
        self.writer.reset(rst::REFUSED_STREAM).await;
    }
}

/// An accepted stream.
pub(crate) struct Stream {
    rx: mpsc::Receiver<Bytes>,
    writer: StreamWriter,
}

impl Stream {
    pub(crate) fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// The client's data (ending at its FIN, a reset or the connection's end) and the writer.
    pub(crate) fn into_parts(self) -> (mpsc::Receiver<Bytes>, StreamWriter) {
        (self.rx, self.writer)
    }
}

/// The outbound side of a stream; clones share the FIN state.
#[derive(Clone)]
pub(crate) struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    fin: Arc<AtomicBool>,
    reset: watch::Receiver<bool>,
}

/// Writing failed: the stream was reset, finished, or the connection is gone.
#[derive(Debug)]
pub(crate) struct Closed;

impl StreamWriter {
    /// Sends `data` in data frames of at most 32 KiB.
    pub(crate) async fn write(&self, data: &[u8]) -> Result<(), Closed> {
        for chunk in data.chunks(WRITE_CHUNK) {
            if self.fin.load(Ordering::Acquire) || *self.reset.borrow() {
                return Err(Closed);
            }
            self.out
                .send(Out::Frame(Frame::Data {
                    stream_id: self.id,
                    fin: false,
                    data: Bytes::copy_from_slice(chunk),
                }))
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty data frame with FIN); only the first call sends.
    pub(crate) async fn finish(&self) {
        if self.fin.swap(true, Ordering::AcqRel) || *self.reset.borrow() {
            return;
        }
        let _ = self
            .out
            .send(Out::Frame(Frame::Data {
                stream_id: self.id,
                fin: true,
                data: Bytes::new(),
            }))
            .await;
    }

    /// Resets the stream.
    pub(crate) async fn reset(&self, status: u32) {
        self.fin.store(true, Ordering::Release);
        let _ = self
            .out
            .send(Out::Frame(Frame::RstStream {
                stream_id: self.id,
                status,
            }))
            .await;
    }

    /// Resolves when the client resets the stream or the connection ends.
    pub(crate) async fn closed(&self) {
        let mut r = self.reset.clone();
        let _ = r.wait_for(|reset| *reset).await;
    }
}

/// A running connection: a reader task and a writer task over the two halves of the socket.
pub(crate) struct Session {
    incoming: mpsc::Receiver<NewStream>,
    out: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        // What the reader would have done had it seen the end itself.
        self.shared.streams.lock().unwrap().clear();
    }
}

impl Session {
    /// Serves SPDY on `io` (the upgraded connection). `idle` closes it after that long without a
    /// frame in either direction.
    pub(crate) fn start<IO>(io: IO, idle: Option<Duration>) -> Session
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            streams: Mutex::new(HashMap::new()),
            last_stream: AtomicU32::new(0),
            activity: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let writer = tokio::spawn(write_loop(wr, out_rx, shared.clone()));
        let reader = tokio::spawn(read_loop(rd, in_tx, out_tx.clone(), shared.clone(), idle));
        Session {
            incoming: in_rx,
            out: out_tx,
            shared,
            reader,
            writer,
        }
    }

    /// The next stream the client opens; `None` once the connection is gone.
    pub(crate) async fn next_stream(&mut self) -> Option<NewStream> {
        self.incoming.recv().await
    }

    /// Closes gracefully: GOAWAY, the write side shut down after everything queued, then a wait
    /// (bounded) for the client to close its side, so unread input does not make the kernel
    /// reset the connection under data the client has not read yet.
    pub(crate) async fn close(mut self) {
        self.incoming.close();
        let last = self.shared.last_stream.load(Ordering::Relaxed);
        let _ = self
            .out
            .send(Out::Frame(Frame::GoAway {
                last_good_stream_id: last,
                status: goaway::OK,
            }))
            .await;
        let (ack_tx, ack_rx) = oneshot::channel();
        if self.out.send(Out::Shutdown(ack_tx)).await.is_ok() {
            let _ = ack_rx.await;
        }
        let _ = tokio::time::timeout(CLOSE_LINGER, &mut self.reader).await;
        let _ = (&mut self.writer).await;
    }
}

async fn write_loop<W: AsyncWrite>(
    mut wr: tokio::io::WriteHalf<W>,
    mut rx: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
) {
    let mut enc = FrameEncoder::new();
    let mut buf = Vec::with_capacity(64 << 10);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut shutdown = None;
        // Coalesce whatever is already queued into one write.
        while let Some(item) = next.take() {
            match item {
                Out::Frame(f) => {
                    if let Err(e) = enc.encode(&f, &mut buf) {
                        tracing::warn!(error = %e, "spdy: frame not encodable");
                    }
                }
                Out::Shutdown(ack) => {
                    shutdown = Some(ack);
                    break;
                }
            }
            if buf.len() >= 256 << 10 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            buf.clear();
            shared.touch();
        }
        if let Some(ack) = shutdown {
            let _ = wr.shutdown().await;
            let _ = ack.send(());
            return;
        }
    }
}

async fn read_loop<R: AsyncRead>(
    mut rd: tokio::io::ReadHalf<R>,
    incoming: mpsc::Sender<NewStream>,
    out: mpsc::Sender<Out>,
    shared: Arc<Shared>,
    idle: Option<Duration>,
) {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 32 << 10];
    'read: loop {
        let n = match idle {
            None => rd.read(&mut buf).await,
            Some(idle) => loop {
                let last = Duration::from_millis(shared.activity.load(Ordering::Relaxed));
                let deadline = shared.epoch + last + idle;
                if Instant::now() >= deadline {
                    tracing::debug!("spdy: connection idle, closing");
                    break 'read;
                }
                tokio::select! {
                    r = rd.read(&mut buf) => break r,
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                }
            },
        };
        let n = match n {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        shared.touch();
        dec.extend(&buf[..n]);
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "spdy: bad frame, closing");
                    let last = shared.last_stream.load(Ordering::Relaxed);
                    let _ = out
                        .send(Out::Frame(Frame::GoAway {
                            last_good_stream_id: last,
                            status: goaway::PROTOCOL_ERROR,
                        }))
                        .await;
                    break 'read;
                }
            };
            handle(frame, &incoming, &out, &shared).await;
        }
    }
    // The end: every stream's reader sees its end, every writer sees the reset.
    shared.streams.lock().unwrap().clear();
}

async fn handle(
    frame: Frame,
    incoming: &mpsc::Sender<NewStream>,
    out: &mpsc::Sender<Out>,
    shared: &Shared,
) {
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let last = shared.last_stream.load(Ordering::Relaxed);
            if stream_id % 2 == 0 || stream_id <= last {
                let _ = out
                    .send(Out::Frame(Frame::RstStream {
                        stream_id,
                        status: rst::PROTOCOL_ERROR,
                    }))
                    .await;
                return;
            }
            shared.last_stream.store(stream_id, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            let (reset_tx, reset_rx) = watch::channel(false);
            let remote_done = flags & super::frame::FLAG_FIN != 0;
            let local_fin = Arc::new(AtomicBool::new(
                flags & super::frame::FLAG_UNIDIRECTIONAL != 0,
            ));
            let full = {
                let mut streams = shared.streams.lock().unwrap();
                streams.retain(|_, s| s.open());
                let full = streams.len() >= MAX_STREAMS;
                if !full {
                    streams.insert(
                        stream_id,
                        Slot {
                            tx: (!remote_done).then_some(tx),
                            reset: reset_tx,
                            local_fin: local_fin.clone(),
                        },
                    );
                }
                full
            };
            if full {
                let _ = out
                    .send(Out::Frame(Frame::RstStream {
                        stream_id,
                        status: rst::REFUSED_STREAM,
                    }))
                    .await;
                return;
            }
            let new = NewStream {
                id: stream_id,
                headers,
                rx,
                writer: StreamWriter {
                    id: stream_id,
                    out: out.clone(),
                    fin: local_fin,
                    reset: reset_rx,
                },
            };
            if let Err(mpsc::error::SendError(new)) = incoming.send(new).await {
                new.refuse().await;
            }
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            let tx = {
                let mut streams = shared.streams.lock().unwrap();
                let Some(slot) = streams.get_mut(&stream_id) else {
                    return;
                };
                if fin { slot.tx.take() } else { slot.tx.clone() }
            };
            if let Some(tx) = tx
                && !data.is_empty()
            {
                // A receiver that is gone means nobody reads this stream: drop the data.
                let _ = tx.send(data).await;
            }
        }
        Frame::Headers {
            stream_id,
            fin: true,
            ..
        } => {
            if let Some(slot) = shared.streams.lock().unwrap().get_mut(&stream_id) {
                slot.tx = None;
            }
        }
        Frame::RstStream { stream_id, .. } => {
            if let Some(slot) = shared.streams.lock().unwrap().remove(&stream_id) {
                let _ = slot.reset.send(true);
            }
        }
        Frame::Ping { id } => {
            // Odd ids are the client's; even ones would answer pings this side never sends.
            if id % 2 == 1 {
                let _ = out.send(Out::Frame(Frame::Ping { id })).await;
            }
        }
        // The client going away changes nothing here: it opens streams, this side does not.
        Frame::GoAway { .. }
        | Frame::Settings { .. }
        | Frame::WindowUpdate { .. }
        | Frame::SynReply { .. }
        | Frame::Headers { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::spdy::frame::FLAG_FIN;

    /// Frames the server writes, read until `n` RST_STREAM or SYN_REPLY frames came.
    async fn answers(
        rd: &mut tokio::io::DuplexStream,
        dec: &mut FrameDecoder,
        n: usize,
    ) -> Vec<Frame> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        while got.len() < n {
            let k = rd.read(&mut buf).await.unwrap();
            assert!(k > 0, "the connection ended after {} answers", got.len());
            dec.extend(&buf[..k]);
            while let Some(f) = dec.next_frame().unwrap() {
                if matches!(f, Frame::RstStream { .. } | Frame::SynReply { .. }) {
                    got.push(f);
                }
            }
        }
        got
    }

    #[tokio::test]
    async fn open_streams_are_bounded_and_closed_ones_are_forgotten() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut session = Session::start(server, None);
        // Accept every stream and finish our side at once.
        let acceptor = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Some(s) = session.next_stream().await {
                let s = s.accept().await;
                s.writer().finish().await;
                kept.push(s);
            }
        });
        let mut enc = FrameEncoder::new();
        let mut dec = FrameDecoder::new();
        let syn = |id: u32, flags: u8| Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags,
            headers: Headers::new().with("streamType", "data"),
        };
        // MAX_STREAMS open ones (the client keeps its side open), then one more: refused.
        let mut wire = Vec::new();
        for i in 0..=MAX_STREAMS as u32 {
            enc.encode(&syn(2 * i + 1, 0), &mut wire).unwrap();
        }
        client.write_all(&wire).await.unwrap();
        let got = answers(&mut client, &mut dec, MAX_STREAMS + 1).await;
        let refused: Vec<_> = got
            .iter()
            .filter_map(|f| match f {
                Frame::RstStream { stream_id, status } => Some((*stream_id, *status)),
                _ => None,
            })
            .collect();
        assert_eq!(refused, [(2 * MAX_STREAMS as u32 + 1, rst::REFUSED_STREAM)]);
        // The client closes its side of the first stream: closed both ways, it no longer
        // counts, and a new stream is accepted.
        wire.clear();
        enc.encode(
            &Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new(),
            },
            &mut wire,
        )
        .unwrap();
        let next = 2 * MAX_STREAMS as u32 + 3;
        enc.encode(&syn(next, FLAG_FIN), &mut wire).unwrap();
        client.write_all(&wire).await.unwrap();
        let got = answers(&mut client, &mut dec, 1).await;
        assert!(
            matches!(got[0], Frame::SynReply { stream_id, .. } if stream_id == next),
            "{got:?}"
        );
        drop(client);
        acceptor.await.unwrap();
    }
}
