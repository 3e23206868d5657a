//! `run` in the foreground with `terminal: true` and no `--console-socket`: receive the pty
//! master ourselves and copy between it and our stdio (as `runc run` does).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

/// A listening console socket in the state root, removed on drop.
pub(crate) struct ConsoleListener {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleListener {
    pub(crate) fn bind(root: &Path, id: &str) -> Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
        let path = root.join(format!(".console-{id}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
        Ok(ConsoleListener { path, listener })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master the container sent (the runtime connected during create).
    pub(crate) fn master(&self) -> Result<OwnedFd> {
        let (conn, _) = self
            .listener
            .accept()
            .context("accept console connection")?;
        Ok(berth_runtime::recv_fd(&conn)
            .context("receive pty master")?
            .1)
    }
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Restores the terminal mode on drop.
struct RawMode(Option<Termios>);

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}

/// Copies stdin → master and master → stdout until the container side closes.
pub(crate) fn proxy(master: OwnedFd) -> Result<()> {
    let stdin = std::io::stdin();
    let raw = match tcgetattr(stdin.as_fd()) {
        Ok(orig) => {
            let mut t = orig.clone();
            cfmakeraw(&mut t);
            let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &t);
            // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a valid winsize, on our tty and the master.
            unsafe {
                let mut ws: libc::winsize = std::mem::zeroed();
                if libc::ioctl(stdin.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 {
                    libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
                }
            }
            RawMode(Some(orig))
        }
        Err(_) => RawMode(None),
    };
    let mut m = std::fs::File::from(master);
    let mut out = std::io::stdout();
    let mut buf = [0u8; 8192];
    let mut stdin_open = true;
    loop {
        let mfd = m.as_fd();
        let sfd = stdin.as_fd();
        let mut fds = vec![PollFd::new(mfd, PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(sfd, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
        }
        let m_ready = fds[0].revents().unwrap_or(PollFlags::empty());
        let s_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .unwrap_or(PollFlags::empty());
        drop(fds);
        if m_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            match m.read(&mut buf) {
                // EIO: every slave fd is closed (the container exited).
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
            }
        }
        if s_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => m.write_all(&buf[..n])?,
            }
        }
    }
    drop(raw);
    Ok(())
}
