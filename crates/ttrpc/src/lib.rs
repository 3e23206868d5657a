//! ttrpc: the small RPC protocol containerd speaks to its shims.
//!
//! Frames are a 10-byte big-endian header (`length`, `stream id`, `type`, `flags`) followed by a
//! protobuf payload of at most 4 MiB. A call opens a stream with a `Request` frame; unary calls get a
//! single `Response`, streaming calls exchange `Data` frames. This crate implements the whole protocol
//! on tokio and prost: a [`Client`] that multiplexes concurrent calls on one connection, a [`Server`]
//! that dispatches to registered [`Service`]s, metadata, deadlines, streaming in every direction and a
//! peer-credential check. Service traits and typed clients are generated from protos by `berth-api`.
//!
//! In the layers of `DESIGN.md` this sits between the daemon and each shim, and under the events
//! endpoint the shims publish to.

#![warn(missing_docs)]

mod client;
mod context;
mod frame;
mod proto;
mod server;
mod status;
mod stream;

pub use client::{CallOptions, Client, ClientStream};
pub use context::{Context, Metadata};
pub use frame::{
    Decoded, FLAG_NO_DATA, FLAG_REMOTE_CLOSED, FLAG_REMOTE_OPEN, FrameDecoder, FrameHeader,
    HEADER_LEN, MAX_DATA_LEN, MessageType,
};
pub use proto::{KeyValue, Request, Response, RpcStatus};
pub use server::{MethodKind, PeerCheck, Server, ServerHandle, Service, ServiceCall};
pub use status::{Code, Status};
pub use stream::{RecvStream, SendStream};

/// A boxed, sendable future, as returned by [`Service::call`].
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;
