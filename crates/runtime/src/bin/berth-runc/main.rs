//! `berth-runc`: runc's command line over the `berth_runtime` library.
//!
//! Errors go to stderr and, with `--log`, to the log file as logrus-style lines (text or
//! `{"level","msg","time"}` JSON), because containerd's Go shim reads the last `error` line.

mod cli;
mod commands;
mod log;
mod tty;
mod wait;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let logger = log::Logger::new(cli.log.clone(), cli.log_format, cli.debug);
    if matches!(
        cli.command,
        cli::Command::Create(_) | cli::Command::Run { .. } | cli::Command::Exec(_)
    ) && let Err(e) = berth_runtime::protect_self_exe()
    {
        let msg = format!("protect runtime binary: {e}");
        logger.error(&msg);
        eprintln!("berth-runc: {msg}");
        return ExitCode::from(1);
    }
    match commands::dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            logger.error(&msg);
            eprintln!("berth-runc: {msg}");
            ExitCode::from(1)
        }
    }
}
