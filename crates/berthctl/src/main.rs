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

fn main() {
    let cli = Cli::parse();
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
        match e.downcast_ref::<tonic::Status>() {
            Some(st) => eprintln!("berthctl: {} ({:?})", st.message(), st.code()),
            None => eprintln!("berthctl: {e:#}"),
        }
        std::process::exit(1);
    }
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
