//! Fuzzes the ttrpc frame decoder and the envelope messages behind it: any byte stream, split
//! at any point, must decode or be rejected without panicking or allocating past the 4 MiB limit.
#![no_main]

use berth_ttrpc::{Decoded, FrameDecoder, MessageType, Request, Response};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(1).max(1) as usize;
    let mut d = FrameDecoder::new();
    for chunk in data.chunks(split) {
        d.extend(chunk);
        while let Some(item) = d.next_frame() {
            if let Decoded::Frame(h, payload) = item {
                assert_eq!(h.length as usize, payload.len());
                match h.message_type {
                    MessageType::Request => {
                        let _ = Request::decode(payload);
                    }
                    MessageType::Response => {
                        let _ = Response::decode(payload);
                    }
                    _ => {}
                }
            }
        }
    }
});
