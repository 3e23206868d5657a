//! The requests the CRI's Exec, Attach and PortForward RPCs carry, and their validation (the
//! kubelet streaming server's rules).

use crate::error::StreamError;

/// CRI `ExecRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The container to run the command in.
    pub container_id: String,
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// Whether the process gets a terminal.
    pub tty: bool,
    /// Whether the client sends stdin.
    pub stdin: bool,
    /// Whether the client reads stdout.
    pub stdout: bool,
    /// Whether the client reads stderr (never with a terminal).
    pub stderr: bool,
}

/// CRI `AttachRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachRequest {
    /// The container to attach to.
    pub container_id: String,
    /// Whether the container has a terminal.
    pub tty: bool,
    /// Whether the client sends stdin.
    pub stdin: bool,
    /// Whether the client reads stdout.
    pub stdout: bool,
    /// Whether the client reads stderr (never with a terminal).
    pub stderr: bool,
}

/// CRI `PortForwardRequest`. `ports` may be empty: a SPDY client names its ports per stream,
/// a WebSocket client then gives them as `?port=` query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortForwardRequest {
    /// The pod whose network namespace the ports are in.
    pub pod_sandbox_id: String,
    /// The ports to forward (may be empty, see above).
    pub ports: Vec<i32>,
}

/// Which stdio streams a session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StdioOpts {
    pub(crate) stdin: bool,
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
    pub(crate) tty: bool,
}

impl StdioOpts {
    /// The streams asked for, if they make a session: at least one, and no stderr beside a
    /// terminal.
    fn checked(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<Self, StreamError> {
        if tty && stderr {
            return Err(StreamError::TtyWithStderr);
        }
        if !stdin && !stdout && !stderr {
            return Err(StreamError::NoStreams);
        }
        Ok(StdioOpts {
            stdin,
            stdout,
            stderr,
            tty,
        })
    }
}

/// A validated request waiting for its client behind a token.
#[derive(Debug, Clone)]
pub(crate) enum Prepared {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        opts: StdioOpts,
    },
    Attach {
        container_id: String,
        opts: StdioOpts,
    },
    PortForward(PortForwardRequest),
}

impl Prepared {
    pub(crate) fn exec(r: ExecRequest) -> Result<Self, StreamError> {
        if r.container_id.is_empty() {
            return Err(StreamError::MissingField("container_id"));
        }
        if r.cmd.is_empty() {
            return Err(StreamError::MissingField("cmd"));
        }
        let opts = StdioOpts::checked(r.stdin, r.stdout, r.stderr, r.tty)?;
        Ok(Self::Exec {
            container_id: r.container_id,
            cmd: r.cmd,
            opts,
        })
    }

    pub(crate) fn attach(r: AttachRequest) -> Result<Self, StreamError> {
        if r.container_id.is_empty() {
            return Err(StreamError::MissingField("container_id"));
        }
        let opts = StdioOpts::checked(r.stdin, r.stdout, r.stderr, r.tty)?;
        Ok(Self::Attach {
            container_id: r.container_id,
            opts,
        })
    }

    pub(crate) fn port_forward(r: PortForwardRequest) -> Result<Self, StreamError> {
        if r.pod_sandbox_id.is_empty() {
            return Err(StreamError::MissingField("pod_sandbox_id"));
        }
        if let Some(&p) = r.ports.iter().find(|&&p| !(1..=65535).contains(&p)) {
            return Err(StreamError::InvalidPort(p));
        }
        Ok(Self::PortForward(r))
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Exec { .. } => "exec",
            Self::Attach { .. } => "attach",
            Self::PortForward(_) => "portforward",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> ExecRequest {
        ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into()],
            tty,
            stdin,
            stdout,
            stderr,
        }
    }

    #[test]
    fn exec_needs_a_stream_and_no_tty_with_stderr() {
        assert!(Prepared::exec(exec(false, false, true, false)).is_ok());
        assert!(Prepared::exec(exec(true, true, true, false)).is_ok());
        assert!(matches!(
            Prepared::exec(exec(false, false, false, false)),
            Err(StreamError::NoStreams)
        ));
        assert!(matches!(
            Prepared::exec(exec(true, true, true, true)),
            Err(StreamError::TtyWithStderr)
        ));
        let mut r = exec(false, true, false, false);
        r.container_id.clear();
        assert!(matches!(
            Prepared::exec(r),
            Err(StreamError::MissingField("container_id"))
        ));
        let mut r = exec(false, true, false, false);
        r.cmd.clear();
        assert!(matches!(
            Prepared::exec(r),
            Err(StreamError::MissingField("cmd"))
        ));
    }

    #[test]
    fn attach_and_port_forward_are_validated() {
        let a = AttachRequest {
            container_id: "c".into(),
            tty: true,
            stderr: true,
            ..Default::default()
        };
        assert!(matches!(
            Prepared::attach(a),
            Err(StreamError::TtyWithStderr)
        ));
        let pf = |ports: Vec<i32>| {
            Prepared::port_forward(PortForwardRequest {
                pod_sandbox_id: "p".into(),
                ports,
            })
        };
        assert!(pf(vec![]).is_ok());
        assert!(pf(vec![1, 65535]).is_ok());
        assert!(matches!(pf(vec![0]), Err(StreamError::InvalidPort(0))));
        assert!(matches!(
            pf(vec![65536]),
            Err(StreamError::InvalidPort(65536))
        ));
        assert!(matches!(
            Prepared::port_forward(PortForwardRequest::default()),
            Err(StreamError::MissingField("pod_sandbox_id"))
        ));
    }
}
