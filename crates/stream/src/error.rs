//! The streaming server's errors.

use std::net::SocketAddr;

/// Why a streaming request was refused or the server could not start. The CRI maps the request
/// errors to gRPC codes: [`StreamError::TooManyRequests`] is `ResourceExhausted`, [`StreamError::Bind`]
/// is `Internal`, everything else `InvalidArgument` (the kubelet's codes).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("missing required {0}")]
    MissingField(&'static str),
    #[error("one of stdin, stdout, or stderr must be set")]
    NoStreams,
    #[error("tty and stderr cannot both be true")]
    TtyWithStderr,
    #[error("invalid port {0}")]
    InvalidPort(i32),
    #[error("maximum number of in-flight requests exceeded")]
    TooManyRequests,
    #[error("bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
