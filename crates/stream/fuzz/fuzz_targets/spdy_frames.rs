//! Fuzzes the SPDY/3.1 frame decoder (header blocks through zlib included): any byte stream,
//! split at any point, must decode or be refused without panicking or passing the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_stream::fuzzing::spdy_frames(data);
});
