//! The Kubernetes CRI streaming server: what the URLs returned by the CRI's `Exec`, `Attach`
//! and `PortForward` RPCs point at (the counterpart of the kubelet's
//! `pkg/kubelet/cri/streaming`, which containerd's CRI plugin embeds).
//!
//! The CRI calls [`Server::get_exec`], [`Server::get_attach`] or [`Server::get_port_forward`]:
//! the request is validated and stored under a one-time token that expires after a minute, and
//! the URL `http://ADDR/{exec,attach,portforward}/TOKEN` goes back to the client (crictl, the
//! kubelet). The client then upgrades a request to that URL to SPDY/3.1 (`X-Stream-Protocol-
//! Version` negotiation: `v5`/`v4`/`v3`/`v2.channel.k8s.io`, `channel.k8s.io`,
//! `portforward.k8s.io`) or to WebSocket (`Sec-WebSocket-Protocol`: `v5`/`v4.channel.k8s.io`,
//! `channel.k8s.io` and their base64 forms), and the server drives the container through the
//! [`Runtime`] trait, which the CRI implements with the shim's exec and attach and a TCP
//! connection inside the pod's network namespace.
//!
//! In the layers of `DESIGN.md` this belongs to the CRI adapter (`crates/cri`), kept as its own
//! crate because it is a protocol implementation with no knowledge of containers. The SPDY
//! frame codec is public ([`spdy`]) for clients, tests and the fuzz target.

#![warn(missing_docs)]

mod cache;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod remote;
mod request;
mod runtime;
mod server;
#[cfg(test)]
mod session_tests;
pub mod spdy;
mod spdy_portforward;
mod status;
mod websocket;

pub use error::StreamError;
pub use request::{AttachRequest, ExecRequest, PortForwardRequest};
pub use runtime::{BoxError, BoxFuture, Runtime, StreamIo, TermSize, Upstream};
pub use server::{Config, Server};
