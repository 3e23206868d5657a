//! `berth-runc`: runc's command line over the `berth_runtime` library.
//!
//! Errors are reported as runc reports them: a logrus-style line (text or
//! `{"level","msg","time"}` JSON) in the `--log` file, where containerd's Go shim reads the
//! last `error` line, and the bare message on stderr; without `--log`, the line on stderr.

mod cli;
mod commands;
mod log;
mod tty;
mod wait;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let Some(command) = &cli.command else {
        if cli.version {
            println!(
                "berth-runc version {}\ncommit: none\nspec: {}",
                env!("CARGO_PKG_VERSION"),
                berth_runtime::OCI_VERSION
            );
            return ExitCode::SUCCESS;
        }
        eprintln!("berth-runc: a command is required (see --help)");
        return ExitCode::from(2);
    };
    let logger = log::Logger::new(cli.log.clone(), cli.log_format, cli.debug);
    if matches!(
        command,
        cli::Command::Create(_) | cli::Command::Run { .. } | cli::Command::Exec(_)
    ) && let Err(e) = berth_runtime::protect_self_exe()
    {
        logger.fatal(&format!("protect runtime binary: {e}"));
        return ExitCode::from(1);
    }
    match commands::dispatch(&cli, command) {
        Ok(code) => ExitCode::from(code),
        // runc's exec fails with 255, so that its callers tell it from the process's status.
        Err(e) if matches!(command, cli::Command::Exec(_)) => {
            logger.fatal(&format!("exec failed: {e:#}"));
            ExitCode::from(255)
        }
        Err(e) => {
            logger.fatal(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}
