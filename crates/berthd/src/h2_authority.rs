//! Connections to the API socket pass through a small HTTP/2 relay that rewrites the
//! `:authority` of client requests. Go gRPC clients of the Kubernetes 1.26 era (crictl,
//! critest, kubelets) send the socket's path (`/run/berth/berthd.sock`) as `:authority`, which
//! is not an authority; the h2 server under tonic resets such streams with PROTOCOL_ERROR, while
//! containerd's Go server takes them. The relay replaces every literal `:authority` value in
//! the client's header blocks with `localhost` (or `l` when the original may be shorter, so that
//! the server's HPACK table entries are never larger than the client's: the server's dynamic
//! table then always holds every entry the client can still refer to, at the same index).
//! Everything else passes byte for byte; the server's answers are copied back untouched.

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames the relay writes stay under the protocol's default frame size.
const MAX_OUT_FRAME: usize = 16 << 10;
/// A header block larger than this is refused (the server's limit is far lower).
const MAX_BLOCK: usize = 1 << 20;

/// Wraps a client connection: the returned stream is what the gRPC server reads.
pub(crate) fn wrap(client: UnixStream) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 << 10);
    tokio::spawn(async move {
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = tokio::io::split(ours);
        let up = async {
            let r = relay_requests(&mut cr, &mut sw).await;
            let _ = sw.shutdown().await;
            r
        };
        let down = async {
            let r = tokio::io::copy(&mut sr, &mut cw).await;
            let _ = cw.shutdown().await;
            r
        };
        let _ = tokio::join!(up, down);
    });
    theirs
}

async fn relay_requests<R, W>(r: &mut R, w: &mut W) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    r.read_exact(&mut preface).await?;
    w.write_all(&preface).await?;
    if preface != PREFACE {
        // Not HTTP/2 with prior knowledge: let the server answer it.
        tokio::io::copy(r, w).await?;
        return Ok(());
    }
    // A header block being collected: (stream id, flags and priority of its HEADERS, block).
    let mut pending: Option<(u32, u8, Vec<u8>, Vec<u8>)> = None;
    loop {
        let mut head = [0u8; 9];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (ty, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if ty != HEADERS && ty != CONTINUATION {
            w.write_all(&head).await?;
            let n = tokio::io::copy(&mut (&mut *r).take(len as u64), w).await?;
            if n != len as u64 {
                return Ok(());
            }
            continue;
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        let (prio, fragment) = if ty == HEADERS {
            match split_headers_payload(flags, &payload) {
                Some(x) => x,
                None => return Err(std::io::Error::other("malformed HEADERS frame")),
            }
        } else {
            (Vec::new(), payload)
        };
        match (&mut pending, ty) {
            (None, HEADERS) => pending = Some((stream, flags, prio, fragment)),
            (Some((s, _, _, block)), CONTINUATION) if *s == stream => {
                block.extend_from_slice(&fragment)
            }
            _ => return Err(std::io::Error::other("HTTP/2 header block out of order")),
        }
        if pending.as_ref().is_some_and(|p| p.3.len() > MAX_BLOCK) {
            return Err(std::io::Error::other("HTTP/2 header block too large"));
        }
        if flags & END_HEADERS == 0 {
            continue;
        }
        let (stream, hflags, prio, block) = pending.take().expect("set above");
        let block = rewrite_authority(&block).unwrap_or(block);
        write_headers(w, stream, hflags, &prio, &block).await?;
    }
}

/// The priority fields and the header block fragment of a HEADERS payload (padding dropped).
fn split_headers_payload(flags: u8, p: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut start = 0;
    let mut end = p.len();
    if flags & PADDED != 0 {
        let pad = usize::from(*p.first()?);
        start = 1;
        end = end.checked_sub(pad)?;
    }
    let mut prio = Vec::new();
    if flags & PRIORITY != 0 {
        prio = p.get(start..start + 5)?.to_vec();
        start += 5;
    }
    Some((prio, p.get(start..end)?.to_vec()))
}

async fn write_headers<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    stream: u32,
    flags: u8,
    prio: &[u8],
    block: &[u8],
) -> std::io::Result<()> {
    let frame = |ty: u8, flags: u8, body: &[&[u8]]| {
        let len: usize = body.iter().map(|b| b.len()).sum();
        let mut out = Vec::with_capacity(9 + len);
        out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        for b in body {
            out.extend_from_slice(b);
        }
        out
    };
    let mut chunks = block.chunks(MAX_OUT_FRAME - prio.len()).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let last = chunks.peek().is_none();
    let mut f = flags & !(PADDED | END_HEADERS);
    if last {
        f |= END_HEADERS;
    }
    w.write_all(&frame(HEADERS, f, &[prio, first])).await?;
    while let Some(c) = chunks.next() {
        let f = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        w.write_all(&frame(CONTINUATION, f, &[c])).await?;
    }
    Ok(())
}

/// An HPACK integer with an `n`-bit prefix at `b[*i]`; advances `i`.
fn integer(b: &[u8], i: &mut usize, n: u32) -> Option<u64> {
    let mask = (1u16 << n) as u8 - 1;
    let mut v = u64::from(*b.get(*i)? & mask);
    *i += 1;
    if v < u64::from(mask) {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let c = *b.get(*i)?;
        *i += 1;
        v = v.checked_add(u64::from(c & 0x7f).checked_shl(shift)?)?;
        if c & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

/// A string literal at `b[*i]`: (Huffman-coded, its bytes); advances `i`.
fn string<'a>(b: &'a [u8], i: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = *b.get(*i)? & 0x80 != 0;
    let len = usize::try_from(integer(b, i, 7)?).ok()?;
    let s = b.get(*i..i.checked_add(len)?)?;
    *i += len;
    Some((huffman, s))
}

/// The header block with every literal `:authority` value replaced; `None` if it does not
/// parse (then it goes on unchanged, and the server decides).
pub(crate) fn rewrite_authority(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let first = b[i];
        let prefix = if first & 0x80 != 0 {
            integer(b, &mut i, 7)?;
            out.extend_from_slice(&b[start..i]);
            continue;
        } else if first & 0xC0 == 0x40 {
            6
        } else if first & 0xE0 == 0x20 {
            integer(b, &mut i, 5)?;
            out.extend_from_slice(&b[start..i]);
            continue;
        } else {
            4
        };
        // A literal: name by index (1 is the static `:authority`) or by string, then the value.
        let index = integer(b, &mut i, prefix)?;
        let authority = if index == 0 {
            let (h, name) = string(b, &mut i)?;
            !h && name == b":authority"
        } else {
            index == 1
        };
        let name_end = i;
        let (huffman, value) = string(b, &mut i)?;
        if !authority {
            out.extend_from_slice(&b[start..i]);
            continue;
        }
        // The shortest the decoded value can be: raw bytes, or at most 30 bits a symbol.
        let min_len = if huffman {
            (value.len() * 8).div_ceil(30)
        } else {
            value.len()
        };
        let new: &[u8] = if min_len >= 9 { b"localhost" } else { b"l" };
        out.extend_from_slice(&b[start..name_end]);
        out.push(new.len() as u8);
        out.extend_from_slice(new);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(index_prefix: u8, name_index: u8, value: &[u8]) -> Vec<u8> {
        let mut v = vec![index_prefix | name_index, value.len() as u8];
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn indexed_name_authority_is_replaced() {
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http (indexed)
        block.extend(lit(0x40, 1, b"/run/berth/berthd.sock"));
        block.extend(lit(0x40, 4, b"/runtime.v1.RuntimeService/Version")); // :path
        let out = rewrite_authority(&block).unwrap();
        let mut want = vec![0x82, 0x86];
        want.extend(lit(0x40, 1, b"localhost"));
        want.extend(lit(0x40, 4, b"/runtime.v1.RuntimeService/Version"));
        assert_eq!(out, want);
    }

    #[test]
    fn short_and_literal_names_and_other_forms() {
        // Literal name ":authority", without indexing, value shorter than "localhost".
        let mut block = vec![0x00, 10];
        block.extend_from_slice(b":authority");
        block.extend_from_slice(&[5]);
        block.extend_from_slice(b"/a.so");
        // A dynamic table size update and an indexed dynamic entry pass as they are.
        block.extend_from_slice(&[0x3f, 0xe1, 0x1f, 0xbe]);
        // Huffman-coded value of 4 bytes: may decode to as little as 2 symbols.
        block.extend_from_slice(&[0x41, 0x84, 1, 2, 3, 4]);
        let out = rewrite_authority(&block).unwrap();
        let mut want = vec![0x00, 10];
        want.extend_from_slice(b":authority");
        want.extend_from_slice(&[1, b'l']);
        want.extend_from_slice(&[0x3f, 0xe1, 0x1f, 0xbe]);
        want.extend_from_slice(&[0x41, 1, b'l']);
        assert_eq!(out, want);
    }

    #[test]
    fn malformed_blocks_are_left_alone() {
        assert!(rewrite_authority(&[0x41, 0x7f]).is_none());
        assert!(rewrite_authority(&[0x41, 5, b'a']).is_none());
        assert!(
            rewrite_authority(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .is_none()
        );
        assert_eq!(rewrite_authority(&[]).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn headers_payload_padding_and_priority() {
        let p = [2, 1, 2, 3, 4, 5, 0xaa, 0xbb, 0, 0];
        let (prio, frag) = split_headers_payload(PADDED | PRIORITY, &p).unwrap();
        assert_eq!(prio, vec![1, 2, 3, 4, 5]);
        assert_eq!(frag, vec![0xaa, 0xbb]);
        assert!(split_headers_payload(PADDED, &[9, 1]).is_none());
    }

    #[tokio::test]
    async fn relay_splits_big_blocks_and_passes_data() {
        let mut input = PREFACE.to_vec();
        let mut block = lit(0x40, 1, b"/run/berth/berthd.sock");
        // A big literal header (not authority) so the block needs CONTINUATION frames.
        block.extend_from_slice(&[0x40, 3]);
        block.extend_from_slice(b"big");
        block.extend_from_slice(&[0x7f, 0x81, 0xff, 0x01]); // length 127 + 32641 = 32768
        block.extend(std::iter::repeat_n(b'x', 32768));
        // Sent as one HEADERS frame without END_HEADERS, then one CONTINUATION.
        let (a, b) = block.split_at(100);
        for (ty, fl, part) in [(HEADERS, 0u8, a), (CONTINUATION, END_HEADERS, b)] {
            let len = part.len();
            input.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                ty,
                fl,
                0,
                0,
                0,
                1,
            ]);
            input.extend_from_slice(part);
        }
        input.extend_from_slice(&[0, 0, 3, 0, 1, 0, 0, 0, 1, b'a', b'b', b'c']); // DATA
        let mut out = Vec::new();
        relay_requests(&mut &input[..], &mut out).await.unwrap();
        // Parse what came out: HEADERS + CONTINUATIONs with the rewritten block, then DATA.
        assert_eq!(&out[..24], PREFACE);
        let mut i = 24;
        let mut got = Vec::new();
        let mut types = Vec::new();
        while i < out.len() {
            let len = (usize::from(out[i]) << 16)
                | (usize::from(out[i + 1]) << 8)
                | usize::from(out[i + 2]);
            types.push((out[i + 3], out[i + 4]));
            if out[i + 3] != 0 {
                got.extend_from_slice(&out[i + 9..i + 9 + len]);
            }
            assert!(len <= MAX_OUT_FRAME);
            i += 9 + len;
        }
        assert_eq!(types.first(), Some(&(HEADERS, 0)));
        assert_eq!(types.last(), Some(&(0, 1)));
        assert_eq!(types[types.len() - 2], (CONTINUATION, END_HEADERS));
        assert_eq!(got, rewrite_authority(&block).unwrap());
        assert!(got.starts_with(&lit(0x40, 1, b"localhost")));
    }
}
