use bytes::Bytes;

use super::*;

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut enc = FrameEncoder::new();
    let mut out = Vec::new();
    for f in frames {
        enc.encode(f, &mut out).unwrap();
    }
    out
}

fn decode_all(bytes: &[u8], split: usize) -> Result<Vec<Frame>, SpdyError> {
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    for chunk in bytes.chunks(split) {
        dec.extend(chunk);
        while let Some(f) = dec.next_frame()? {
            frames.push(f);
        }
    }
    assert_eq!(dec.buffered(), 0, "left-over bytes");
    Ok(frames)
}

fn every_frame() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: Headers::new().with("streamType", "error"),
        },
        Frame::SynStream {
            stream_id: 3,
            associated_to: 1,
            priority: 7,
            slot: 2,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            headers: Headers::new()
                .with("streamtype", "data")
                .with("port", "8080")
                .with("requestid", "0")
                .with("multi", "a\0b"),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::new(),
        },
        Frame::RstStream {
            stream_id: 3,
            status: rst::REFUSED_STREAM,
        },
        Frame::Settings {
            clear: true,
            entries: vec![
                Setting {
                    flags: 1,
                    id: 4,
                    value: 100,
                },
                Setting {
                    flags: 0,
                    id: 7,
                    value: 65536,
                },
            ],
        },
        Frame::Ping { id: 1 },
        Frame::GoAway {
            last_good_stream_id: 3,
            status: goaway::OK,
        },
        Frame::Headers {
            stream_id: 1,
            fin: true,
            headers: Headers::new().with("x", "y"),
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 4096,
        },
        Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::new(),
        },
    ]
}

#[test]
fn every_frame_round_trips_in_any_split() {
    let frames = every_frame();
    let wire = encode_all(&frames);
    for split in [1, 2, 3, 7, 8, 9, 64, wire.len()] {
        let mut got = decode_all(&wire, split).unwrap();
        // Names are stored lower case.
        if let Frame::SynStream { headers, .. } = &mut got[0] {
            assert_eq!(headers.get("StreamType"), Some("error"));
            assert_eq!(headers.iter().next().unwrap().0, "streamtype");
        }
        assert_eq!(got.len(), frames.len());
        for (a, b) in got.iter().zip(&frames) {
            match (a, b) {
                (Frame::SynStream { headers: ha, .. }, Frame::SynStream { headers: hb, .. }) => {
                    for (n, v) in hb.iter() {
                        assert_eq!(ha.get(n), v.split('\0').next());
                    }
                }
                _ => assert_eq!(a, b),
            }
        }
    }
}

#[test]
fn fixed_layouts_match_the_specification() {
    let wire = encode_all(&[
        Frame::Ping { id: 1 },
        Frame::Data {
            stream_id: 5,
            fin: true,
            data: Bytes::from_static(b"ab"),
        },
        Frame::RstStream {
            stream_id: 7,
            status: rst::CANCEL,
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 0x10000,
        },
    ]);
    let want: &[u8] = &[
        0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 1, // PING
        0, 0, 0, 5, 0x01, 0, 0, 2, b'a', b'b', // DATA with FIN
        0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 7, 0, 0, 0, 5, // RST_STREAM
        0x80, 0x03, 0x00, 0x09, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 1, 0, 1, 0,
        0, // WINDOW_UPDATE
    ];
    assert_eq!(wire, want);
}

/// Two SYN_STREAMs whose header blocks were compressed by C zlib (level 9, the SPDY/3
/// dictionary, a sync flush after each block, one stream for both), as Go's framer writes them.
#[test]
fn decodes_header_blocks_from_another_zlib() {
    let wire: &[u8] = &[
        0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x46, 0x70, 0x3a,
        0x2b, 0x29, 0x4a, 0x4d, 0xcc, 0x85, 0x16, 0x25, 0xac, 0xa9, 0xa0, 0x80, 0x06, 0x00, 0x00,
        0x00, 0xff, 0xff, 0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x19, 0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc2, 0x2a, 0x05, 0x4c, 0xcc, 0x29, 0xf9, 0xa5, 0x25,
        0x00, 0x00, 0x00, 0x00, 0xff, 0xff,
    ];
    let frames = decode_all(wire, wire.len()).unwrap();
    let types: Vec<_> = frames
        .iter()
        .map(|f| match f {
            Frame::SynStream {
                stream_id, headers, ..
            } => (*stream_id, headers.get("streamtype").unwrap().to_owned()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(types, [(1, "error".into()), (3, "stdout".into())]);
}

#[test]
fn unknown_control_frames_are_skipped() {
    let mut wire = vec![0x80, 0x03, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x03, 1, 2, 3];
    wire.extend(encode_all(&[Frame::Ping { id: 9 }]));
    assert_eq!(decode_all(&wire, 1).unwrap(), [Frame::Ping { id: 9 }]);
}

fn decode_err(wire: &[u8]) -> SpdyError {
    let mut dec = FrameDecoder::new();
    dec.extend(wire);
    loop {
        match dec.next_frame() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error for {wire:?}"),
            Err(e) => return e,
        }
    }
}

#[test]
fn malformed_frames_are_errors() {
    // SPDY/2 control frame.
    assert_eq!(
        decode_err(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]),
        SpdyError::UnsupportedVersion(2)
    );
    // Lengths that do not fit the frame type.
    assert!(matches!(
        decode_err(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 3, 0, 0, 0]),
        SpdyError::BadLength { frame: "PING", .. }
    ));
    assert!(matches!(
        decode_err(&[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 4, 0, 0, 0, 1]),
        SpdyError::BadLength {
            frame: "RST_STREAM",
            ..
        }
    ));
    assert!(matches!(
        decode_err(&[0x80, 0x03, 0x00, 0x01, 0, 0, 0, 2, 0, 1]),
        SpdyError::BadLength {
            frame: "SYN_STREAM",
            ..
        }
    ));
    // SETTINGS claiming more entries than it carries, and fewer.
    assert!(matches!(
        decode_err(&[
            0x80, 0x03, 0x00, 0x04, 0, 0, 0, 12, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 4, 0, 0, 0, 1
        ]),
        SpdyError::BadLength {
            frame: "SETTINGS",
            ..
        }
    ));
    assert!(matches!(
        decode_err(&[
            0x80, 0x03, 0x00, 0x04, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1
        ]),
        SpdyError::BadLength {
            frame: "SETTINGS",
            ..
        }
    ));
    // Data on stream 0.
    assert_eq!(
        decode_err(&[0, 0, 0, 0, 0, 0, 0, 1, b'x']),
        SpdyError::ZeroStreamId("DATA")
    );
    // A header block that is not zlib.
    assert!(matches!(
        decode_err(&[
            0x80, 0x03, 0x00, 0x02, 0, 0, 0, 8, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef
        ]),
        SpdyError::Zlib(_)
    ));
}

#[test]
fn oversized_frames_are_refused_from_their_header() {
    // A data frame declaring 16 MiB - 1: refused before any payload arrives.
    assert!(matches!(
        decode_err(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]),
        SpdyError::FrameTooLarge { frame: "DATA", .. }
    ));
    assert!(matches!(
        decode_err(&[0x80, 0x03, 0x00, 0x01, 0, 0x10, 0, 0]),
        SpdyError::FrameTooLarge {
            frame: "control",
            ..
        }
    ));
}

/// Builds a SYN_REPLY whose header block is `plain` compressed by this crate's own encoder.
fn reply_with_plain(plain: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::default(), true);
    c.set_dictionary(super::dictionary::dictionary()).unwrap();
    let mut block = Vec::with_capacity(plain.len() + 1024);
    c.compress_vec(plain, &mut block, flate2::FlushCompress::Sync)
        .unwrap();
    let mut wire = vec![0x80, 0x03, 0x00, 0x02, 0, 0, 0, 0];
    let len = (4 + block.len()) as u32;
    wire[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    wire.extend_from_slice(&[0, 0, 0, 1]);
    wire.extend_from_slice(&block);
    wire
}

#[test]
fn malformed_header_blocks_are_errors() {
    // Count larger than the block.
    let e = decode_err(&reply_with_plain(&[0, 0, 0, 9]));
    assert_eq!(e, SpdyError::HeaderBlock("pair count exceeds block"));
    // A name length running past the end.
    let e = decode_err(&reply_with_plain(&[
        0, 0, 0, 1, 0, 0, 0, 200, b'a', 0, 0, 0, 0,
    ]));
    assert_eq!(e, SpdyError::HeaderBlock("truncated"));
    // Empty name.
    let e = decode_err(&reply_with_plain(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(e, SpdyError::HeaderBlock("empty header name"));
    // Duplicate names.
    let mut dup = vec![0, 0, 0, 2];
    for _ in 0..2 {
        dup.extend_from_slice(&[0, 0, 0, 1, b'a', 0, 0, 0, 1, b'b']);
    }
    let e = decode_err(&reply_with_plain(&dup));
    assert_eq!(e, SpdyError::HeaderBlock("duplicate header name"));
    // Trailing bytes after the pairs.
    let e = decode_err(&reply_with_plain(&[0, 0, 0, 0, 1]));
    assert_eq!(e, SpdyError::HeaderBlock("trailing bytes"));
}

#[test]
fn decompression_is_bounded() {
    // 1 MiB of zeros compresses to about a kilobyte: the decoder stops at its limit.
    let plain = vec![0u8; 1 << 20];
    let wire = reply_with_plain(&plain);
    assert!(wire.len() < MAX_CONTROL_LEN);
    assert_eq!(decode_err(&wire), SpdyError::HeaderBlockTooLarge);
}

#[test]
fn encoder_refuses_oversized_data() {
    let mut enc = FrameEncoder::new();
    let f = Frame::Data {
        stream_id: 1,
        fin: false,
        data: Bytes::from(vec![0; 1 << 24]),
    };
    assert!(enc.encode(&f, &mut Vec::new()).is_err());
}
