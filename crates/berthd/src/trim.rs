//! Gives freed heap back to the kernel once the daemon goes quiet.
//!
//! glibc keeps what a burst of work freed (an import, a pull, a hundred task creations spread
//! over the runtime's threads) in its per-thread arenas, so without this the idle footprint is
//! the high-water mark. `malloc_trim(0)` returns the free pages of every arena to the kernel;
//! it runs once per quiet spell, after the last call in flight ended and nothing new came for
//! [`QUIET`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// How long the daemon must stay without calls before it trims.
pub(crate) const QUIET: Duration = Duration::from_secs(1);

/// Wakes the trimming task; cheap to clone and to call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trimmer(Arc<Notify>);

impl Trimmer {
    /// Starts the task (inside the runtime).
    pub(crate) fn spawn() -> Trimmer {
        let t = Trimmer::default();
        let notify = t.0.clone();
        tokio::spawn(async move {
            loop {
                notify.notified().await;
                // Each new wake-up restarts the quiet period.
                while tokio::time::timeout(QUIET, notify.notified()).await.is_ok() {}
                trim();
            }
        });
        t
    }

    /// The daemon just went idle (or did a burst of work): trim after the next quiet period.
    pub(crate) fn idle(&self) {
        self.0.notify_one();
    }
}

/// Fixed allocator thresholds, set before any thread starts. glibc otherwise raises its trim
/// threshold to twice the largest block it ever unmapped, so after one import every arena keeps
/// megabytes of free space at its top for good (`malloc_trim` does not touch a thread arena's
/// top). Blocks up to [`MMAP_THRESHOLD`] stay in the heap, as a 1 MiB content chunk should.
pub(crate) fn configure_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Runs `open` (the metadata store's) with blocks over 128 KiB mapped on their own. sled 0.34
/// allocates 41 metric histograms of 512 KiB each when a database opens and, with metrics
/// compiled out, never writes them: as mappings of their own their pages are never touched,
/// where inside an arena the allocator's bookkeeping kept ~0.3 MB of them resident for good.
pub(crate) fn with_small_mmap_threshold<T>(open: impl FnOnce() -> T) -> T {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
    let opened = open();
    configure_allocator();
    opened
}

/// Blocks at least this large are mapped on their own (and unmapped when freed).
const MMAP_THRESHOLD: libc::c_int = 8 << 20;
/// Free space above this at the top of an arena goes back to the kernel at once.
const TRIM_THRESHOLD: libc::c_int = 256 << 10;

fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freed memory of a burst comes back: the resident set shrinks after the quiet period.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quiet_spell_returns_freed_heap() {
        fn rss_kb() -> u64 {
            let s = std::fs::read_to_string("/proc/self/status").unwrap();
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
                .unwrap()
        }
        let t = Trimmer::spawn();
        // Many small blocks (below the mmap threshold, so they live in an arena), touched,
        // then freed all but the last: free() alone cannot give them back.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 16 << 10]).collect();
        let keep = blocks.pop();
        drop(blocks);
        let before = rss_kb();
        t.idle();
        tokio::time::sleep(QUIET + Duration::from_millis(500)).await;
        let after = rss_kb();
        drop(keep);
        assert!(
            after + 32 * 1024 < before,
            "rss {before} kB before the trim, {after} kB after"
        );
    }
}
