//! runc's flags and sub-commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "berth-runc",
    about = "Berth's OCI runtime (runc-compatible)",
    disable_version_flag = true,
    subcommand_required = false
)]
pub(crate) struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/berth-runc")]
    pub(crate) root: PathBuf,
    /// Log file for errors.
    #[arg(long, global = true)]
    pub(crate) log: Option<PathBuf>,
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    #[arg(long, global = true)]
    pub(crate) debug: bool,
    /// Accepted for compatibility; the systemd driver is not supported.
    #[arg(long = "systemd-cgroup", global = true)]
    pub(crate) systemd_cgroup: bool,
    /// Accepted for compatibility with runc's command line; checkpointing is not supported.
    #[arg(long, global = true, hide = true)]
    pub(crate) criu: Option<String>,
    /// Accepted for compatibility ("false" or "auto"); rootless mode is not supported.
    #[arg(long, global = true, hide = true, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub(crate) rootless: Option<String>,
    /// Print the version (runc's format: `<name> version X`, `spec: Y`).
    #[arg(short = 'v', long)]
    pub(crate) version: bool,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a container (its process waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Create and start a container.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run a new process in a running container.
    Exec(ExecArgs),
    /// Send a signal to the container's init (or all its processes).
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Output the state of a container.
    State { id: String },
    /// List containers.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Processes running in a container.
    Ps {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        id: String,
        /// Arguments for ps(1) in table format.
        #[arg(trailing_var_arg = true)]
        ps_args: Vec<String>,
    },
    /// Suspend every process of the container.
    Pause { id: String },
    /// Resume a paused container.
    Resume { id: String },
    /// Update resource limits.
    Update(UpdateArgs),
    /// Container events and statistics.
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Checkpoint a running container (not supported: berth-runc has no CRIU support).
    Checkpoint {
        /// runc's flags and the container id, accepted so the error names the reason.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Restore a container from a checkpoint (not supported: berth-runc has no CRIU support).
    Restore {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Features of this runtime (runtime-spec features JSON).
    Features,
    /// Write a default config.json.
    Spec {
        #[arg(short, long)]
        bundle: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    #[arg(short, long, default_value = ".")]
    pub(crate) bundle: PathBuf,
    #[arg(long = "pid-file")]
    pub(crate) pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub(crate) console_socket: Option<PathBuf>,
    #[arg(long = "no-pivot")]
    pub(crate) no_pivot: bool,
    #[arg(long = "no-new-keyring")]
    pub(crate) no_new_keyring: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub(crate) preserve_fds: u32,
    pub(crate) id: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    /// process.json (a runtime-spec Process).
    #[arg(short, long)]
    pub(crate) process: Option<PathBuf>,
    #[arg(short, long)]
    pub(crate) detach: bool,
    #[arg(long = "pid-file")]
    pub(crate) pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub(crate) console_socket: Option<PathBuf>,
    #[arg(short, long)]
    pub(crate) tty: bool,
    #[arg(short, long)]
    pub(crate) env: Vec<String>,
    #[arg(long)]
    pub(crate) cwd: Option<PathBuf>,
    /// `uid[:gid]`
    #[arg(short, long)]
    pub(crate) user: Option<String>,
    #[arg(long = "additional-gids", short = 'g')]
    pub(crate) additional_gids: Vec<u32>,
    #[arg(long = "no-new-privs")]
    pub(crate) no_new_privs: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub(crate) preserve_fds: u32,
    /// Capabilities added to the process (bounding, effective, permitted and ambient).
    #[arg(short = 'c', long = "cap")]
    pub(crate) cap: Vec<String>,
    /// Exec into a paused container too.
    #[arg(long = "ignore-paused")]
    pub(crate) ignore_paused: bool,
    /// The container's sub-cgroup to run in (`path`, or `controller:path` on cgroup v1).
    #[arg(long = "cgroup")]
    pub(crate) cgroup: Vec<String>,
    pub(crate) id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct UpdateArgs {
    /// LinuxResources JSON file ("-" for stdin).
    #[arg(short, long)]
    pub(crate) resources: Option<PathBuf>,
    #[arg(long)]
    pub(crate) memory: Option<String>,
    #[arg(long = "memory-swap")]
    pub(crate) memory_swap: Option<String>,
    #[arg(long = "memory-reservation")]
    pub(crate) memory_reservation: Option<String>,
    #[arg(long = "kernel-memory")]
    pub(crate) kernel_memory: Option<String>,
    #[arg(long = "cpu-shares")]
    pub(crate) cpu_shares: Option<u64>,
    #[arg(long = "cpu-quota", allow_hyphen_values = true)]
    pub(crate) cpu_quota: Option<i64>,
    #[arg(long = "cpu-period")]
    pub(crate) cpu_period: Option<u64>,
    #[arg(long = "cpu-rt-period")]
    pub(crate) cpu_rt_period: Option<u64>,
    #[arg(long = "cpu-rt-runtime", allow_hyphen_values = true)]
    pub(crate) cpu_rt_runtime: Option<i64>,
    #[arg(long = "cpuset-cpus")]
    pub(crate) cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    pub(crate) cpuset_mems: Option<String>,
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pub(crate) pids_limit: Option<i64>,
    #[arg(long = "blkio-weight")]
    pub(crate) blkio_weight: Option<u16>,
    pub(crate) id: String,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The command lines containerd's Go shim (go-runc) produces.
    #[test]
    fn go_runc_command_lines() {
        let base = [
            "berth-runc",
            "--root",
            "/run/containerd/runc/k8s.io",
            "--log",
            "/b/log.json",
            "--log-format",
            "json",
        ];
        let parse = |rest: &[&str]| {
            let argv: Vec<&str> = base.iter().chain(rest).copied().collect();
            Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{rest:?}: {e}"))
        };
        let c = parse(&[
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "--console-socket",
            "/tmp/c.sock",
            "--no-pivot",
            "--no-new-keyring",
            "--preserve-fds",
            "2",
            "id1",
        ]);
        assert!(
            matches!(c.command, Some(Command::Create(ref a)) if a.id == "id1" && a.preserve_fds == 2 && a.no_pivot)
        );
        parse(&["start", "id1"]);
        let c = parse(&[
            "exec",
            "--process",
            "/tmp/p.json",
            "--detach",
            "--pid-file",
            "/b/e.pid",
            "id1",
        ]);
        assert!(matches!(c.command, Some(Command::Exec(ref a)) if a.detach && a.args.is_empty()));
        let c = parse(&["kill", "--all", "id1", "9"]);
        assert!(
            matches!(c.command, Some(Command::Kill { all: true, ref signal, .. }) if signal == "9")
        );
        parse(&["delete", "--force", "id1"]);
        parse(&["update", "--resources", "-", "id1"]);
        parse(&["ps", "--format", "json", "id1"]);
        parse(&["events", "--stats", "id1"]);
        parse(&["pause", "id1"]);
        parse(&["--systemd-cgroup", "state", "id1"]);
        parse(&[
            "--rootless=false",
            "--criu",
            "/usr/sbin/criu",
            "list",
            "--format",
            "json",
        ]);
        let c = parse(&["exec", "id1", "sh", "-c", "echo -n hi"]);
        assert!(
            matches!(c.command, Some(Command::Exec(ref a)) if a.args == ["sh", "-c", "echo -n hi"])
        );
    }
}
