//! `berthd`: the Berth daemon. Serves the containerd v1 API over gRPC on a unix socket.

mod cli;
mod config;
mod cri_host;
mod errors;
mod events;
mod gc;
mod h2_authority;
mod mount;
mod pb;
mod plugins;
mod pool;
mod pow;
mod proxy_snapshotter;
mod pull;
mod runtime;
mod server;
mod services;
mod telemetry;
mod trim;
mod ttrpc_events;

use anyhow::Context;

use crate::cli::{Cli, ConfigAction, Parsed};
use crate::config::Config;

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
    let cli = match cli::parse(
        std::env::args_os().skip(1),
        std::env::var_os("BERTH_CONFIG"),
    ) {
        Ok(Parsed::Run(cli)) => cli,
        Ok(Parsed::Help) => {
            print!("{}", cli::HELP);
            return;
        }
        Ok(Parsed::Version) => {
            println!("berthd {}", services::version_string());
            return;
        }
        Err(e) => {
            eprintln!("berthd: {e}\n\nFor more information, try 'berthd --help'.");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cli) {
        eprintln!("berthd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(ConfigAction::Default) => {
            print!("{}", config::DEFAULT_CONFIG);
            return Ok(());
        }
        Some(ConfigAction::Dump) => {
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
