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
        stdio: None,
    }
}

pub(crate) fn create(rt: &Runtime, a: &CreateArgs) -> Result<u8> {
    rt.create(&a.id, &options(a))?;
    Ok(0)
}

pub(crate) fn run(rt: &Runtime, a: &CreateArgs, detach: bool, keep: bool) -> Result<u8> {
    let mut opts = options(a);
    // A foreground terminal without a console socket: we hold the pty ourselves.
    let console = if !detach && opts.console_socket.is_none() && wants_terminal(&a.bundle) {
        berth_runtime::validate_id(&a.id)?;
        let l = crate::tty::ConsoleListener::bind(rt.root(), &a.id)?;
        opts.console_socket = Some(l.path().to_path_buf());
        Some(l)
    } else {
        None
    };
    if !detach {
        // The init may be a grandchild (a new pid namespace inside a joined user namespace):
        // become its reaper so we can wait for it.
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let pid = rt.create(&a.id, &opts)?;
    let master = match &console {
        Some(l) => Some(l.master()?),
        None => None,
    };
    if let Err(e) = rt.start(&a.id) {
        let _ = rt.delete(&a.id, true);
        return Err(e.into());
    }
    if detach {
        return Ok(0);
    }
    if let Some(m) = master {
        crate::wait::forward_signals(pid);
        crate::tty::proxy(m)?;
    }
    let code = crate::wait::wait_forwarding(pid);
    if !keep {
        rt.delete(&a.id, true)?;
    }
    Ok(code)
}

fn wants_terminal(bundle: &std::path::Path) -> bool {
    berth_runtime::load_spec(bundle)
        .ok()
        .and_then(|s| s.process().as_ref().and_then(|p| p.terminal()))
        == Some(true)
}
