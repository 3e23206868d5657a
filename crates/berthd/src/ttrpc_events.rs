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

/// Forwards into the exchange. Events a shim could not deliver while the daemon was down (made
/// before it started) wait until [`RECOVERED_EXIT_DELAY`] after the start, as the start-up's
/// own reports of recovered exits do, so that clients subscribing right after a restart see
/// them; live events pass at once.
struct Forwarder {
    exchange: Arc<Exchange>,
    started: prost_types::Timestamp,
    release: tokio::time::Instant,
}

impl Forwarder {
    fn new(exchange: Arc<Exchange>) -> Self {
        Forwarder {
            exchange,
            started: crate::pb::sys_ts(std::time::SystemTime::now()).unwrap_or_default(),
            release: tokio::time::Instant::now() + RECOVERED_EXIT_DELAY,
        }
    }

    /// Whether the event was made before this daemon started.
    fn made_while_down(&self, ts: Option<&prost_types::Timestamp>) -> bool {
        ts.is_some_and(|t| (t.seconds, t.nanos) < (self.started.seconds, self.started.nanos))
    }
}

impl Events for Forwarder {
    async fn forward(&self, _ctx: Context, req: ForwardRequest) -> Result<(), Status> {
        let env = req
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope: required"))?;
        berth_store::validate_identifier(&env.namespace)
            .map_err(|e| Status::invalid_argument(format!("envelope.namespace: {e}")))?;
        validate_topic(&env.topic)
            .map_err(|e| Status::invalid_argument(format!("envelope.{e}")))?;
        if self.made_while_down(env.timestamp.as_ref()) {
            tokio::time::sleep_until(self.release).await;
        }
        self.exchange.forward(Envelope {
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
        .register(EventsServer::new(Forwarder::new(exchange)))
        .peer_check(PeerCheck::SameUser)
        .start(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_events_made_before_the_start_are_held() {
        let f = Forwarder::new(Arc::new(Exchange::default()));
        let at = |secs: i64, nanos: i32| prost_types::Timestamp {
            seconds: f.started.seconds + secs,
            nanos: f.started.nanos + nanos,
        };
        let before = at(-3, 0);
        let after = at(0, 1);
        assert!(f.made_while_down(Some(&before)));
        assert!(!f.made_while_down(Some(&after)));
        assert!(!f.made_while_down(None));
    }
}
