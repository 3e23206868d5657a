//! `create` and `run`.

use anyhow::Result;
use berth_runtime::{CreateOptions, Runtime};

use crate::cli::CreateArgs;

fn options(a: &CreateArgs) -> CreateOptions {
    CreateOptions {
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
    }
}

pub(crate) fn create(rt: &Runtime, a: &CreateArgs) -> Result<u8> {
    rt.create(&a.id, &options(a))?;
    Ok(0)
}

pub(crate) fn run(rt: &Runtime, a: &CreateArgs, detach: bool, keep: bool) -> Result<u8> {
    let pid = rt.create(&a.id, &options(a))?;
    if let Err(e) = rt.start(&a.id) {
        let _ = rt.delete(&a.id, true);
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    let code = crate::wait::wait_forwarding(pid);
    if !keep {
        rt.delete(&a.id, true)?;
    }
    Ok(code)
}
