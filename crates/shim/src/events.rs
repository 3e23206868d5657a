//! Task events, forwarded in order to the daemon's ttrpc `Events/Forward` endpoint
//! (`TTRPC_ADDRESS`). One task sends them one at a time; a transport failure reconnects and
//! retries the same event with backoff, so an event is never skipped and never overtaken.

use std::path::PathBuf;
use std::time::Duration;

use berth_api::containerd::services::events::ttrpc::v1::events_ttrpc::EventsClient;
use berth_api::containerd::services::events::ttrpc::v1::{Envelope, ForwardRequest};
use berth_ttrpc::{CallOptions, Client, Code};
use prost::{Message, Name};
use tokio::sync::{mpsc, watch};

/// How long the connection to the daemon stays open after the last event.
const IDLE_HANGUP: Duration = Duration::from_secs(1);

/// Queues events for the daemon.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    /// The namespace events are published in (a warm shim learns it from its first Create).
    namespace: std::sync::Arc<std::sync::Mutex<String>>,
    tx: mpsc::UnboundedSender<Envelope>,
    /// Events queued and not yet delivered (or given up on).
    pending: watch::Sender<usize>,
}

/// Transport errors after which the event is retried forever; anything else is the daemon
/// refusing this event, retried a few times and then dropped.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
    )
}

impl Publisher {
    /// Starts the forwarding task. `address` is the daemon's ttrpc socket (a path, or `unix://`).
    pub(crate) fn start(address: String, namespace: String) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let (pending, _) = watch::channel(0usize);
        let p = Publisher {
            namespace: std::sync::Arc::new(std::sync::Mutex::new(namespace)),
            tx,
            pending: pending.clone(),
        };
        let path = PathBuf::from(address.strip_prefix("unix://").unwrap_or(&address));
        tokio::spawn(forward(path, rx, pending));
        p
    }

    /// Publishes in `namespace` from now on.
    pub(crate) fn set_namespace(&self, namespace: &str) {
        *self.namespace.lock().unwrap_or_else(|e| e.into_inner()) = namespace.to_string();
    }

    /// Queues `event` under `topic`, stamped now.
    pub(crate) fn publish<M: Message + Name>(&self, topic: &str, event: &M) {
        let env = Envelope {
            timestamp: Some(crate::sys::timestamp(std::time::SystemTime::now())),
            namespace: self
                .namespace
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            topic: topic.to_string(),
            event: Some(prost_types::Any {
                type_url: M::full_name(),
                value: event.encode_to_vec(),
            }),
        };
        tracing::debug!(topic, "event queued");
        self.pending.send_modify(|n| *n += 1);
        if self.tx.send(env).is_err() {
            self.pending.send_modify(|n| *n -= 1);
            tracing::warn!(topic, "event forwarder is gone; event dropped");
        }
    }

    /// Waits until every queued event was delivered, at most `limit`. False on timeout.
    pub(crate) async fn flush(&self, limit: Duration) -> bool {
        let mut rx = self.pending.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

async fn forward(
    path: PathBuf,
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    pending: watch::Sender<usize>,
) {
    let mut client: Option<EventsClient> = None;
    loop {
        let env = match client {
            // Connected: hang up when idle, so an idle shim holds no connection buffers.
            Some(_) => match tokio::time::timeout(IDLE_HANGUP, rx.recv()).await {
                Ok(Some(env)) => env,
                Ok(None) => return,
                Err(_) => {
                    client = None;
                    crate::sys::release_idle_memory();
                    continue;
                }
            },
            None => match rx.recv().await {
                Some(env) => env,
                None => return,
            },
        };
        let opts = CallOptions::with_timeout(Duration::from_secs(10))
            .metadata("containerd-namespace-ttrpc", env.namespace.clone());
        let req = ForwardRequest {
            envelope: Some(env),
        };
        let mut backoff = Duration::from_millis(20);
        let mut refusals = 0;
        loop {
            let c = match &client {
                Some(c) => c.clone(),
                None => match Client::connect(&path).await {
                    Ok(c) => {
                        let c = EventsClient::new(c);
                        client = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::debug!(path = %path.display(), error = %e, "connecting to the events endpoint");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            match c.forward(&opts, &req).await {
                Ok(()) => break,
                Err(st) if transient(st.code()) => {
                    tracing::debug!(error = %st, "forwarding an event; retrying");
                    client = None;
                }
                Err(st) => {
                    refusals += 1;
                    if refusals >= 5 {
                        tracing::warn!(error = %st, "the daemon refused an event; dropped");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}
