//! Scheduling of garbage collection: debounced after deletions, synchronous on request
//! (`sync` deletes), never two at once.

use std::sync::Arc;
use std::time::Duration;

use berth_store::Store;
use tokio::sync::{Mutex, Notify};
use tonic::Status;

use crate::errors::to_status;

/// Quiet time after the last deletion before a scheduled collection runs.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Ingests untouched this long, and held by no lease, are collected.
const INGEST_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Runs garbage collection for the daemon.
#[derive(Debug, Clone)]
pub(crate) struct Collector {
    store: Store,
    wake: Arc<Notify>,
    // tokio Mutex: held across the collection's await, so runs never overlap.
    running: Arc<Mutex<()>>,
}

impl Collector {
    /// Starts the background scheduler.
    pub(crate) fn start(store: Store) -> Collector {
        let c = Collector {
            store,
            wake: Arc::new(Notify::new()),
            running: Arc::new(Mutex::new(())),
        };
        let bg = c.clone();
        tokio::spawn(async move {
            loop {
                bg.wake.notified().await;
                // Debounce: keep waiting while deletions keep coming.
                while tokio::time::timeout(DEBOUNCE, bg.wake.notified())
                    .await
                    .is_ok()
                {}
                if let Err(e) = bg.run_now().await {
                    tracing::error!(error = %e, "garbage collection failed");
                }
            }
        });
        c
    }

    /// Asks for a collection soon.
    pub(crate) fn schedule(&self) {
        self.wake.notify_one();
    }

    /// After a removal: collects now and waits for it when the call asked (`sync`), else soon.
    pub(crate) async fn after_removal(&self, sync: bool) -> Result<(), Status> {
        if sync {
            return self.run_now().await;
        }
        self.schedule();
        Ok(())
    }

    /// Collects now and waits for it.
    pub(crate) async fn run_now(&self) -> Result<(), Status> {
        let _running = self.running.lock().await;
        let store = self.store.clone();
        let stats = tokio::task::spawn_blocking(move || store.collect_garbage(INGEST_MAX_AGE))
            .await
            .map_err(|e| Status::internal(format!("garbage collection task: {e}")))?
            .map_err(to_status)?;
        self.store.flush().await.map_err(to_status)?;
        tracing::info!(
            leases = stats.leases,
            content_records = stats.content_records,
            blobs = stats.blobs,
            ingests = stats.ingests,
            snapshots = stats.snapshots,
            lease_resources = stats.lease_resources,
            duration_ms = stats.duration.as_millis() as u64,
            "garbage collected"
        );
        Ok(())
    }
}
