//! The streaming server's errors.

use std::net::SocketAddr;

/// Why a streaming request was refused or the server could not start. The CRI maps the request
/// errors to gRPC codes: [`StreamError::TooManyRequests`] is `ResourceExhausted`, [`StreamError::Bind`]
/// is `Internal`, everything else `InvalidArgument` (the kubelet's codes).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A required field of the request is empty.
    #[error("missing required {0}")]
    MissingField(&'static str),
    /// The request asks for none of stdin, stdout and stderr.
    #[error("one of stdin, stdout, or stderr must be set")]
    NoStreams,
    /// A terminal has no separate stderr.
    #[error("tty and stderr cannot both be true")]
    TtyWithStderr,
    /// A port outside 1-65535.
    #[error("invalid port {0}")]
    InvalidPort(i32),
    /// As many sessions as the server allows are open.
    #[error("maximum number of in-flight requests exceeded")]
    TooManyRequests,
    /// The server could not listen.
    #[error("bind {addr}")]
    Bind {
        /// Where it tried to listen.
        addr: SocketAddr,
        /// Why it could not.
        #[source]
        source: std::io::Error,
    },
}
