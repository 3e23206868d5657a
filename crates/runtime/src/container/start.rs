//! `start`: open the exec fifo so the waiting init proceeds to execve.

use std::os::fd::AsFd;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{Runtime, bad_state};
use crate::error::{Result, RuntimeError, SysContext};
use crate::state::{EXEC_FIFO, Status};

impl Runtime {
    /// Starts a created container.
    pub fn start(&self, id: &str) -> Result<()> {
        let mut st = self.load(id)?;
        match st.status(&self.root) {
            Status::Created => {}
            Status::Stopped => return Err(bad_state("start", id, Status::Stopped)),
            s => {
                return Err(RuntimeError::Init(format!(
                    "cannot start an already {s} container"
                )));
            }
        }
        let fifo_path = self.dir(id).join(EXEC_FIFO);
        let fifo = nix::fcntl::open(
            &fifo_path,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NONBLOCK
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .sys("open exec fifo")?;
        loop {
            let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(100u8)) {
                Ok(0) => {
                    if !st.init_alive() {
                        return Err(RuntimeError::Init(
                            "container init exited before start".into(),
                        ));
                    }
                }
                Ok(_) => {
                    let mut b = [0u8; 1];
                    match nix::unistd::read(&fifo, &mut b) {
                        Ok(1) => break,
                        Ok(_) => {
                            return Err(RuntimeError::Init(
                                "container init exited before start".into(),
                            ));
                        }
                        Err(nix::errno::Errno::EAGAIN) => {}
                        Err(e) => return Err(RuntimeError::sys("read exec fifo", e)),
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(RuntimeError::sys("poll exec fifo", e)),
            }
        }
        let _ = std::fs::remove_file(&fifo_path);
        st.started = true;
        st.save(&self.root)?;
        if let Some(h) = st
            .config
            .hooks()
            .as_ref()
            .and_then(|h| h.poststart().as_ref())
        {
            // Poststart failures are logged, not fatal (runtime spec).
            if let Err(e) = crate::hooks::run_all(Some(h), &st.hook_state(Status::Running)) {
                eprintln!("warning: poststart hook: {e}");
            }
        }
        Ok(())
    }
}
