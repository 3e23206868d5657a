//! Fuzzes the server's side of a WebSocket streaming session: a client's bytes after the
//! upgrade through the frame reader (with the server's message limits) and the channel
//! decoding of each subprotocol, resize messages included.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_stream::fuzzing::websocket_messages(data);
});
