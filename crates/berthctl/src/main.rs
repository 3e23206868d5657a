//! `berthctl`: a ctr-style command line client of `berthd`, speaking only the containerd API.

mod client;
mod cmd;
mod table;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "berthctl", version, about = "Command line client for berthd")]
pub(crate) struct Cli {
    /// Address of berthd's unix socket.
    #[arg(
        short,
        long,
        global = true,
        env = "BERTH_ADDRESS",
        default_value = "/run/berth/berthd.sock"
    )]
    address: String,
    /// Namespace to work in.
    #[arg(
        short,
        long,
        global = true,
        env = "BERTH_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// Timeout for connecting to berthd, in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    connect_timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the client and server versions.
    Version,
    /// Manage namespaces.
    #[command(alias = "ns", alias = "namespace")]
    #[command(subcommand)]
    Namespaces(cmd::namespaces::Action),
    /// Inspect the daemon's plugins.
    #[command(alias = "plugin")]
    #[command(subcommand)]
    Plugins(cmd::plugins::Action),
    /// Manage blobs in the content store.
    #[command(subcommand)]
    Content(cmd::content::Action),
    /// Manage images.
    #[command(alias = "image", alias = "i")]
    #[command(subcommand)]
    Images(cmd::images::Action),
    /// Manage snapshots.
    #[command(alias = "snapshot", alias = "snap")]
    Snapshots(cmd::snapshots::Args),
    /// Manage leases.
    #[command(alias = "lease")]
    #[command(subcommand)]
    Leases(cmd::leases::Action),
    /// Pull an image from a registry (server-side, with progress), and unpack it.
    Pull(cmd::pull::Args),
    /// Manage containers.
    #[command(alias = "container", alias = "c")]
    #[command(subcommand)]
    Containers(cmd::containers::ContainersAction),
    /// Manage tasks (running containers).
    #[command(alias = "task", alias = "t")]
    #[command(subcommand)]
    Tasks(cmd::containers::TasksAction),
    /// Run a container from an image (`--rm`, `-d`, `-t`, `-i`, ...); exits with its status.
    Run(cmd::run::Args),
    /// Push an image to a registry (server-side, with progress).
    Push(cmd::pull::PushArgs),
    /// Print events as they happen.
    #[command(alias = "event")]
    Events(cmd::events::Args),
}

/// What to type instead of a command berthctl does not have, for words docker, nerdctl and
/// ctr users reach for.
fn instead_of(word: &str) -> Option<&'static str> {
    Some(match word {
        "stop" | "kill" => "berthctl tasks kill ID (SIGTERM; -s KILL to force)",
        "start" | "create" => "berthctl run IMAGE ID (-d to detach)",
        "ps" => "berthctl tasks ls, or berthctl containers ls",
        "rm" | "remove" | "delete" => "berthctl containers rm ID (--force when its task runs)",
        "rmi" => "berthctl images rm NAME",
        "exec" => "berthctl tasks exec --exec-id NAME ID CMD...",
        "inspect" | "info" => "berthctl containers info ID",
        "pause" | "unpause" | "resume" => "berthctl tasks pause|resume ID",
        "tag" | "import" | "export" | "ls" => "berthctl images tag|import|export|ls",
        "top" => "berthctl tasks ps ID",
        "stats" => "berthctl tasks metrics ID",
        _ => return None,
    })
}

/// When this process began its work (for `run --timings`).
pub(crate) static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() {
    STARTED.get_or_init(std::time::Instant::now);
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // clap's guess for an unknown command is by spelling, and often odd ("stop" -> "t").
        Err(e) if e.kind() == clap::error::ErrorKind::InvalidSubcommand => {
            let word = e
                .get(clap::error::ContextKind::InvalidSubcommand)
                .map(|v| v.to_string())
                .unwrap_or_default();
            match instead_of(&word) {
                Some(hint) => eprintln!("berthctl: no command {word:?}; try: {hint}"),
                None => eprintln!("berthctl: no command {word:?} (berthctl --help lists them)"),
            }
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthctl: starting runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("berthctl: {}", describe(&e));
        std::process::exit(1);
    }
}

/// An error as one line: each cause once (a cause whose text the line already holds adds
/// nothing: I/O errors repeat their source), and a gRPC status as its message and code name
/// ("container \"c1\": not found (NotFound)") rather than tonic's field dump.
pub(crate) fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(st) => format!("{} ({:?})", st.message(), st.code()),
            None => cause.to_string(),
        };
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let conn = client::Conn::connect(&cli.address, &cli.namespace, cli.connect_timeout).await?;
    match cli.command {
        Command::Version => cmd::version::run(&conn).await,
        Command::Namespaces(a) => cmd::namespaces::run(&conn, a).await,
        Command::Plugins(a) => cmd::plugins::run(&conn, a).await,
        Command::Content(a) => cmd::content::run(&conn, a).await,
        Command::Images(a) => cmd::images::run(&conn, a).await,
        Command::Leases(a) => cmd::leases::run(&conn, a).await,
        Command::Snapshots(a) => cmd::snapshots::run(&conn, a).await,
        Command::Events(a) => cmd::events::run(&conn, a).await,
        Command::Pull(a) => cmd::pull::run(&conn, a).await,
        Command::Containers(a) => cmd::containers::containers(&conn, a).await,
        Command::Tasks(a) => cmd::containers::tasks(&conn, a).await,
        Command::Run(a) => {
            let code = cmd::run::run(&conn, &cli.namespace, a).await?;
            std::process::exit(code);
        }
        Command::Push(a) => cmd::pull::push(&conn, a).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
