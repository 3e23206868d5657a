//! The `delete` action: the daemon runs it when the shim is gone (crashed, killed, or after a
//! normal shutdown). Forcibly delete the container in the runtime, unmount the rootfs, remove a
//! dead socket, and print a `DeleteResponse` (exit status 137, as the container was killed).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use anyhow::Context as _;
use berth_api::containerd::task::v2::DeleteResponse;
use prost::Message;

use crate::flags::Flags;
use crate::mount;
use crate::runc::{Runc, RuntimeRecord};
use crate::start::state_dir;

fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = address.trim();
    let path = Path::new(path.strip_prefix("unix://").unwrap_or(path));
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

pub(crate) fn run(flags: &Flags) -> anyhow::Result<()> {
    if flags.id.is_empty() {
        anyhow::bail!("-id is required");
    }
    let bundle = match &flags.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().context("the bundle (working directory)")?,
    };
    let record = RuntimeRecord::load(&bundle).unwrap_or_else(|| RuntimeRecord {
        binary: crate::runc::default_binary(),
        root: state_dir(&flags.address)
            .join("runc")
            .join(&flags.namespace),
        systemd_cgroup: false,
    });
    let log = bundle.join("log.json");
    let mut cmd = Runc::args(
        &record.binary,
        &record.root,
        bundle.is_dir().then_some(log.as_path()),
        record.systemd_cgroup,
        &["delete".into(), "--force".into(), flags.id.clone().into()],
    );
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if !out.status.success() => {
            let msg = crate::runc::last_error(&log, 0)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            if !msg.contains("not exist") {
                eprintln!("{} delete --force {}: {msg}", record.binary, flags.id);
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("running {}: {e}", record.binary),
    }
    mount::unmount_all(&bundle.join("rootfs"));
    remove_dead_socket(&bundle);
    let pid = std::fs::read_to_string(bundle.join("init.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let resp = DeleteResponse {
        pid,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(crate::sys::timestamp(std::time::SystemTime::now())),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&resp.encode_to_vec())
        .and_then(|()| out.flush())
        .context("writing the delete response")?;
    Ok(())
}
