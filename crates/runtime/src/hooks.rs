//! OCI hooks: run with the container state on stdin, with an optional timeout.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Result, RuntimeError};

/// Runs hooks in order; the first failure stops the rest.
pub(crate) fn run_all(hooks: Option<&Vec<Hook>>, state: &[u8]) -> Result<()> {
    run_all_in(hooks, state, None)
}

/// As [`run_all`], a hook without an `env` of its own getting `inherit` (the container
/// process's environment, for startContainer hooks) instead of the runtime's.
pub(crate) fn run_all_in(
    hooks: Option<&Vec<Hook>>,
    state: &[u8],
    inherit: Option<&[String]>,
) -> Result<()> {
    for h in hooks.into_iter().flatten() {
        run(h, state, inherit)?;
    }
    Ok(())
}

fn run(h: &Hook, state: &[u8], inherit: Option<&[String]>) -> Result<()> {
    let err = |reason: String| RuntimeError::Hook {
        path: h.path().clone(),
        reason,
    };
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(h.path());
    if let Some(a0) = args.first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, a0);
    }
    // A hook without `env` inherits (runc runs it with Go's nil Env: the caller's).
    match (h.env(), inherit) {
        (Some(env), _) => {
            cmd.env_clear()
                .envs(env.iter().filter_map(|e| e.split_once('=')));
        }
        (None, Some(env)) => {
            cmd.env_clear()
                .envs(env.iter().filter_map(|e| e.split_once('=')));
        }
        (None, None) => {}
    }
    cmd.args(args.iter().skip(1))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| err(format!("start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine (EPIPE).
        let _ = stdin.write_all(state);
    }
    let deadline = h
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if status.success() {
                    return Ok(());
                }
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                return Err(err(format!("{status}: {}", stderr.trim())));
            }
            Ok(None) => {}
            Err(e) => return Err(err(format!("wait: {e}"))),
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err("timed out".into()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
