//! `berthd`: the Berth daemon. Serves the containerd v1 API over gRPC on a unix socket.

mod config;
mod errors;
mod events;
mod gc;
mod mount;
mod plugins;
mod proxy_snapshotter;
mod pull;
mod runtime;
mod server;
mod services;
mod telemetry;
mod trim;
mod ttrpc_events;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(name = "berthd", version = services::version_string(), about = "Berth container supervisor daemon")]
struct Cli {
    /// Configuration file (default: /etc/berth/config.toml if it exists, else built-in defaults).
    #[arg(short, long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Persistent data directory (overrides `root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Runtime state directory (overrides `state`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// gRPC unix socket path (overrides `grpc.address`).
    #[arg(short, long)]
    address: Option<PathBuf>,
    /// Log level or filter (overrides `log.level`).
    #[arg(short, long)]
    log_level: Option<String>,
    /// Log format (overrides `log.format`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print the default configuration, with comments.
    Default,
    /// Print the configuration the daemon would run with (file + flags), validated.
    Dump,
}

fn effective_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(r) = &cli.root {
        cfg.root = r.clone();
    }
    if let Some(s) = &cli.state {
        cfg.state = s.clone();
    }
    if let Some(a) = &cli.address {
        cfg.grpc.address = a.clone();
    }
    if let Some(l) = &cli.log_level {
        cfg.log.level = l.clone();
    }
    if let Some(f) = cli.log_format {
        cfg.log.format = f;
    }
    cfg.check_overrides()?;
    Ok(cfg)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("berthd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Command::Config {
            action: ConfigAction::Default,
        }) => {
            print!("{}", config::DEFAULT_CONFIG);
            return Ok(());
        }
        Some(Command::Config {
            action: ConfigAction::Dump,
        }) => {
            let cfg = effective_config(&cli)?;
            println!("{cfg:#?}");
            return Ok(());
        }
        None => {}
    }
    let cfg = effective_config(&cli)?;
    trim::configure_allocator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berthd")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(server::run(cfg))
}
