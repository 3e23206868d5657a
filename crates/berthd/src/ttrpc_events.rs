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
    started: std::time::SystemTime,
    release: tokio::time::Instant,
}

impl Forwarder {
    fn new(exchange: Arc<Exchange>) -> Self {
        Forwarder {
            exchange,
            started: std::time::SystemTime::now(),
            release: tokio::time::Instant::now() + RECOVERED_EXIT_DELAY,
        }
    }

    /// Whether the event was made before this daemon started.
    fn made_while_down(&self, ts: Option<&prost_types::Timestamp>) -> bool {
        let Some(ts) = ts else { return false };
        let started = self
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = i64::try_from(started.as_secs()).unwrap_or(i64::MAX);
        (ts.seconds, ts.nanos) < (secs, started.subsec_nanos() as i32)
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
        let at = |t: std::time::SystemTime| {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
            prost_types::Timestamp {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }
        };
        let before = at(f.started - std::time::Duration::from_secs(3));
        let after = at(f.started + std::time::Duration::from_millis(1));
        assert!(f.made_while_down(Some(&before)));
        assert!(!f.made_while_down(Some(&after)));
        assert!(!f.made_while_down(None));
    }
}
