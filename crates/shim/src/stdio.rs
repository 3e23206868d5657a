//! A process's stdio: pipes between the process and the shim, copied to and from the FIFOs (or
//! `file://` logs) containerd names in Create/Exec; or, with `terminal`, a pty whose master the
//! runtime hands over on a console socket.
//!
//! Output FIFOs are opened `O_RDWR`: the open never blocks waiting for the client, and a client
//! that goes away never makes our writes fail. The stdin FIFO is opened `O_RDONLY|O_NONBLOCK`
//! (which does not wait for a writer either): the kernel reports a hang-up only once a writer has
//! come and gone, so the process's stdin is closed when the client closes its end — as `ctr`
//! expects when its own stdin ends before the task exists — or earlier, on `CloseIO`, after
//! whatever the client already wrote is drained. Output copies end when the process side closes;
//! the process's exit is published only after they have written everything out (bounded by a
//! grace period).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::crilog::{CriLog, CriStream};
use crate::runc::ChildStdio;
use crate::sys;

/// Copy buffer size per stream.
const BUF: usize = 8 << 10;

/// What containerd asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StdioPaths {
    pub(crate) stdin: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) terminal: bool,
}

/// A stdio destination or source we could not use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StdioError {
    #[error("opening {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("unsupported stdio URI {0:?} (FIFO paths, file:// and cri-log:// are supported)")]
    Unsupported(String),
    #[error("creating stdio pipes: {0}")]
    Pipe(io::Error),
    #[error("console socket: {0}")]
    Console(io::Error),
}

/// A descriptor driven by tokio's reactor, readable and writable through shared references.
#[derive(Debug, Clone)]
pub(crate) struct FdStream(Arc<AsyncFd<OwnedFd>>);

impl FdStream {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<FdStream> {
        sys::set_nonblocking(&fd)?;
        Ok(FdStream(Arc::new(sys::async_fd(fd)?)))
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        self.0.get_ref()
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let r = guard.try_io(|fd| {
                // SAFETY: reads at most unfilled.len() bytes into the live, initialised slice.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let r = guard.try_io(|fd| {
                // SAFETY: writes at most data.len() bytes from the live slice.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(res) => return Poll::Ready(res),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Opens a FIFO non-blocking, so the open never waits for the client: read-write for output (the
/// client going away never makes our writes fail), read-only for stdin (its end is our EOF).
fn open_fifo(uri: &str, output: bool) -> Result<FdStream, StdioError> {
    let path = uri.strip_prefix("fifo://").unwrap_or(uri);
    if path.contains("://") {
        return Err(StdioError::Unsupported(uri.to_string()));
    }
    let err = |source| StdioError::Open {
        path: path.to_string(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(output)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    if !f.metadata().map_err(err)?.file_type().is_fifo() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a FIFO",
        )));
    }
    FdStream::new(OwnedFd::from(f)).map_err(err)
}

/// Where output goes.
enum Sink {
    Fifo(FdStream),
    File(std::fs::File),
    Cri(CriStream),
}

impl Sink {
    /// Opens `uri` for `stream`; a CRI log is opened once and shared by both streams.
    fn open_for(
        uri: &str,
        stream: &'static str,
        log: &mut Option<Arc<CriLog>>,
    ) -> Result<Sink, StdioError> {
        if let Some((path, max)) = CriLog::parse(uri) {
            let l = match log {
                Some(l) => l.clone(),
                None => {
                    let l = CriLog::open(path.clone(), max).map_err(|source| StdioError::Open {
                        path: path.to_string_lossy().into_owned(),
                        source,
                    })?;
                    *log = Some(l.clone());
                    l
                }
            };
            return Ok(Sink::Cri(CriStream::new(l, stream)));
        }
        Sink::open(uri)
    }

    fn open(uri: &str) -> Result<Sink, StdioError> {
        if let Some(path) = uri.strip_prefix("file://") {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| StdioError::Open {
                    path: path.to_string(),
                    source,
                })?;
            return Ok(Sink::File(f));
        }
        open_fifo(uri, true).map(Sink::Fifo)
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Fifo(s) => s.write_all(data).await,
            // A regular file never blocks for long; writing it inline keeps the shim threadless.
            Sink::File(f) => std::io::Write::write_all(f, data),
            Sink::Cri(c) => c.write(data),
        }
    }

    /// At the end of the output: a CRI log's unfinished line is written as partial.
    fn finish(&mut self) {
        if let Sink::Cri(c) = self
            && let Err(e) = c.finish()
        {
            tracing::warn!(error = %e, "writing the container log");
        }
    }
}

/// One `splice(2)` from pipe `src` to pipe `dst`, without blocking.
fn splice_once(src: &OwnedFd, dst: &OwnedFd) -> io::Result<usize> {
    // SAFETY: splice between two descriptors we hold, with null offsets (both are pipes).
    let n = unsafe {
        libc::splice(
            src.as_raw_fd(),
            std::ptr::null_mut(),
            dst.as_raw_fd(),
            std::ptr::null_mut(),
            1 << 16,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Whether `fd` has any of `events` (or a hang-up/error) right now.
fn ready_now(fd: &OwnedFd, events: libc::c_short) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: poll on one live pollfd with a zero timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents != 0
}

/// Moves bytes from pipe `src` to pipe `dst` inside the kernel (no buffer of ours, nothing held
/// in user space if cancelled) until `src` reaches EOF — or, with `drain`, until it is empty.
async fn splice_pipe(src: &FdStream, dst: &FdStream, drain: bool) -> io::Result<()> {
    loop {
        let mut rg = if drain {
            None
        } else {
            Some(src.0.readable().await?)
        };
        let mut wg = dst.0.writable().await?;
        match splice_once(src.fd(), dst.fd()) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // splice does not say which side would block: ask each.
                let src_ready = ready_now(src.fd(), libc::POLLIN);
                let dst_ready = ready_now(dst.fd(), libc::POLLOUT);
                if !src_ready {
                    match rg.as_mut() {
                        Some(g) => g.clear_ready(),
                        None => return Ok(()),
                    }
                }
                if !dst_ready {
                    wg.clear_ready();
                }
                if src_ready && dst_ready {
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copies process output to its sink until EOF (EIO from a pty master whose slave is gone counts
/// as EOF): spliced when both ends are pipes, through a buffer otherwise.
async fn copy_out(src: FdStream, src_is_pipe: bool, dst: Sink) {
    let mut dst = match (src_is_pipe, dst) {
        (true, Sink::Fifo(fifo)) => {
            if let Err(e) = splice_pipe(&src, &fifo, false).await {
                tracing::warn!(error = %e, "copying process output");
            }
            return;
        }
        (_, other) => other,
    };
    let mut src = src;
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(0) => {
                dst.finish();
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.raw_os_error() != Some(libc::EIO) {
                    tracing::warn!(error = %e, "reading process output");
                }
                dst.finish();
                return;
            }
        };
        if let Err(e) = dst.write_all(&buf[..n]).await {
            tracing::warn!(error = %e, "writing process output");
            return;
        }
    }
}

/// Copies the stdin FIFO into the process until told to close; then drains what is already in
/// the FIFO and returns, dropping (closing) the process side. Spliced into a pipe; through a
/// buffer into a pty.
async fn copy_in(
    src: FdStream,
    mut dst: FdStream,
    dst_is_pipe: bool,
    mut close: oneshot::Receiver<()>,
) {
    if dst_is_pipe {
        tokio::select! {
            // Ends when the process closes its stdin or exits (EPIPE).
            _ = splice_pipe(&src, &dst, false) => {}
            _ = &mut close => {
                let _ = splice_pipe(&src, &dst, true).await;
            }
        }
        return;
    }
    let mut src = src;
    let mut buf = vec![0u8; BUF];
    loop {
        tokio::select! {
            r = src.read(&mut buf) => {
                let n = match r {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading stdin");
                        return;
                    }
                };
                if dst.write_all(&buf[..n]).await.is_err() {
                    // The process closed its terminal or exited.
                    return;
                }
            }
            _ = &mut close => {
                // The cached readiness may not have seen the client's last write yet: read the
                // (non-blocking) descriptor directly.
                loop {
                    // SAFETY: reads at most buf.len() bytes into the live buffer.
                    let n = unsafe { libc::read(src.fd().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if n <= 0 {
                        return;
                    }
                    if dst.write_all(&buf[..n as usize]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn open_stdin(path: &str) -> Result<FdStream, StdioError> {
    open_fifo(path, false)
}

/// The shim's side of a process's stdio.
#[derive(Debug, Default)]
pub(crate) struct ProcessIo {
    /// The CRI log both streams write, for ReopenContainerLog.
    cri_log: Option<Arc<CriLog>>,
    stdin_close: Option<oneshot::Sender<()>>,
    copies: Vec<JoinHandle<()>>,
    console: Option<FdStream>,
}

/// Stdio being prepared: the process's descriptors for the runtime, and ours.
#[derive(Debug)]
pub(crate) struct PreparedIo {
    /// Handed to the runtime command (empty with a terminal).
    pub(crate) child: ChildStdio,
    /// The console socket, with a terminal.
    pub(crate) console: Option<ConsoleSocket>,
    paths: StdioPaths,
    stdin: Option<FdStream>,
    /// Our end of the process's stdin pipe (without a terminal).
    stdin_pipe: Option<OwnedFd>,
    outputs: Vec<(OwnedFd, Sink)>,
    cri_log: Option<Arc<CriLog>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Fifo(_) => "Fifo",
            Sink::File(_) => "File",
            Sink::Cri(_) => "CriLog",
        })
    }
}

impl PreparedIo {
    /// Opens the FIFOs and creates pipes (or a console socket). `uid`/`gid` own the process's
    /// pipe ends (containerd's `io_uid`/`io_gid`).
    pub(crate) fn new(paths: &StdioPaths, uid: u32, gid: u32) -> Result<PreparedIo, StdioError> {
        let mut p = PreparedIo {
            child: ChildStdio::default(),
            console: None,
            paths: paths.clone(),
            stdin: None,
            stdin_pipe: None,
            outputs: Vec::new(),
            cri_log: None,
        };
        if paths.terminal {
            p.console = Some(ConsoleSocket::new().map_err(StdioError::Console)?);
            if !paths.stdin.is_empty() {
                p.stdin = Some(open_stdin(&paths.stdin)?);
            }
            return Ok(p);
        }
        if !paths.stdin.is_empty() {
            let src = open_stdin(&paths.stdin)?;
            let (r, w) = sys::pipe().map_err(StdioError::Pipe)?;
            chown(&r, uid, gid);
            p.child.stdin = Some(r);
            p.stdin = Some(src);
            p.stdin_pipe = Some(w);
        }
        for (path, slot) in [(&paths.stdout, 1), (&paths.stderr, 2)] {
            if path.is_empty() {
                continue;
            }
            let stream = if slot == 1 { "stdout" } else { "stderr" };
            let sink = Sink::open_for(path, stream, &mut p.cri_log)?;
            let (r, w) = sys::pipe().map_err(StdioError::Pipe)?;
            chown(&w, uid, gid);
            if slot == 1 {
                p.child.stdout = Some(w);
            } else {
                p.child.stderr = Some(w);
            }
            p.outputs.push((r, sink));
        }
        Ok(p)
    }

    /// Starts copying, once the runtime created the process (`master`: the pty, with a terminal).
    pub(crate) fn start(mut self, master: Option<OwnedFd>) -> Result<ProcessIo, StdioError> {
        let mut io = ProcessIo::default();
        if let Some(master) = master {
            let m = FdStream::new(master).map_err(StdioError::Console)?;
            if let Some(src) = self.stdin {
                let (tx, rx) = oneshot::channel();
                io.stdin_close = Some(tx);
                tokio::spawn(copy_in(src, m.clone(), false, rx));
            }
            if !self.paths.stdout.is_empty() {
                let sink = Sink::open_for(&self.paths.stdout, "stdout", &mut self.cri_log)?;
                io.copies
                    .push(tokio::spawn(copy_out(m.clone(), false, sink)));
            }
            io.console = Some(m);
            io.cri_log = self.cri_log;
            return Ok(io);
        }
        if let (Some(src), Some(w)) = (self.stdin, self.stdin_pipe) {
            let dst = FdStream::new(w).map_err(StdioError::Pipe)?;
            let (tx, rx) = oneshot::channel();
            io.stdin_close = Some(tx);
            tokio::spawn(copy_in(src, dst, true, rx));
        }
        for (r, sink) in self.outputs {
            let src = FdStream::new(r).map_err(StdioError::Pipe)?;
            io.copies.push(tokio::spawn(copy_out(src, true, sink)));
        }
        io.cri_log = self.cri_log;
        Ok(io)
    }
}

fn chown(fd: &OwnedFd, uid: u32, gid: u32) {
    if (uid != 0 || gid != 0)
        && let Err(e) = sys::fchown(fd, uid, gid)
    {
        tracing::warn!(error = %e, uid, gid, "chown of a stdio pipe");
    }
}

impl ProcessIo {
    /// CloseIO: drain what the client wrote to stdin, then close the process's stdin.
    pub(crate) fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(());
        }
    }

    /// Opens the CRI log file again (no-op without one).
    pub(crate) fn reopen_log(&self) -> io::Result<()> {
        match &self.cri_log {
            Some(l) => l.reopen(),
            None => Ok(()),
        }
    }

    /// Resizes the pty (no-op without a terminal).
    pub(crate) fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        match &self.console {
            Some(c) => sys::set_winsize(
                c.fd(),
                u16::try_from(width).unwrap_or(u16::MAX),
                u16::try_from(height).unwrap_or(u16::MAX),
            ),
            None => Ok(()),
        }
    }

    /// The output copies, to await after the process exited.
    pub(crate) fn take_copies(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.copies)
    }

    /// Puts back copies still running (for Delete to wait on).
    pub(crate) fn keep_copies(&mut self, copies: Vec<JoinHandle<()>>) {
        self.copies.extend(copies);
    }

    /// Drops the pty (after exit).
    pub(crate) fn close_console(&mut self) {
        self.console = None;
    }
}

/// Waits for output copies to finish, at most `grace` (a grandchild holding the pipe open must
/// not hold the exit back forever). Returns the copies still running.
pub(crate) async fn drain(mut copies: Vec<JoinHandle<()>>, grace: Duration) -> Vec<JoinHandle<()>> {
    let deadline = tokio::time::Instant::now() + grace;
    while let Some(c) = copies.last_mut() {
        if tokio::time::timeout_at(deadline, c).await.is_err() {
            return copies;
        }
        copies.pop();
    }
    copies
}

/// A unix socket the runtime connects to (`--console-socket`) to hand over the pty master.
#[derive(Debug)]
pub(crate) struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: tokio::net::UnixListener,
}

impl ConsoleSocket {
    fn new() -> io::Result<ConsoleSocket> {
        let mut template = std::env::temp_dir()
            .join("berth-pty-XXXXXX")
            .into_os_string()
            .into_encoded_bytes();
        template.push(0);
        // SAFETY: template is a writable NUL-terminated buffer ending in XXXXXX, as mkdtemp needs.
        let p = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(io::Error::last_os_error());
        }
        template.pop();
        // SAFETY: the bytes came from an OsString plus the ASCII mkdtemp substituted.
        let dir =
            PathBuf::from(unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(template) });
        let path = dir.join("pty.sock");
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(ConsoleSocket {
            dir,
            path,
            listener,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the master the runtime sends.
    pub(crate) async fn receive(&self) -> io::Result<OwnedFd> {
        let (conn, _) = self.listener.accept().await?;
        loop {
            conn.readable().await?;
            match sys::recv_fd(&conn) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::unix::pipe;

    #[tokio::test(flavor = "current_thread")]
    async fn pipes_copy_to_fifos_and_close_stdin_drains() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |n: &str| {
            let p = dir.path().join(n);
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: c is a valid path string.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            p.to_str().unwrap().to_string()
        };
        let paths = StdioPaths {
            stdin: mk("in"),
            stdout: mk("out"),
            stderr: String::new(),
            terminal: false,
        };
        // The client side: a reader on stdout and a writer on stdin.
        let mut out_reader = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&paths.stdout)
            .unwrap();
        let mut in_writer = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&paths.stdin)
            .unwrap();
        let mut prepared = PreparedIo::new(&paths, 0, 0).unwrap();
        let child_in = prepared.child.stdin.take().unwrap();
        let child_out = prepared.child.stdout.take().unwrap();
        assert!(prepared.child.stderr.is_none());
        let mut io = prepared.start(None).unwrap();

        // "The process": echo its stdin to its stdout.
        in_writer.write_all(b"hello\n").await.unwrap();
        io.close_stdin();
        let mut child_in = pipe::Receiver::from_owned_fd(child_in).unwrap();
        let mut got = Vec::new();
        child_in.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello\n");
        let mut child_out = pipe::Sender::from_owned_fd(child_out).unwrap();
        child_out.write_all(b"world\n").await.unwrap();
        drop(child_out);
        drain(io.take_copies(), Duration::from_secs(5)).await;
        let mut buf = [0u8; 6];
        out_reader.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stdin_ends_when_the_client_closes_its_end_and_not_before_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let paths = StdioPaths {
            stdin: p.to_str().unwrap().to_string(),
            ..StdioPaths::default()
        };
        let mut prepared = PreparedIo::new(&paths, 0, 0).unwrap();
        let child_in = prepared.child.stdin.take().unwrap();
        let _io = prepared.start(None).unwrap();
        let mut child_in = pipe::Receiver::from_owned_fd(child_in).unwrap();
        // No writer yet: the process's stdin stays open.
        let mut got = Vec::new();
        let early =
            tokio::time::timeout(Duration::from_millis(200), child_in.read_to_end(&mut got)).await;
        assert!(early.is_err(), "stdin ended before the client opened it");
        // The client opens its end (write-only, as ctr does), writes, and closes it.
        let mut w = pipe::OpenOptions::new().open_sender(&p).unwrap();
        w.write_all(b"abc\n").await.unwrap();
        drop(w);
        tokio::time::timeout(Duration::from_secs(5), child_in.read_to_end(&mut got))
            .await
            .expect("stdin ends after the client closed it")
            .unwrap();
        assert_eq!(got, b"abc\n");
    }

    #[test]
    fn unsupported_uri() {
        assert!(matches!(
            Sink::open("binary:///usr/bin/logger"),
            Err(StdioError::Unsupported(_))
        ));
    }
}
