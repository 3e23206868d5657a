//! One file per verb.

mod create;
mod events;
mod exec;
mod features;
mod lifecycle;
mod query;
mod spec;
mod update;

/// Writes `text` and a newline to stdout; a closed pipe (`| head`) ends quietly.
pub(crate) fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o
        .write_all(text.as_bytes())
        .and_then(|()| o.write_all(b"\n"))
        .and_then(|()| o.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

use anyhow::{Result, bail};
use berth_runtime::Runtime;

use crate::cli::{Cli, Command};

/// Runs the command; returns the process exit code.
pub(crate) fn dispatch(cli: &Cli, command: &Command) -> Result<u8> {
    let rt = Runtime::new(&cli.root);
    if cli.systemd_cgroup && matches!(command, Command::Create(_) | Command::Run { .. }) {
        bail!("the systemd cgroup driver is not supported by berth-runc");
    }
    let rootless = cli.rootless.as_deref().is_some_and(|v| v == "true");
    if rootless && !matches!(command, Command::Spec { .. }) {
        bail!("rootless mode is not supported by berth-runc");
    }
    match command {
        Command::Create(a) => create::create(&rt, a),
        Command::Run {
            create,
            detach,
            keep,
        } => create::run(&rt, create, *detach, *keep),
        Command::Start { id } => lifecycle::start(&rt, id),
        Command::Exec(a) => exec::exec(&rt, a),
        Command::Kill { all, id, signal } => lifecycle::kill(&rt, id, signal, *all),
        Command::Delete { force, id } => lifecycle::delete(&rt, id, *force),
        Command::Pause { id } => lifecycle::pause(&rt, id),
        Command::Resume { id } => lifecycle::resume(&rt, id),
        Command::State { id } => query::state(&rt, id),
        Command::List { format, quiet } => query::list(&rt, *format, *quiet),
        Command::Ps {
            format,
            id,
            ps_args,
        } => query::ps(&rt, id, *format, ps_args),
        Command::Update(a) => update::update(&rt, a),
        Command::Events {
            stats,
            interval,
            id,
        } => events::events(&rt, id, *stats, interval),
        Command::Checkpoint { .. } | Command::Restore { .. } => bail!(
            "checkpoint/restore (CRIU) is not supported by berth-runc; run the container with runc to checkpoint it"
        ),
        Command::Features => features::features(),
        Command::Spec { bundle } => spec::spec(bundle.as_deref(), rootless),
    }
}
