//! SPDY/3.1 frames: their layouts, a sans-IO decoder and an encoder.
//!
//! Every frame starts with 8 bytes. A control frame has the control bit set, a 15-bit version
//! (3), a 16-bit type, 8 bits of flags and a 24-bit payload length; a data frame has the control
//! bit clear, a 31-bit stream id, flags and the length. Header blocks (in SYN_STREAM, SYN_REPLY
//! and HEADERS) are a 32-bit pair count followed by length-prefixed names and values, compressed
//! with zlib and the SPDY/3 dictionary; each direction of a connection is one zlib stream,
//! flushed (`Z_SYNC_FLUSH`) at the end of every block.

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::dictionary;

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// Length of a frame header.
pub const HEADER_LEN: usize = 8;
/// Largest data frame payload accepted (the protocol's limit is 16 MiB; the Go clients write at
/// most 32 KiB per frame).
pub const MAX_DATA_LEN: usize = 1 << 20;
/// Largest control frame payload accepted.
pub const MAX_CONTROL_LEN: usize = 256 << 10;
/// Largest decompressed header block accepted.
pub const MAX_HEADER_BLOCK: usize = 256 << 10;

/// FLAG_FIN, on data frames and on SYN_STREAM, SYN_REPLY and HEADERS: the sender's last frame
/// on this stream.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM: the recipient may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const STREAM_ID_MASK: u32 = 0x7fff_ffff;
const MAX_LEN_24: usize = 0x00ff_ffff;

/// RST_STREAM status codes.
pub mod rst {
    /// PROTOCOL_ERROR
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM
    pub const REFUSED_STREAM: u32 = 3;
    /// CANCEL
    pub const CANCEL: u32 = 5;
    /// INTERNAL_ERROR
    pub const INTERNAL_ERROR: u32 = 6;
    /// STREAM_IN_USE
    pub const STREAM_IN_USE: u32 = 8;
}

/// GOAWAY status codes.
pub mod goaway {
    /// OK
    pub const OK: u32 = 0;
    /// PROTOCOL_ERROR
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INTERNAL_ERROR
    pub const INTERNAL_ERROR: u32 = 2;
}

/// What went wrong reading or writing frames. Every decoding error is fatal to the connection:
/// the header decompressor's state cannot be trusted afterwards.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    /// A control frame of a version other than 3.
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    /// A frame past the size limit.
    #[error("{frame} frame of {len} bytes is too large")]
    FrameTooLarge {
        /// The frame's type.
        frame: &'static str,
        /// Its length.
        len: usize,
    },
    /// A frame whose length does not fit its type.
    #[error("{frame} frame has a bad length {len}")]
    BadLength {
        /// The frame's type.
        frame: &'static str,
        /// Its length.
        len: usize,
    },
    /// A frame that needs a stream id names stream 0.
    #[error("{0} frame with stream id 0")]
    ZeroStreamId(&'static str),
    /// A header block that does not parse.
    #[error("malformed header block: {0}")]
    HeaderBlock(&'static str),
    /// A header block past the limit once decompressed.
    #[error("header block larger than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    /// The header compressor or decompressor failed.
    #[error("header compression: {0}")]
    Zlib(String),
}

/// The name/value pairs of a header block. Names are compared without regard to ASCII case and
/// written in lower case, as SPDY/3 requires; a value holding several values separates them
/// with NUL bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// An empty block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair (a name already present is replaced).
    pub fn insert(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = value.to_owned(),
            None => self.entries.push((name, value.to_owned())),
        }
    }

    /// Builder form of [`Headers::insert`].
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.insert(name, value);
        self
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    /// The pairs as stored (values unsplit).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn encode_plain(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (n, v) in &self.entries {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
    }

    fn decode_plain(mut b: &[u8]) -> Result<Self, SpdyError> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], SpdyError> {
            if b.len() < n {
                return Err(SpdyError::HeaderBlock("truncated"));
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Ok(h)
        }
        fn take_u32(b: &mut &[u8]) -> Result<usize, SpdyError> {
            let h = take(b, 4)?;
            Ok(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
        }
        let count = take_u32(&mut b)?;
        // Each pair needs at least its two lengths.
        if count > b.len() / 8 {
            return Err(SpdyError::HeaderBlock("pair count exceeds block"));
        }
        let mut entries: Vec<(String, String)> = Vec::with_capacity(count);
        for _ in 0..count {
            let nlen = take_u32(&mut b)?;
            if nlen == 0 {
                return Err(SpdyError::HeaderBlock("empty header name"));
            }
            let name = take(&mut b, nlen)?;
            let vlen = take_u32(&mut b)?;
            let value = take(&mut b, vlen)?;
            let name = std::str::from_utf8(name)
                .map_err(|_| SpdyError::HeaderBlock("header name is not UTF-8"))?
                .to_ascii_lowercase();
            let value = std::str::from_utf8(value)
                .map_err(|_| SpdyError::HeaderBlock("header value is not UTF-8"))?;
            if entries.iter().any(|(n, _)| *n == name) {
                return Err(SpdyError::HeaderBlock("duplicate header name"));
            }
            entries.push((name, value.to_owned()));
        }
        if !b.is_empty() {
            return Err(SpdyError::HeaderBlock("trailing bytes"));
        }
        Ok(Self { entries })
    }
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Per-entry flags (1 = persist value, 2 = persisted).
    pub flags: u8,
    /// 24-bit id (4 = MAX_CONCURRENT_STREAMS, 7 = INITIAL_WINDOW_SIZE, ...).
    pub id: u32,
    /// The setting's value.
    pub value: u32,
}

/// A decoded frame. Stream ids are 31-bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream.
        stream_id: u32,
        /// The stream it belongs to (server push), or 0.
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// Credential slot (unused).
        slot: u8,
        /// [`FLAG_FIN`] and [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        /// The stream's headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The stream accepted.
        stream_id: u32,
        /// Whether the sender's side ends with it.
        fin: bool,
        /// The reply's headers.
        headers: Headers,
    },
    /// Ends a stream abnormally.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why (see [`rst`]).
        status: u32,
    },
    /// Connection settings.
    Settings {
        /// Whether persisted settings are to be cleared.
        clear: bool,
        /// The settings.
        entries: Vec<Setting>,
    },
    /// A round trip to measure or keep the connection.
    Ping {
        /// Echoed by the peer.
        id: u32,
    },
    /// The connection is ending.
    GoAway {
        /// The last stream the sender handled.
        last_good_stream_id: u32,
        /// Why.
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// Whether the sender's side ends with it.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Flow control: the receiver takes `delta` more bytes.
    WindowUpdate {
        /// The stream.
        stream_id: u32,
        /// Bytes added to the window.
        delta: u32,
    },
    /// Stream data.
    Data {
        /// The stream.
        stream_id: u32,
        /// Whether the sender's side ends with it.
        fin: bool,
        /// The bytes.
        data: Bytes,
    },
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn zlib_err(e: impl std::fmt::Display) -> SpdyError {
    SpdyError::Zlib(e.to_string())
}

/// Reads frames out of bytes pushed into it, in any split. Holds the connection's inbound zlib
/// stream.
pub struct FrameDecoder {
    buf: BytesMut,
    inflate: Decompress,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder for a new connection (its own header decompressor).
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            inflate: Decompress::new(true),
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `None` if more bytes are needed. Control frames of unknown
    /// types are skipped, as the specification asks. An oversized frame is refused as soon as
    /// its header arrives.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        loop {
            if self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let h = &self.buf[..HEADER_LEN];
            let control = h[0] & 0x80 != 0;
            let flags = h[4];
            let len = (be32(&h[4..8]) & 0x00ff_ffff) as usize;
            if !control {
                let stream_id = be32(&h[0..4]) & STREAM_ID_MASK;
                if len > MAX_DATA_LEN {
                    return Err(SpdyError::FrameTooLarge { frame: "DATA", len });
                }
                if self.buf.len() < HEADER_LEN + len {
                    return Ok(None);
                }
                if stream_id == 0 {
                    return Err(SpdyError::ZeroStreamId("DATA"));
                }
                self.buf.advance(HEADER_LEN);
                let data = self.buf.split_to(len).freeze();
                return Ok(Some(Frame::Data {
                    stream_id,
                    fin: flags & FLAG_FIN != 0,
                    data,
                }));
            }
            let version = u16::from_be_bytes([h[0], h[1]]) & 0x7fff;
            let kind = u16::from_be_bytes([h[2], h[3]]);
            if version != VERSION {
                return Err(SpdyError::UnsupportedVersion(version));
            }
            if len > MAX_CONTROL_LEN {
                return Err(SpdyError::FrameTooLarge {
                    frame: "control",
                    len,
                });
            }
            if self.buf.len() < HEADER_LEN + len {
                return Ok(None);
            }
            self.buf.advance(HEADER_LEN);
            let payload = self.buf.split_to(len);
            if let Some(frame) = self.control(kind, flags, &payload)? {
                return Ok(Some(frame));
            }
        }
    }

    fn control(&mut self, kind: u16, flags: u8, p: &[u8]) -> Result<Option<Frame>, SpdyError> {
        let fixed = |frame: &'static str, want: usize| {
            if p.len() == want {
                Ok(())
            } else {
                Err(SpdyError::BadLength {
                    frame,
                    len: p.len(),
                })
            }
        };
        let at_least = |frame: &'static str, want: usize| {
            if p.len() >= want {
                Ok(())
            } else {
                Err(SpdyError::BadLength {
                    frame,
                    len: p.len(),
                })
            }
        };
        let frame = match kind {
            TYPE_SYN_STREAM => {
                at_least("SYN_STREAM", 10)?;
                let stream_id = be32(&p[0..4]) & STREAM_ID_MASK;
                if stream_id == 0 {
                    return Err(SpdyError::ZeroStreamId("SYN_STREAM"));
                }
                Frame::SynStream {
                    stream_id,
                    associated_to: be32(&p[4..8]) & STREAM_ID_MASK,
                    priority: p[8] >> 5,
                    slot: p[9],
                    flags,
                    headers: self.headers(&p[10..])?,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let name = if kind == TYPE_HEADERS {
                    "HEADERS"
                } else {
                    "SYN_REPLY"
                };
                at_least(name, 4)?;
                let stream_id = be32(&p[0..4]) & STREAM_ID_MASK;
                if stream_id == 0 {
                    return Err(SpdyError::ZeroStreamId(name));
                }
                let headers = self.headers(&p[4..])?;
                let fin = flags & FLAG_FIN != 0;
                if kind == TYPE_HEADERS {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                fixed("RST_STREAM", 8)?;
                Frame::RstStream {
                    stream_id: be32(&p[0..4]) & STREAM_ID_MASK,
                    status: be32(&p[4..8]),
                }
            }
            TYPE_SETTINGS => {
                at_least("SETTINGS", 4)?;
                let n = be32(&p[0..4]) as usize;
                if n > (p.len() - 4) / 8 || p.len() != 4 + n * 8 {
                    return Err(SpdyError::BadLength {
                        frame: "SETTINGS",
                        len: p.len(),
                    });
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| Setting {
                        flags: e[0],
                        id: be32(&e[0..4]) & 0x00ff_ffff,
                        value: be32(&e[4..8]),
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            TYPE_PING => {
                fixed("PING", 4)?;
                Frame::Ping { id: be32(p) }
            }
            TYPE_GOAWAY => {
                fixed("GOAWAY", 8)?;
                Frame::GoAway {
                    last_good_stream_id: be32(&p[0..4]) & STREAM_ID_MASK,
                    status: be32(&p[4..8]),
                }
            }
            TYPE_WINDOW_UPDATE => {
                fixed("WINDOW_UPDATE", 8)?;
                Frame::WindowUpdate {
                    stream_id: be32(&p[0..4]) & STREAM_ID_MASK,
                    delta: be32(&p[4..8]) & STREAM_ID_MASK,
                }
            }
            // NOOP (a SPDY/2 leftover), CREDENTIAL and anything newer: ignored.
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }

    fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity((block.len() * 4).clamp(64, MAX_HEADER_BLOCK));
        let mut input = block;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::HeaderBlockTooLarge);
                }
                out.reserve((out.len()).min(MAX_HEADER_BLOCK - out.len()).max(64));
            }
            let (in0, out0) = (self.inflate.total_in(), out.len());
            let res = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - in0) as usize;
            input = &input[used..];
            match res {
                Ok(Status::StreamEnd) => return Err(SpdyError::Zlib("stream ended".into())),
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                    if used == 0 && out.len() == out0 && out.len() < out.capacity() {
                        return Err(SpdyError::Zlib("no progress".into()));
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(zlib_err)?;
                }
                Err(e) => return Err(zlib_err(e)),
            }
        }
        if out.len() > MAX_HEADER_BLOCK {
            return Err(SpdyError::HeaderBlockTooLarge);
        }
        Headers::decode_plain(&out)
    }
}

/// Writes frames, holding the connection's outbound zlib stream.
pub struct FrameEncoder {
    deflate: Compress,
    plain: Vec<u8>,
}

impl std::fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncoder").finish_non_exhaustive()
    }
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameEncoder {
    /// An encoder for a new connection (its own header compressor).
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Cannot fail on a fresh stream; a failure would surface as a zlib error on the peer.
        let _ = deflate.set_dictionary(dictionary());
        Self {
            deflate,
            plain: Vec::new(),
        }
    }

    /// Appends `frame`'s bytes to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_LEN_24 {
                    return Err(SpdyError::FrameTooLarge {
                        frame: "DATA",
                        len: data.len(),
                    });
                }
                out.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                push_flags_len(out, if *fin { FLAG_FIN } else { 0 }, data.len());
                out.extend_from_slice(data);
                Ok(())
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                let mut p = Vec::with_capacity(64);
                p.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                p.extend_from_slice(&(associated_to & STREAM_ID_MASK).to_be_bytes());
                p.push((priority & 7) << 5);
                p.push(*slot);
                self.compress(headers, &mut p)?;
                control(out, TYPE_SYN_STREAM, *flags, &p)
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let mut p = Vec::with_capacity(32);
                p.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                self.compress(headers, &mut p)?;
                control(out, kind, if *fin { FLAG_FIN } else { 0 }, &p)
            }
            Frame::RstStream { stream_id, status } => {
                control(out, TYPE_RST_STREAM, 0, &pair(*stream_id, *status))
            }
            Frame::Settings { clear, entries } => {
                let mut p = Vec::with_capacity(4 + 8 * entries.len());
                p.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    p.extend_from_slice(
                        &((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff)).to_be_bytes(),
                    );
                    p.extend_from_slice(&e.value.to_be_bytes());
                }
                control(
                    out,
                    TYPE_SETTINGS,
                    if *clear { FLAG_CLEAR_SETTINGS } else { 0 },
                    &p,
                )
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => control(out, TYPE_GOAWAY, 0, &pair(*last_good_stream_id, *status)),
            Frame::WindowUpdate { stream_id, delta } => control(
                out,
                TYPE_WINDOW_UPDATE,
                0,
                &pair(*stream_id, delta & STREAM_ID_MASK),
            ),
        }
    }

    fn compress(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        self.plain.clear();
        headers.encode_plain(&mut self.plain);
        let mut done = 0;
        loop {
            out.reserve(self.plain.len() - done + 64);
            let in0 = self.deflate.total_in();
            self.deflate
                .compress_vec(&self.plain[done..], out, FlushCompress::Sync)
                .map_err(zlib_err)?;
            done += (self.deflate.total_in() - in0) as usize;
            if done == self.plain.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

fn pair(a: u32, b: u32) -> [u8; 8] {
    let mut p = [0; 8];
    p[..4].copy_from_slice(&(a & STREAM_ID_MASK).to_be_bytes());
    p[4..].copy_from_slice(&b.to_be_bytes());
    p
}

fn push_flags_len(out: &mut Vec<u8>, flags: u8, len: usize) {
    out.extend_from_slice(&((u32::from(flags) << 24) | len as u32).to_be_bytes());
}

fn control(out: &mut Vec<u8>, kind: u16, flags: u8, payload: &[u8]) -> Result<(), SpdyError> {
    if payload.len() > MAX_LEN_24 {
        return Err(SpdyError::FrameTooLarge {
            frame: "control",
            len: payload.len(),
        });
    }
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    push_flags_len(out, flags, payload.len());
    out.extend_from_slice(payload);
    Ok(())
}
