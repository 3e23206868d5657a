//! The ttrpc endpoint shims forward their events to (`<grpc address>.ttrpc`, the shim's
//! `TTRPC_ADDRESS`): `containerd.services.events.ttrpc.v1.Events/Forward`.

use std::path::Path;
use std::sync::Arc;

use berth_api::containerd::services::events::ttrpc::v1::ForwardRequest;
use berth_api::containerd::services::events::ttrpc::v1::events_ttrpc::{Events, EventsServer};
use berth_api::containerd::services::events::v1::Envelope;
use berth_ttrpc::{Context, PeerCheck, Server, ServerHandle, Status};

use crate::events::{Exchange, validate_topic};
use crate::runtime::RECOVERED_EXIT_DELAY;

/// The exchange, and when the daemon's first moments are over: until then forwarded events
/// wait, so that clients subscribing right after a restart see the exits shims were holding
/// (the start-up's own reports of recovered exits wait the same [`RECOVERED_EXIT_DELAY`]).
struct Forwarder(Arc<Exchange>, tokio::time::Instant);

impl Events for Forwarder {
    async fn forward(&self, _ctx: Context, req: ForwardRequest) -> Result<(), Status> {
        let env = req
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope: required"))?;
        berth_store::validate_identifier(&env.namespace)
            .map_err(|e| Status::invalid_argument(format!("envelope.namespace: {e}")))?;
        validate_topic(&env.topic)
            .map_err(|e| Status::invalid_argument(format!("envelope.{e}")))?;
        tokio::time::sleep_until(self.1).await;
        self.0.forward(Envelope {
            timestamp: env.timestamp,
            namespace: env.namespace,
            topic: env.topic,
            event: env.event,
        });
        Ok(())
    }
}

/// Serves the events endpoint; only peers running as this daemon's user may connect.
pub(crate) fn start(path: &Path, exchange: Arc<Exchange>) -> anyhow::Result<ServerHandle> {
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let listener = crate::server::bind_unix(path, uid, gid, "ttrpc address")?;
    Ok(Server::new()
        .register(EventsServer::new(Forwarder(
            exchange,
            tokio::time::Instant::now() + RECOVERED_EXIT_DELAY,
        )))
        .peer_check(PeerCheck::SameUser)
        .start(listener))
}
