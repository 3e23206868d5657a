//! `containerd-shim-berth-v2`: Berth's shim v2.
//!
//! One process per container (or group), between the daemon (containerd or berthd) and the OCI
//! runtime. `start` re-executes the binary as a daemonized server speaking the task API over ttrpc
//! on a unix socket; `delete` cleans up after a dead shim. See `DESIGN.md` (shim layer) and the
//! shim v2 notes in `containerd-wire.md` §3.

mod cleanup;
mod crilog;
mod error;
mod events;
mod flags;
mod info;
mod mount;
mod oom;
mod reaper;
mod runc;
mod serve;
mod service;
mod start;
mod stats;
mod stats_v2;
mod stdio;
mod sys;
mod task;

use std::process::ExitCode;

use flags::Flags;

fn init_logging(debug: bool) {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(|| LossyStderr)
        .init();
}

/// Standard error (berthd's end of the bundle's `log` FIFO) that never fails: while the daemon is
/// down nobody reads the FIFO and a line is dropped. A failed write must not reach
/// tracing-subscriber, which reports it with `eprintln!` — a panic on a broken stderr, in the
/// middle of whatever request was being logged.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The server is executed through `/proc/self/fd/N` (a sealed copy of the binary), so the
/// kernel names it `N`: `ps` would show a number and `pgrep containerd-shim` would miss it. It
/// takes the name containerd's shims have (the 15 bytes the kernel keeps).
fn set_process_name() {
    const NAME: &std::ffi::CStr = c"containerd-shim";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which NAME is.
    unsafe { libc::prctl(libc::PR_SET_NAME, NAME.as_ptr()) };
}

fn main() -> ExitCode {
    let flags = match Flags::parse(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-berth-v2: {e}");
            return ExitCode::from(2);
        }
    };
    if flags.version {
        println!(
            "containerd-shim-berth-v2:\n  Version: {}\n  Task API: containerd.task.v2, containerd.task.v3",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if flags.info {
        return match info::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("containerd-shim-berth-v2: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = match flags.action.as_deref() {
        Some("start") => start::run(&flags),
        Some("delete") => cleanup::run(&flags),
        Some(other) => Err(anyhow::anyhow!(
            "unknown action {other:?} (expected start or delete)"
        )),
        None => {
            set_process_name();
            init_logging(flags.debug);
            serve::run(flags)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("containerd-shim-berth-v2: {e:#}");
            ExitCode::FAILURE
        }
    }
}
