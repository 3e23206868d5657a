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

/// The environment variable through which berthd names itself to the warm shims it starts.
pub(crate) const WARM_DAEMON_PID_ENV: &str = "BERTH_WARM_DAEMON_PID";

/// A warm shim that no task adopted ends with the daemon that started it: nobody else would
/// ever use it (a restarted daemon starts its own).
fn end_when_unadopted_daemon_exits(shim: Arc<Shim>) {
    let daemon = std::env::var(WARM_DAEMON_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        .and_then(|p| berth_runtime::pidfd::Pidfd::open(p).ok());
    let Some(daemon) = daemon else {
        tracing::warn!("a warm shim without its daemon's pid: it ends only on Shutdown");
        return;
    };
    tokio::spawn(async move {
        // SAFETY: the pidfd is owned by the AsyncFd and stays open, the same descriptor,
        // until it drops.
        if let Ok(fd) = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(daemon, tokio::io::Interest::READABLE)
        } {
            let _ = fd.readable().await;
        }
        if shim.is_warm() {
            tracing::info!("the daemon of this warm shim is gone; exiting");
            shim.request_shutdown();
        }
    });
}

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
    if flags.warm {
        shim.set_warm();
        end_when_unadopted_daemon_exits(shim.clone());
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
