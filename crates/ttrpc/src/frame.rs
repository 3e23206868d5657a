//! The ttrpc frame: a 10-byte header and up to [`MAX_DATA_LEN`] bytes of payload.

use bytes::{Buf, Bytes, BytesMut};

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 10;
/// Largest payload a frame may carry (4 MiB), as in containerd's ttrpc.
pub const MAX_DATA_LEN: usize = 4 << 20;

/// On a `Request` or `Data` frame: the sender will send no more data on this stream.
pub const FLAG_REMOTE_CLOSED: u8 = 0x1;
/// On a `Request` frame: the sender will stream data after the request.
pub const FLAG_REMOTE_OPEN: u8 = 0x2;
/// On a `Data` frame: the frame carries no message (an empty payload is otherwise a message).
pub const FLAG_NO_DATA: u8 = 0x4;

/// The kind of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// Opens a stream; payload is a `Request`.
    Request,
    /// Ends a stream; payload is a `Response`.
    Response,
    /// A message inside a stream.
    Data,
    /// A type this implementation does not know; ignored for forward compatibility.
    Unknown(u8),
}

impl MessageType {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => MessageType::Request,
            2 => MessageType::Response,
            3 => MessageType::Data,
            other => MessageType::Unknown(other),
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            MessageType::Request => 1,
            MessageType::Response => 2,
            MessageType::Data => 3,
            MessageType::Unknown(v) => v,
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes (excluding the header).
    pub length: u32,
    /// Stream the frame belongs to; client streams are odd.
    pub stream_id: u32,
    /// What the frame carries.
    pub message_type: MessageType,
    /// `FLAG_*` bits.
    pub flags: u8,
}

impl FrameHeader {
    /// Parses a header from its 10 bytes.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            length: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            message_type: MessageType::from_u8(b[8]),
            flags: b[9],
        }
    }

    /// Serializes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.length.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8] = self.message_type.as_u8();
        b[9] = self.flags;
        b
    }
}

/// Builds one frame (header and payload) in a single buffer, ready to write.
pub(crate) fn encode_frame(stream_id: u32, ty: MessageType, flags: u8, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        length: payload.len() as u32,
        stream_id,
        message_type: ty,
        flags,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out
}

/// The read half of a connection, read by readiness: nothing waits on a buffer, so an idle
/// connection (the daemon keeps one per container, a shim one per client) holds no memory.
pub(crate) trait ReadHalf {
    /// Resolves once a read may find bytes (cancel-safe).
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// Reads without blocking; `WouldBlock` when nothing is there after all.
    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl ReadHalf for tokio::net::unix::OwnedReadHalf {
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        self.as_ref().readable()
    }

    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.as_ref().try_read(buf)
    }
}

/// Reads frames from a connection. Cancel-safe: all state lives in the reader, so a `select!`
/// that drops a pending [`FrameReader::next`] loses no bytes.
pub(crate) struct FrameReader<R> {
    rd: R,
    decoder: FrameDecoder,
}

/// Bytes taken per read, into a buffer on the stack.
const READ_CHUNK: usize = 16 * 1024;

impl<R: ReadHalf> FrameReader<R> {
    pub(crate) fn new(rd: R) -> Self {
        FrameReader {
            rd,
            decoder: FrameDecoder::new(),
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream between frames.
    pub(crate) async fn next(&mut self) -> std::io::Result<Option<Decoded>> {
        loop {
            if let Some(d) = self.decoder.next_frame() {
                return Ok(Some(d));
            }
            self.rd.readable().await?;
            if !self.read_ready()? {
                if self.decoder.has_partial() {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                return Ok(None);
            }
        }
    }

    /// Takes what the socket holds; false at the end of the stream.
    fn read_ready(&mut self) -> std::io::Result<bool> {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            match self.rd.try_read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.decoder.extend(&buf[..n]);
                    if n < buf.len() {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// An incremental, synchronous frame decoder over a byte buffer.
///
/// Used by fuzzing and by anything that has bytes in memory; never panics on any input.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    skipping: usize,
}

/// One item produced by [`FrameDecoder::next_frame`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame.
    Frame(FrameHeader, Bytes),
    /// A frame over the size limit: its payload is being skipped.
    TooLarge(FrameHeader),
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the wire.
    pub fn extend(&mut self, data: &[u8]) {
        let mut data = data;
        if self.skipping > 0 {
            let n = self.skipping.min(data.len());
            self.skipping -= n;
            data = &data[n..];
        }
        self.buf.extend_from_slice(data);
    }

    /// True while a frame has been started but not completed.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.skipping > 0
    }

    /// Returns the next complete item, or `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Decoded> {
        if self.skipping > 0 || self.buf.len() < HEADER_LEN {
            return None;
        }
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&self.buf[..HEADER_LEN]);
        let header = FrameHeader::decode(&hb);
        let len = header.length as usize;
        if len > MAX_DATA_LEN {
            self.buf.advance(HEADER_LEN);
            let n = len.min(self.buf.len());
            self.buf.advance(n);
            self.skipping = len - n;
            return Some(Decoded::TooLarge(header));
        }
        if self.buf.len() < HEADER_LEN + len {
            return None;
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        if self.buf.is_empty() {
            // Keep no spare capacity between messages (it would live as long as the
            // connection); the payload keeps its bytes alive on its own.
            self.buf = BytesMut::new();
        }
        Some(Decoded::Frame(header, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_is_big_endian() {
        let h = FrameHeader {
            length: 0x0102_0304,
            stream_id: 7,
            message_type: MessageType::Data,
            flags: FLAG_REMOTE_CLOSED | FLAG_NO_DATA,
        };
        let b = h.encode();
        assert_eq!(b, [1, 2, 3, 4, 0, 0, 0, 7, 3, 5]);
        assert_eq!(FrameHeader::decode(&b), h);
    }

    #[test]
    fn decoder_splits_frames_across_chunks() {
        let mut wire = encode_frame(1, MessageType::Request, 0, b"hello");
        wire.extend(encode_frame(3, MessageType::Data, FLAG_NO_DATA, b""));
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for chunk in wire.chunks(3) {
            d.extend(chunk);
            while let Some(f) = d.next_frame() {
                out.push(f);
            }
        }
        assert_eq!(out.len(), 2);
        match &out[0] {
            Decoded::Frame(h, p) => {
                assert_eq!(h.stream_id, 1);
                assert_eq!(&p[..], b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decoder_skips_oversized_payload() {
        let mut d = FrameDecoder::new();
        let big = FrameHeader {
            length: (MAX_DATA_LEN + 1) as u32,
            stream_id: 5,
            message_type: MessageType::Request,
            flags: 0,
        };
        d.extend(&big.encode());
        assert!(matches!(d.next_frame(), Some(Decoded::TooLarge(_))));
        d.extend(&vec![0u8; MAX_DATA_LEN + 1]);
        d.extend(&encode_frame(7, MessageType::Request, 0, b"x"));
        match d.next_frame() {
            Some(Decoded::Frame(h, p)) => {
                assert_eq!(h.stream_id, 7);
                assert_eq!(&p[..], b"x");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn reader_is_cancel_safe() {
        use tokio::io::AsyncWriteExt;
        let (r, mut w) = tokio::net::UnixStream::pair().unwrap();
        let mut reader = FrameReader::new(r.into_split().0);
        let writer = tokio::spawn(async move {
            for i in 0..50u32 {
                let f = encode_frame(2 * i + 1, MessageType::Request, 0, &[i as u8; 40]);
                for b in f.chunks(3) {
                    w.write_all(b).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut got = 0u32;
        while got < 50 {
            // A select that keeps dropping the pending read must not lose bytes.
            tokio::select! {
                r = reader.next() => match r.unwrap() {
                    Some(Decoded::Frame(h, p)) => {
                        assert_eq!(h.stream_id, 2 * got + 1);
                        assert_eq!(&p[..], &[got as u8; 40][..]);
                        got += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                },
                _ = tokio::task::yield_now() => {}
            }
        }
        writer.await.unwrap();
    }

    #[test]
    fn decoder_never_panics_on_noise() {
        // A small deterministic xorshift generator: no dev-dependency needed.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut d = FrameDecoder::new();
            let len = (s % 64) as usize;
            let mut data = Vec::with_capacity(len);
            for _ in 0..len {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                data.push(s as u8);
            }
            d.extend(&data);
            while d.next_frame().is_some() {}
        }
    }
}
