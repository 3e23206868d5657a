//! What the fuzz targets (`crates/stream/fuzz`) run, and a stable smoke test of the same over
//! mutated valid input: anything a client sends must be decoded or refused, never panic, and
//! never yield more than the limits allow.

use std::io::{Read, Write};

use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};

use crate::remote::ResizeDecoder;
use crate::spdy::{FrameDecoder, MAX_DATA_LEN};
use crate::websocket::{Codec, MAX_MESSAGE, REMOTE_PROTOCOLS, RESIZE, query_ports};

/// The SPDY/3.1 frame decoder over `data[1..]`, fed in chunks of `data[0]` bytes, until the end or
/// the first error (which ends a real connection). Returns how many frames it decoded.
pub fn spdy_frames(data: &[u8]) -> usize {
    let Some((&split, input)) = data.split_first() else {
        return 0;
    };
    let mut d = FrameDecoder::new();
    let mut n = 0;
    for chunk in input.chunks(usize::from(split.max(1))) {
        d.extend(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(crate::spdy::Frame::Data { data, .. })) => {
                    assert!(data.len() <= MAX_DATA_LEN);
                    n += 1;
                }
                Ok(Some(_)) => n += 1,
                Ok(None) => break,
                Err(_) => return n,
            }
        }
    }
    n
}

/// `data[1..]` as the bytes a client writes after the WebSocket upgrade, read by the server's
/// side of the protocol with its limits, each message decoded as the subprotocol `data[0]`
/// picks frames channels (resize messages through the resize decoder), until the first error.
/// Returns how many channel messages it decoded.
pub fn websocket_messages(data: &[u8]) -> usize {
    let Some((&pick, input)) = data.split_first() else {
        return 0;
    };
    let protocol = REMOTE_PROTOCOLS[usize::from(pick) % REMOTE_PROTOCOLS.len()];
    let codec = Codec::of(protocol);
    let io = Io { input };
    let mut ws = WebSocket::from_raw_socket(io, Role::Server, Some(crate::websocket::ws_config()));
    let mut resize = ResizeDecoder::default();
    let mut n = 0;
    while let Ok(msg) = ws.read() {
        if let Some((ch, payload)) = codec.decode(msg) {
            assert!(payload.len() <= MAX_MESSAGE);
            n += 1;
            if ch == RESIZE {
                let _ = resize.push(&payload);
            }
        }
    }
    let _ = query_ports(Some(&String::from_utf8_lossy(input)));
    n
}

/// A connection whose input is a fixed buffer and whose output goes nowhere.
struct Io<'a> {
    input: &'a [u8],
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::{Frame, FrameEncoder, Headers};

    /// xorshift64*: deterministic, so a failure is reproducible from the iteration number.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Flips, overwrites, inserts and truncates bytes of `seed`.
    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=rng.below(8) {
            match rng.below(4) {
                0 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                1 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(v.len() + 1);
                    v.insert(i, rng.next() as u8);
                }
                _ => v.truncate(rng.below(v.len() + 1)),
            }
        }
        v
    }

    fn spdy_seed() -> Vec<u8> {
        let mut enc = FrameEncoder::new();
        let mut out = vec![7];
        let frames = [
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: Headers::new()
                    .with("streamType", "data")
                    .with("port", "8080")
                    .with("requestID", "0"),
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: bytes::Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n"),
            },
            Frame::RstStream {
                stream_id: 1,
                status: 5,
            },
            Frame::Ping { id: 1 },
        ];
        for f in &frames {
            enc.encode(f, &mut out).unwrap();
        }
        out
    }

    /// Masked client frames: a binary stdin message, a resize, a close of stdin, a ping.
    fn websocket_seed() -> Vec<u8> {
        let mut out = vec![0];
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = |opcode: u8, payload: &[u8]| {
            out.push(0x80 | opcode);
            out.push(0x80 | payload.len() as u8);
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        };
        frame(2, b"\x00hello");
        frame(2, b"\x04{\"Width\":80,\"Height\":24}");
        frame(2, &[255, 0]);
        frame(9, b"p");
        out
    }

    #[test]
    fn seeds_decode() {
        assert_eq!(spdy_frames(&spdy_seed()), 4);
        assert_eq!(websocket_messages(&websocket_seed()), 3);
    }

    #[test]
    fn mutated_input_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (spdy, ws) = (spdy_seed(), websocket_seed());
        for _ in 0..20_000 {
            spdy_frames(&mutate(&mut rng, &spdy));
            websocket_messages(&mutate(&mut rng, &ws));
        }
    }
}
