//! The CRI's side of streaming (Exec, Attach, PortForward): the [`berth_stream::Runtime`] the
//! streaming server drives, on top of the daemon's task API, the CRI log and the pods'
//! network namespaces.
//!
//! - Exec: a process made with Tasks.Exec whose stdio are FIFOs in a directory of its own,
//!   pumped to and from the client with back-pressure (a slow client stalls the process's
//!   writes, not memory); the client's stdin end closes the process's stdin (CloseIO), its
//!   terminal sizes reach the pty (ResizePty), and a client that goes away kills the process
//!   and removes its FIFOs.
//! - Attach: the container's output as its shim writes it to the CRI log (followed from its
//!   end, partial lines joined, stdout and stderr apart), so what reaches the log still does;
//!   input into the container's stdin FIFO; resizes to its pty. Several clients may attach.
//! - PortForward: a TCP connection to the port on the pod's loopback, made from a thread that
//!   enters the pod's network namespace (the host's for a host-network pod).

use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_api::containerd::services::tasks::v1 as tasks;
use berth_api::runtime::v1 as cri;
use berth_stream::{BoxError, BoxFuture, Runtime, StreamIo, TermSize, Upstream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::state::Inner;

/// One chunk of a container's output: (from stderr, bytes).
type Chunk = (bool, Arc<[u8]>);

/// Output of running containers without a log path: the CRI reads their stdout and stderr
/// FIFOs and passes each chunk to the container's attachers. With none it is dropped; an
/// attacher that falls behind misses what overflows its queue rather than stalling the
/// container.
#[derive(Debug, Default)]
pub(crate) struct Outputs(
    std::sync::Mutex<std::collections::HashMap<String, broadcast::Sender<Chunk>>>,
);

impl Outputs {
    /// Starts reading container `id`'s output FIFOs (stdout, and stderr without a terminal)
    /// until its exit is recorded.
    pub(crate) fn follow(&self, inner: &Inner, id: &str, tty: bool, fifos: (PathBuf, PathBuf)) {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_insert_with(|| broadcast::channel(256).0)
            .clone();
        let (out, err) = fifos;
        for (path, from_stderr) in [(out, false), (err, true)] {
            if from_stderr && tty {
                continue;
            }
            let exits = inner.exits.subscribe();
            tokio::spawn(read_output(
                path,
                from_stderr,
                tx.clone(),
                exits,
                id.to_string(),
            ));
        }
    }

    /// A receiver of container `id`'s output from now on, if it is read.
    fn subscribe(&self, id: &str) -> Option<broadcast::Receiver<Chunk>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).map(broadcast::Sender::subscribe)
    }

    /// Forgets a removed container.
    pub(crate) fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Reads one output FIFO of container `id` into `tx` until the container's exit is recorded,
/// then what is left. Opened read-write: the open never waits for the shim, and a restarted
/// daemon reads the same FIFO again.
async fn read_output(
    path: PathBuf,
    from_stderr: bool,
    tx: broadcast::Sender<Chunk>,
    mut exits: broadcast::Receiver<String>,
    id: String,
) {
    let rx = match tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(id = %id, path = %path.display(), error = %e, "opening an output FIFO");
            return;
        }
    };
    let mut buf = vec![0u8; 32 << 10];
    let mut drain = |rx: &tokio::net::unix::pipe::Receiver| loop {
        match rx.try_read(&mut buf) {
            Ok(0) => return false,
            // No attacher: nobody to give it to.
            Ok(n) => drop(tx.send((from_stderr, Arc::from(&buf[..n])))),
            Err(e) => return e.kind() == ErrorKind::WouldBlock,
        }
    };
    loop {
        tokio::select! {
            r = rx.readable() => {
                if r.is_err() || !drain(&rx) {
                    return;
                }
            }
            e = exits.recv() => match e {
                Ok(x) if x == id => {
                    drain(&rx);
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
                _ => {}
            },
        }
    }
}

/// Writes what `rx` gives to the attacher's stdout/stderr until `done` fires and the queue is
/// empty.
async fn forward_output(
    mut rx: broadcast::Receiver<Chunk>,
    mut stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    mut stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    mut done: watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        let chunk = tokio::select! {
            c = rx.recv() => c,
            changed = done.changed() => {
                if changed.is_err() || *done.borrow() {
                    // What the readers passed on before the end.
                    match rx.try_recv() {
                        Ok(c) => Ok(c),
                        Err(_) => return Ok(()),
                    }
                } else {
                    continue;
                }
            }
        };
        let (from_stderr, data) = match chunk {
            Ok(c) => c,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "an attacher fell behind");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        let to = if from_stderr {
            stderr.as_mut()
        } else {
            stdout.as_mut()
        };
        if let Some(w) = to {
            w.write_all(&data).await?;
            w.flush().await?;
        }
    }
}

/// The runtime behind the streaming server (a weak handle: the server lives in the CRI).
#[derive(Debug)]
pub(crate) struct StreamRuntime(pub(crate) Weak<Inner>);

impl StreamRuntime {
    fn inner(&self) -> Result<Arc<Inner>, BoxError> {
        self.0
            .upgrade()
            .ok_or_else(|| "the CRI is shutting down".into())
    }
}

fn boxed(s: Status) -> BoxError {
    s.message().to_string().into()
}

impl Runtime for StreamRuntime {
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> BoxFuture<'_, Result<i32, BoxError>> {
        Box::pin(async move {
            let inner = self.inner()?;
            exec(&inner, &container_id, cmd, io).await
        })
    }

    fn attach(&self, container_id: String, io: StreamIo) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let inner = self.inner()?;
            attach(&inner, &container_id, io).await
        })
    }

    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
    ) -> BoxFuture<'_, Result<Box<dyn Upstream>, BoxError>> {
        Box::pin(async move {
            let inner = self.inner()?;
            let sb = inner.meta.find_sandbox(&pod_sandbox_id).map_err(boxed)?;
            if !sb.st.ready {
                return Err(format!("pod sandbox {}: is not ready", sb.id).into());
            }
            let s = connect_in(sb.st.netns.clone(), port).await?;
            Ok(Box::new(s) as Box<dyn Upstream>)
        })
    }
}

/// A TCP connection to `port` on the loopback of the network namespace at `netns` (the
/// host's when empty), made on a thread of its own that enters the namespace and then ends
/// (a pooled thread would stay in it).
async fn connect_in(netns: String, port: u16) -> Result<tokio::net::TcpStream, BoxError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = (|| -> std::io::Result<std::net::TcpStream> {
            if !netns.is_empty() {
                let f = std::fs::File::open(&netns)?;
                // SAFETY: setns on a descriptor we own, for this thread only (it ends after).
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let s = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(10),
            )?;
            s.set_nonblocking(true)?;
            Ok(s)
        })();
        let _ = tx.send(r);
    });
    let s = rx
        .await
        .map_err(|_| "the connecting thread died")?
        .map_err(|e| format!("connecting to port {port} in the pod: {e}"))?;
    Ok(tokio::net::TcpStream::from_std(s)?)
}

/// Copies a FIFO to the client until `done` fires, then what is left in it. Opened
/// read-write, so the open never waits for the shim and no EOF comes early; the shim writes a
/// process's output before it reports its exit, which fires `done`.
async fn pump_out(
    path: PathBuf,
    mut to: Box<dyn AsyncWrite + Send + Unpin>,
    mut done: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let rx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)?;
    let mut buf = vec![0u8; 32 << 10];
    loop {
        // Done (the process has exited): what is left, then the end.
        let finished = *done.borrow();
        if finished {
            loop {
                match rx.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => to.write_all(&buf[..n]).await?,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            return to.flush().await;
        }
        tokio::select! {
            r = rx.readable() => {
                r?;
                loop {
                    match rx.try_read(&mut buf) {
                        Ok(0) => return to.flush().await,
                        Ok(n) => to.write_all(&buf[..n]).await?,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            changed = done.changed() => {
                if changed.is_err() {
                    // The exec went away without saying it was done.
                    return to.flush().await;
                }
            }
        }
    }
}

/// Copies the client's stdin into a FIFO until the client's end; the caller then closes the
/// process's stdin. Our end stays open until `opened` says the shim has its own: a FIFO's
/// unread bytes go when its last descriptor closes.
async fn pump_in(
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    path: PathBuf,
    mut opened: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Read-write: the open does not wait for the shim's reader.
    let mut tx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(&path)?;
    let copied = tokio::io::copy(&mut from, &mut tx).await;
    let _ = opened.wait_for(|o| *o).await;
    drop(tx);
    copied.map(drop)
}

/// Passes the client's terminal sizes to the pty of `exec_id` ("" for the container's own).
fn forward_resizes(
    inner: &Arc<Inner>,
    id: &str,
    exec_id: &str,
    resize: Option<mpsc::Receiver<TermSize>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut rx = resize?;
    let (api, id, exec_id) = (inner.api.clone(), id.to_string(), exec_id.to_string());
    Some(tokio::spawn(async move {
        while let Some(sz) = rx.recv().await {
            let r = api
                .tasks()
                .resize_pty(api.req(tasks::ResizePtyRequest {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                    width: u32::from(sz.width),
                    height: u32::from(sz.height),
                }))
                .await;
            if let Err(e) = r {
                tracing::debug!(id = %id, exec_id = %exec_id, error = %e, "resize");
            }
        }
    }))
}

/// Undoes an exec when dropped before it finished (the client went away, the session was
/// torn down): the process is killed and removed, and so is its FIFO directory.
struct ExecGuard {
    inner: Arc<Inner>,
    id: String,
    exec_id: String,
    dir: PathBuf,
    finished: bool,
}

impl Drop for ExecGuard {
    fn drop(&mut self) {
        if self.finished {
            crate::exec::remove_exec_dir_later(std::mem::take(&mut self.dir));
            return;
        }
        let (api, id, exec_id, dir) = (
            self.inner.api.clone(),
            self.id.clone(),
            self.exec_id.clone(),
            self.dir.clone(),
        );
        tokio::spawn(async move {
            crate::exec::kill_exec(&api, &id, &exec_id).await;
            let _ = api
                .tasks()
                .delete_process(api.req(tasks::DeleteProcessRequest {
                    container_id: id,
                    exec_id,
                }))
                .await;
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}

async fn exec(
    inner: &Arc<Inner>,
    id: &str,
    cmd: Vec<String>,
    io: StreamIo,
) -> Result<i32, BoxError> {
    let c = inner.running_container(id).map_err(boxed)?;
    let mut process = inner
        .exec_process(&c.id, &cmd, io.tty)
        .await
        .map_err(boxed)?;
    // The terminal is made at the size the client's has, when it says so right away: a
    // resize can only reach a started process, and the command may ask for its size first.
    let mut resize = io.resize;
    if io.tty
        && let Some(rx) = resize.as_mut()
        && let Ok(Some(sz)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
    {
        process["consoleSize"] = serde_json::json!({"height": sz.height, "width": sz.width});
    }
    let exec_id = uuid::Uuid::new_v4().simple().to_string();
    let dir = inner.dirs.state.join("exec").join(&exec_id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("exec directory: {e}"))?;
    let mut guard = ExecGuard {
        inner: inner.clone(),
        id: c.id.clone(),
        exec_id: exec_id.clone(),
        dir: dir.clone(),
        finished: true,
    };
    let fifo = |name: &str, wanted: bool| -> Result<Option<PathBuf>, BoxError> {
        if !wanted {
            return Ok(None);
        }
        let p = dir.join(name);
        crate::container::make_fifo(&p).map_err(|e| format!("exec FIFO {}: {e}", p.display()))?;
        Ok(Some(p))
    };
    let stdin = fifo("stdin", io.stdin.is_some())?;
    let stdout = fifo("stdout", io.stdout.is_some())?;
    let stderr = fifo("stderr", io.stderr.is_some() && !io.tty)?;
    let s = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    // Our ends first, so the shim's opens never wait for us.
    let (done, done_rx) = watch::channel(false);
    let mut outs = Vec::new();
    if let (Some(p), Some(w)) = (&stdout, io.stdout) {
        outs.push(tokio::spawn(pump_out(p.clone(), w, done_rx.clone())));
    }
    if let (Some(p), Some(w)) = (&stderr, io.stderr) {
        outs.push(tokio::spawn(pump_out(p.clone(), w, done_rx.clone())));
    }
    let api = inner.api.clone();
    let t = api.tasks();
    t.exec(api.req(tasks::ExecProcessRequest {
        container_id: c.id.clone(),
        stdin: s(&stdin),
        stdout: s(&stdout),
        stderr: s(&stderr),
        terminal: io.tty,
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).expect("JSON"),
        }),
        exec_id: exec_id.clone(),
    }))
    .await
    .map_err(boxed)?;
    // From here on the process exists: it is the guard's to undo if we are dropped.
    guard.finished = false;
    // The shim opens the process's FIFOs when it starts it.
    let (started, started_rx) = watch::channel(false);
    let input = match (stdin, io.stdin) {
        (Some(p), Some(r)) => {
            let (api, id, exec_id) = (api.clone(), c.id.clone(), exec_id.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = pump_in(r, p, started_rx).await {
                    tracing::debug!(id = %id, error = %e, "exec stdin");
                }
                // The client's stdin ended: so does the process's.
                let _ = api
                    .tasks()
                    .close_io(api.req(tasks::CloseIoRequest {
                        container_id: id,
                        exec_id,
                        stdin: true,
                    }))
                    .await;
            }))
        }
        _ => None,
    };
    let w = api.tasks();
    let wait_req = api.req(tasks::WaitRequest {
        container_id: c.id.clone(),
        exec_id: exec_id.clone(),
    });
    t.start(api.req(tasks::StartRequest {
        container_id: c.id.clone(),
        exec_id: exec_id.clone(),
    }))
    .await
    .map_err(boxed)?;
    let _ = started.send(true);
    let resizes = forward_resizes(inner, &c.id, &exec_id, resize);
    let code = w
        .wait(wait_req)
        .await
        .map_err(boxed)?
        .into_inner()
        .exit_status as i32;
    let _ = done.send(true);
    for o in outs {
        match tokio::time::timeout(Duration::from_secs(10), o).await {
            Ok(Ok(Err(e))) => tracing::debug!(error = %e, "exec output"),
            Err(_) => tracing::warn!(id = %c.id, "exec output still flowing 10 s after the exit"),
            _ => {}
        }
    }
    for h in [input, resizes].into_iter().flatten() {
        h.abort();
    }
    crate::exec::delete_exec_later(&api, &c.id, &exec_id);
    guard.finished = true;
    Ok(code)
}

/// One line of a CRI log file: (stream, partial, content).
fn parse_log_line(line: &[u8]) -> Option<(&[u8], bool, &[u8])> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some((stream, tag.first() == Some(&b'P'), content))
}

/// Follows the CRI log at `path` from its current end, writing what the container writes to
/// `stdout`/`stderr` (joined partial lines; with a terminal everything is stdout), until
/// `done` fires and the file has no more to give. A log reopened under the same path (the
/// kubelet's rotation) is followed into its new file.
async fn follow_log(
    path: PathBuf,
    mut stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    mut stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    mut done: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut f = std::fs::File::open(&path)?;
    f.seek(SeekFrom::End(0))?;
    let mut ino = f.metadata()?.ino();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n > 0 {
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Some((stream, partial, content)) = parse_log_line(&line[..line.len() - 1])
                else {
                    continue;
                };
                let to = if stream == b"stderr" {
                    stderr.as_mut()
                } else {
                    stdout.as_mut()
                };
                if let Some(w) = to {
                    w.write_all(content).await?;
                    if !partial {
                        w.write_all(b"\n").await?;
                    }
                    w.flush().await?;
                }
            }
            continue;
        }
        // At the end: a rotated log means a new file at the path.
        if let Ok(md) = std::fs::metadata(&path)
            && md.ino() != ino
            && let Ok(nf) = std::fs::File::open(&path)
        {
            f = nf;
            ino = md.ino();
            continue;
        }
        if *done.borrow() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = done.changed() => {}
        }
    }
}

async fn attach(inner: &Arc<Inner>, id: &str, io: StreamIo) -> Result<(), BoxError> {
    let c = inner.running_container(id).map_err(boxed)?;
    // Subscribed before the state is looked at, so the exit cannot slip between.
    let mut exits = inner.exits.subscribe();
    let (done, done_rx) = watch::channel(false);
    let stdin_only = io.stdout.is_none() && io.stderr.is_none();
    // Output: from the CRI log when there is one, else from the CRI's own FIFO readers.
    let output = if stdin_only {
        None
    } else if !c.st.log_path.is_empty() {
        Some(tokio::spawn(follow_log(
            PathBuf::from(&c.st.log_path),
            io.stdout,
            io.stderr,
            done_rx.clone(),
        )))
    } else {
        let rx = inner.outputs.subscribe(&c.id).ok_or_else(|| {
            format!(
                "container {}: its output is not read by this daemon (no log path, started \
                 by a berthd without attach support)",
                c.id
            )
        })?;
        Some(tokio::spawn(forward_output(
            rx,
            io.stdout,
            io.stderr,
            done_rx.clone(),
        )))
    };
    let resizes = forward_resizes(inner, &c.id, "", io.resize);
    let (stdin_end_tx, mut stdin_end) = watch::channel(false);
    let input = match io.stdin {
        Some(r) if c.config.stdin => {
            let fifo = inner.stdin_fifo(&c.id);
            let (api, id, once) = (inner.api.clone(), c.id.clone(), c.config.stdin_once);
            // The container runs: the shim holds its stdin FIFO open already.
            let opened = watch::channel(true).1;
            Some(tokio::spawn(async move {
                if let Err(e) = pump_in(r, fifo, opened).await {
                    tracing::debug!(id = %id, error = %e, "attach stdin");
                }
                if once {
                    // stdin_once: the container's stdin ends with its first attacher's.
                    let _ = api
                        .tasks()
                        .close_io(api.req(tasks::CloseIoRequest {
                            container_id: id,
                            exec_id: String::new(),
                            stdin: true,
                        }))
                        .await;
                }
                let _ = stdin_end_tx.send(true);
            }))
        }
        _ => None,
    };
    let still_running = |inner: &Inner| {
        inner
            .meta
            .container(&c.id)
            .is_some_and(|x| x.state() == cri::ContainerState::ContainerRunning)
    };
    // Until the container exits (or, for an attach with stdin only, the client's stdin ends).
    if still_running(inner) {
        loop {
            tokio::select! {
                r = exits.recv() => match r {
                    Ok(x) if x == c.id => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    _ if !still_running(inner) => break,
                    _ => {}
                },
                _ = stdin_end.wait_for(|e| *e), if stdin_only && input.is_some() => break,
            }
        }
    }
    let _ = done.send(true);
    if let Some(o) = output
        && let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), o).await
    {
        tracing::debug!(id = %c.id, error = %e, "attach output");
    }
    for h in [input, resizes].into_iter().flatten() {
        h.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn log_lines_are_split_into_stream_tag_and_content() {
        assert_eq!(
            parse_log_line(b"2026-12-07T10:00:00.000000001Z stdout F hello world"),
            Some((&b"stdout"[..], false, &b"hello world"[..]))
        );
        assert_eq!(
            parse_log_line(b"2026-12-07T10:00:00.000000001Z stderr P part"),
            Some((&b"stderr"[..], true, &b"part"[..]))
        );
        assert_eq!(
            parse_log_line(b"2026-12-07T10:00:00.000000001Z stdout F "),
            Some((&b"stdout"[..], false, &b""[..]))
        );
        assert_eq!(parse_log_line(b"garbage"), None);
    }

    #[tokio::test]
    async fn a_followed_log_gives_new_output_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        std::fs::write(&path, "T stdout F old line\n").unwrap();
        let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
        let (err_w, mut err_r) = tokio::io::duplex(1 << 16);
        let (done, done_rx) = watch::channel(false);
        let h = tokio::spawn(follow_log(
            path.clone(),
            Some(Box::new(out_w)),
            Some(Box::new(err_w)),
            done_rx,
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let append = |s: &str| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(s.as_bytes())
                .unwrap();
        };
        append("T stdout P new \nT stdout F line\nT stderr F oops\n");
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Rotation: the old file renamed, a new one at the path.
        std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
        std::fs::write(&path, "T stdout F after rotation\n").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = done.send(true);
        h.await.unwrap().unwrap();
        let mut out = String::new();
        out_r.read_to_string(&mut out).await.unwrap();
        let mut err = String::new();
        err_r.read_to_string(&mut err).await.unwrap();
        assert_eq!(out, "new line\nafter rotation\n");
        assert_eq!(err, "oops\n");
    }
}
