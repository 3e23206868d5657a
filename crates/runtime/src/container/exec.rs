//! `exec`: a new process in a running container's namespaces and cgroup.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use oci_spec::runtime::Process;

use super::namespaces::{join_in_parent, plan_exec};
use super::{Runtime, clone_joining};
use crate::error::{PathContext, Result, RuntimeError};
use crate::init::{ChildArgs, Role, child_main};
use crate::state::{Status, write_atomic};
use crate::sys::{SyncSocket, msg};

/// Options of `exec`.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The process to run.
    pub process: Process,
    /// As [`super::CreateOptions::console_socket`].
    pub console_socket: Option<PathBuf>,
    /// Where to write the process's host pid.
    pub pid_file: Option<PathBuf>,
    /// As [`super::CreateOptions::preserve_fds`].
    pub preserve_fds: u32,
    /// As [`super::CreateOptions::stdio`].
    pub stdio: Option<[std::os::fd::RawFd; 3]>,
    /// Exec into a paused container too (runc's `--ignore-paused`).
    pub ignore_paused: bool,
    /// Existing sub-cgroups of the container's to run in (runc's `--cgroup`: `path`, or
    /// `controller[,controller]:path` on v1).
    pub cgroup: Vec<String>,
}

impl Runtime {
    /// Starts the process and returns its pid once it is about to execve. The process is our
    /// child: the caller waits for it (or exits, leaving it to the subreaper).
    pub fn exec(&self, id: &str, o: &ExecOptions) -> Result<i32> {
        let st = self.load(id)?;
        match st.status(&self.root) {
            Status::Running | Status::Created => {}
            Status::Paused if o.ignore_paused => {}
            Status::Paused => {
                return Err(RuntimeError::Refused(
                    "cannot exec in a paused container (use --ignore-paused to override)".into(),
                ));
            }
            _ => return Err(RuntimeError::NotRunning),
        }
        if o.process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(RuntimeError::Spec("process.args must not be empty".into()));
        }
        let terminal = o.process.terminal() == Some(true);
        let console = match (terminal, &o.console_socket) {
            (true, Some(p)) => Some(OwnedFd::from(
                UnixStream::connect(p).at("connect console socket", p)?,
            )),
            (true, None) => {
                return Err(RuntimeError::Spec(
                    "a terminal needs --console-socket".into(),
                ));
            }
            (false, _) => None,
        };
        let linux = st.config.linux().clone().unwrap_or_default();
        let seccomp = match linux.seccomp() {
            Some(s) => Some(crate::seccomp::compile_cached(
                s,
                Some(&self.root.join(".cache")),
            )?),
            None => None,
        };
        if seccomp.as_ref().is_some_and(|p| p.notify) {
            return Err(RuntimeError::Spec(
                "exec with a seccomp notify filter is not supported".into(),
            ));
        }
        let plan = plan_exec(st.pid, linux.namespaces().as_deref().unwrap_or(&[]))?;
        let paths = match &st.cgroup {
            Some(c) if !o.cgroup.is_empty() => Some(c.sub(&o.cgroup)?),
            other => other.clone(),
        };
        let cgroup = paths.as_ref().map(|c| c.open());
        join_in_parent(&plan, None)?;
        let (parent_sock, child_sock) = SyncSocket::pair()?;
        let self_join = paths.as_ref().and_then(|c| c.self_join().ok());
        // SAFETY: single-threaded caller (see create).
        let (pid, self_join) = unsafe { clone_joining(0, self_join) }?;
        if pid == 0 {
            crate::sys::child_stdio(o.stdio);
            drop(parent_sock);
            let new_userns = plan
                .child_join
                .iter()
                .any(|(f, _)| *f == nix::sched::CloneFlags::CLONE_NEWUSER);
            child_main(ChildArgs {
                role: Role::Exec,
                process: &o.process,
                join: plan.child_join,
                new_userns,
                unshare: nix::sched::CloneFlags::empty(),
                double_fork: false,
                unshare_late: nix::sched::CloneFlags::empty(),
                console,
                seccomp: seccomp.as_deref(),
                seccomp_agent: None,
                preserve_fds: o.preserve_fds,
                hostname: None,
                domainname: None,
                sync: child_sock,
                self_join: self_join.as_ref(),
            });
        }
        drop(child_sock);
        drop(console);
        let fail = |e: RuntimeError| {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            e
        };
        if let Some(cg) = cgroup.as_ref().filter(|_| self_join.is_none()) {
            cg.apply(pid).map_err(|e| fail(e.into()))?;
        }
        drop(self_join);
        parent_sock
            .send(msg::GO)
            .map_err(|e| fail(RuntimeError::sys("sync", e)))?;
        parent_sock.expect(msg::READY).map_err(fail)?;
        if let Some(pf) = &o.pid_file {
            write_atomic(pf, pid.to_string().as_bytes())?;
        }
        Ok(pid)
    }
}
