//! The long-lived shim: a child subreaper serving the task API on the socket `start` bound, on a
//! single-threaded tokio runtime, until Shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_api::containerd::task::{v2, v3};
use berth_ttrpc::{PeerCheck, Server};

use crate::events::Publisher;
use crate::flags::Flags;
use crate::reaper::Reaper;
use crate::service::{TaskV2, TaskV3};
use crate::start::{inherited_listener, state_dir};
use crate::sys;
use crate::task::Shim;

pub(crate) fn run(flags: Flags) -> anyhow::Result<()> {
    sys::set_child_subreaper().context("becoming a child subreaper")?;
    let listener = inherited_listener()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(serve(flags, listener))
}

async fn serve(flags: Flags, listener: std::os::unix::net::UnixListener) -> anyhow::Result<()> {
    let reaper = Arc::new(Reaper::default());
    let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .context("handling SIGCHLD")?;
    tokio::spawn(reaper.clone().run(sigchld));

    let events_address = std::env::var("TTRPC_ADDRESS")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| format!("{}.ttrpc", flags.address));
    let publisher = Publisher::start(events_address, flags.namespace.clone());
    let shim = Shim::new(
        flags.namespace.clone(),
        state_dir(&flags.address).join("runc"),
        publisher.clone(),
        reaper,
    );
    if let Some(sock) = &flags.socket {
        shim.own_socket(sock.clone());
    }
    let v2 = TaskV2(shim.clone());
    let server = Server::new()
        .register(v2::task_ttrpc::TaskServer::new(v2.clone()))
        .register(v3::task_ttrpc::TaskServer::new(TaskV3(v2)))
        .peer_check(PeerCheck::SameUser)
        .start(tokio::net::UnixListener::from_std(listener).context("serving the socket")?);
    tracing::info!(id = %flags.id, namespace = %flags.namespace, "shim serving");

    let mut down = shim.shutdown_requested();
    let _ = down.wait_for(|v| *v).await;
    // Let the Shutdown answer go out, then stop serving.
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.shutdown(Duration::from_millis(500)).await;
    if !publisher.flush(Duration::from_secs(5)).await {
        tracing::warn!("exiting with undelivered events");
    }
    shim.release_socket();
    tracing::info!("shim exiting");
    Ok(())
}
