//! Readers and writers around the archive streams.

use std::io::{self, Chain, Cursor, Read, Take, Write};

use berth_content::Digest;
use flate2::read::MultiGzDecoder;
use sha2::{Digest as _, Sha256};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Whether `head`, the first bytes of a stream, are a gzip header.
pub(super) fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&GZIP_MAGIC)
}

type Peeked<R> = Chain<Take<Cursor<[u8; 2]>>, R>;

/// The archive input: a plain tar stream, or a gzipped one (concatenated members allowed).
pub(super) enum Input<R: Read> {
    Plain(Peeked<R>),
    Gzip(Box<MultiGzDecoder<Peeked<R>>>),
}

impl<R: Read> std::fmt::Debug for Input<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Plain(_) => "Input::Plain",
            Input::Gzip(_) => "Input::Gzip",
        })
    }
}

impl<R: Read> Input<R> {
    /// Looks at the first two bytes of `r` and decompresses if they are the gzip magic.
    pub(super) fn detect(mut r: R) -> io::Result<Self> {
        let mut head = [0u8; 2];
        let mut n = 0;
        while n < head.len() {
            match r.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let gzip = is_gzip(&head[..n]);
        let stream = Cursor::new(head).take(n as u64).chain(r);
        Ok(if gzip {
            Input::Gzip(Box::new(MultiGzDecoder::new(stream)))
        } else {
            Input::Plain(stream)
        })
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::Plain(r) => r.read(buf),
            Input::Gzip(r) => r.read(buf),
        }
    }
}

/// Counts what passes through and remembers whether the end of the stream was reached.
#[derive(Debug)]
pub(super) struct Tracked<R> {
    inner: R,
    pub(super) total: u64,
    pub(super) at_eof: bool,
}

impl<R> Tracked<R> {
    pub(super) fn new(inner: R) -> Self {
        Tracked {
            inner,
            total: 0,
            at_eof: false,
        }
    }
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.at_eof = true;
        }
        self.total += n as u64;
        Ok(n)
    }
}

/// What an [`EntryReader`] kept of the bytes it passed on.
#[derive(Debug)]
pub(super) enum Captured {
    /// Not asked to keep anything.
    Off,
    /// The whole entry, which looks like JSON (starts with `{` after white space).
    Json(Vec<u8>),
    /// Kept nothing: the entry is bigger than the capture limit.
    TooLarge,
    /// Kept nothing: the entry does not look like JSON.
    NotJson,
}

/// Reads one tar entry of a known size: fails if the input ends early, remembers why the input
/// failed (to tell a broken archive from a failing sink), its first two bytes, and optionally
/// the whole entry when it is a small JSON document.
#[derive(Debug)]
pub(super) struct EntryReader<R> {
    inner: R,
    remaining: u64,
    read: u64,
    head: [u8; 2],
    capture: Captured,
    capture_limit: u64,
    sniffed: bool,
    pub(super) input_error: Option<String>,
}

impl<R: Read> EntryReader<R> {
    pub(super) fn new(inner: R, size: u64) -> Self {
        EntryReader {
            inner,
            remaining: size,
            read: 0,
            head: [0; 2],
            capture: Captured::Off,
            capture_limit: 0,
            sniffed: false,
            input_error: None,
        }
    }

    /// Keeps the entry's bytes if it is JSON of at most `limit` bytes.
    pub(super) fn capture_json(mut self, limit: u64) -> Self {
        self.capture = if self.remaining > limit {
            Captured::TooLarge
        } else {
            Captured::Json(Vec::new())
        };
        self.capture_limit = limit;
        self
    }

    /// The entry's first bytes (fewer if it is shorter).
    pub(super) fn head(&self) -> &[u8] {
        let n = self.read.min(self.head.len() as u64) as usize;
        &self.head[..n]
    }

    pub(super) fn bytes_read(&self) -> u64 {
        self.read
    }

    pub(super) fn captured(&self) -> &Captured {
        &self.capture
    }

    pub(super) fn into_captured(self) -> Captured {
        self.capture
    }

    fn record(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let at = self.read + i as u64;
            if at >= self.head.len() as u64 {
                break;
            }
            self.head[at as usize] = *b;
        }
        self.read += bytes.len() as u64;
        if let Captured::Json(buf) = &mut self.capture {
            if buf.len() as u64 + bytes.len() as u64 > self.capture_limit {
                self.capture = Captured::TooLarge;
                return;
            }
            buf.extend_from_slice(bytes);
            if !self.sniffed
                && let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace())
            {
                self.sniffed = true;
                if *first != b'{' {
                    self.capture = Captured::NotJson;
                }
            }
        }
    }
}

impl<R: Read> Read for EntryReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..max]) {
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends mid-entry");
                self.input_error = Some(e.to_string());
                return Err(e);
            }
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.input_error = Some(describe(&e));
                }
                return Err(e);
            }
        };
        self.remaining -= n as u64;
        self.record(&buf[..n]);
        Ok(n)
    }
}

/// Hashes and counts what passes through (export's check of each blob it copies).
#[derive(Debug)]
pub(super) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    pub(super) count: u64,
}

impl<R: Read> Hashing<R> {
    pub(super) fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub(super) fn digest(self) -> Digest {
        Digest::from_sha256_bytes(&self.hasher.finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that can be switched off: after a failed export the tar builder's drop would
/// otherwise write the end-of-archive marker and make a partial archive look complete.
#[derive(Debug)]
pub(super) struct Fuse<W> {
    inner: W,
    blown: bool,
}

impl<W: Write> Fuse<W> {
    pub(super) fn new(inner: W) -> Self {
        Fuse {
            inner,
            blown: false,
        }
    }

    pub(super) fn blow(&mut self) {
        self.blown = true;
    }

    pub(super) fn into_inner(self) -> W {
        self.inner
    }

    fn check(&self) -> io::Result<()> {
        if self.blown {
            return Err(io::Error::other("export failed; output abandoned"));
        }
        Ok(())
    }
}

impl<W: Write> Write for Fuse<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.inner.flush()
    }
}

/// An I/O error with the causes it wraps (the tar crate hides the cause behind its context).
pub(super) fn describe(e: &io::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
