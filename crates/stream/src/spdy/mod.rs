//! SPDY/3.1, as far as the Kubernetes streaming protocols use it: the frame codec (public, for
//! clients, tests and the fuzz target) and the server side of a connection (crate-private).

pub(crate) mod conn;
mod dictionary;
mod frame;

pub use frame::{
    FLAG_CLEAR_SETTINGS, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, FrameDecoder, FrameEncoder,
    HEADER_LEN, Headers, MAX_CONTROL_LEN, MAX_DATA_LEN, MAX_HEADER_BLOCK, Setting, SpdyError,
    VERSION, goaway, rst,
};

#[cfg(test)]
mod tests;
