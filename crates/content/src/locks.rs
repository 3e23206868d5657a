//! In-process locks on ingests: one writer at a time per ref, and no abort or clean-up under a
//! live writer. Keys are ingest directory names, so a directory whose ref is unreadable can be
//! locked too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `Progress::offset` before the writer has measured the data it resumes.
const UNKNOWN: u64 = u64::MAX;

/// What a live writer has written, including bytes still in its buffer, so that
/// `ContentStore::status` does not lag behind `Writer::status`.
#[derive(Debug)]
pub(crate) struct Progress {
    offset: AtomicU64,
    updated_nanos: AtomicU64,
}

impl Progress {
    pub(crate) fn set(&self, offset: u64, updated: SystemTime) {
        let nanos = updated
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        self.updated_nanos
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.offset.store(offset, Ordering::Release);
    }

    fn get(&self) -> Option<(u64, SystemTime)> {
        let offset = self.offset.load(Ordering::Acquire);
        if offset == UNKNOWN {
            return None;
        }
        let updated = UNIX_EPOCH + Duration::from_nanos(self.updated_nanos.load(Ordering::Relaxed));
        Some((offset, updated))
    }
}

/// The set of locked ingests.
#[derive(Debug, Default)]
pub(crate) struct Locks {
    // A std Mutex, not tokio's: this crate is synchronous, and the lock is held only to insert,
    // remove or look up one key, never across file I/O or an await.
    held: Mutex<HashMap<String, Arc<Progress>>>,
}

impl Locks {
    fn held(&self) -> MutexGuard<'_, HashMap<String, Arc<Progress>>> {
        // Poisoning cannot leave the map half-updated (every critical section is one map call),
        // so a panic elsewhere must not wedge every ingest.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks `key`, or `None` if it is held.
    /// [`Locks::try_lock`], retried for a short while (1, 2, 4 … 256 ms, ~0.5 s in all) as
    /// containerd's store does: a client that closed a writer and reopens the ref at once (to
    /// resume, truncate or abort) finds the old writer still letting go on the server's side.
    pub(crate) fn lock_soon(self: &Arc<Self>, key: &str) -> Option<LockGuard> {
        for i in 0..10 {
            if let Some(g) = self.try_lock(key) {
                return Some(g);
            }
            if i < 9 {
                std::thread::sleep(std::time::Duration::from_millis(1 << i));
            }
        }
        None
    }

    pub(crate) fn try_lock(self: &Arc<Self>, key: &str) -> Option<LockGuard> {
        let progress = Arc::new(Progress {
            offset: AtomicU64::new(UNKNOWN),
            updated_nanos: AtomicU64::new(0),
        });
        let mut held = self.held();
        if held.contains_key(key) {
            return None;
        }
        held.insert(key.to_string(), progress.clone());
        Some(LockGuard {
            locks: self.clone(),
            key: key.to_string(),
            progress,
        })
    }

    /// The progress a live writer of `key` reports, if any.
    pub(crate) fn progress(&self, key: &str) -> Option<(u64, SystemTime)> {
        self.held().get(key).and_then(|p| p.get())
    }
}

/// A held lock; dropping it releases the key.
#[derive(Debug)]
pub(crate) struct LockGuard {
    locks: Arc<Locks>,
    key: String,
    progress: Arc<Progress>,
}

impl LockGuard {
    pub(crate) fn progress(&self) -> &Progress {
        &self.progress
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.locks.held().remove(&self.key);
    }
}
