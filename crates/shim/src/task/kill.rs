//! Kill: the init through the runtime (`runc kill [--all]`), an exec by its pid.

use berth_api::containerd::task::v2::KillRequest;
use berth_api::containerd::v1::types::Status as TaskStatus;

use super::Shim;
use crate::error::ShimError;
use crate::sys;

fn finished() -> ShimError {
    ShimError::NotFound("process already finished".into())
}

/// What the runtime says when there is nothing left to signal.
fn runtime_says_gone(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "not running",
        "already finished",
        "no such process",
        "container not running",
        "does not exist",
    ]
    .iter()
    .any(|s| m.contains(s))
}

impl Shim {
    pub(crate) async fn kill(&self, req: KillRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (0..=64).contains(s))
            .ok_or_else(|| ShimError::InvalidArgument(format!("invalid signal {}", req.signal)))?;
        match p.status() {
            TaskStatus::Stopped => return Err(finished()),
            TaskStatus::Created if !req.exec_id.is_empty() => {
                return Err(ShimError::FailedPrecondition(format!(
                    "process {} is not started",
                    req.exec_id
                )));
            }
            _ => {}
        }
        if !req.exec_id.is_empty() {
            return match sys::kill(p.pid() as i32, signal) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(finished()),
                Err(e) => Err(ShimError::io(format!("signalling exec {}", req.exec_id), e)),
            };
        }
        match c.runc.kill(&req.id, req.signal, req.all).await {
            Ok(()) => Ok(()),
            Err(e) if runtime_says_gone(&e.message()) => Err(finished()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_messages() {
        assert!(runtime_says_gone("container not running"));
        assert!(runtime_says_gone("os: process already finished"));
        assert!(!runtime_says_gone("permission denied"));
    }
}
