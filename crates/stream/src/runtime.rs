//! The seam to the container runtime: what the CRI implements so the streaming server can reach
//! a container's processes and a pod's network.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// The runtime's errors, whatever they are; their text reaches the client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A connected byte stream (a TCP connection inside a pod's network namespace).
pub trait Upstream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Upstream for T {}

/// A terminal size, as the resize stream carries it (`{"Width":80,"Height":24}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's side of a process's stdio, as the request asked for it.
///
/// `stdin` ends (reads 0) when the client closes its stdin. `stdout` and `stderr` are written
/// until dropped: the exit status is sent to the client only after the exec/attach future has
/// finished and both writers are dropped, so output written before the process's exit is
/// delivered before its status. With `tty`, there is no `stderr` (the kubelet refuses tty with
/// stderr) and `resize` carries the client's terminal sizes (the first one as soon as the client
/// sends it); receive from it or drop it, since a full queue stalls the connection's input.
pub struct StreamIo {
    /// The client's input, if it sends any.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Where the process's stdout goes, if the client reads it.
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Where the process's stderr goes, if the client reads it.
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Whether the process has a terminal.
    pub tty: bool,
    /// The client's terminal sizes, with a terminal.
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

impl std::fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.tty)
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// What the streaming server needs from the runtime. Implemented by the CRI.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `cmd` in the container with `io` as its stdio and returns its exit code once it
    /// has exited and its output has been written. An `Err` (the process could not be run) is
    /// reported to the client as an internal error; a non-zero code as `NonZeroExitCode`.
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> BoxFuture<'_, Result<i32, BoxError>>;

    /// Connects `io` to the container's main process until it exits or the client's stdin
    /// ends (for an attach without stdin, until the process exits).
    fn attach(&self, container_id: String, io: StreamIo) -> BoxFuture<'_, Result<(), BoxError>>;

    /// Opens a TCP connection to `port` on the pod's loopback, inside its network namespace.
    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
    ) -> BoxFuture<'_, Result<Box<dyn Upstream>, BoxError>>;
}
