//! Gives the heap a finished map run freed back to the operating system.
//!
//! A run's children go through many short-lived allocations (deliveries, outcomes,
//! events) interleaved with the long-lived records they leave, and its end renders the
//! ResultWriter files and the run's archive into large buffers. glibc keeps most of that
//! freed memory mapped: after a 50,000-child run the coordinator's RSS was 359 MB, and
//! 115 MB after `malloc_trim` (B4, BENCHMARKS.md). Without trimming, RSS only grows with
//! the largest run ever held, which is what a memory limit in Kubernetes sees.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Trims at most this often, so a stream of small runs ending costs little.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Trims the heap after runs end (or finish reading their items), on the blocking pool (a
/// trim walks the free lists of every arena: milliseconds on a large heap), at most once
/// per [`TRIM_EVERY`]; one asked for sooner is put off to the end of that interval rather
/// than dropped, so the last of a burst of runs is trimmed after too.
#[derive(Debug)]
pub struct Trimmer {
    last: Option<Instant>,
    /// A trim is running or scheduled.
    busy: Arc<AtomicBool>,
}

impl Trimmer {
    pub fn new() -> Self {
        Trimmer {
            last: None,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Called when a run's large buffers have been freed.
    pub fn run_ended(&mut self) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let wait = self
            .last
            .map(|t| TRIM_EVERY.saturating_sub(t.elapsed()))
            .unwrap_or_default();
        self.last = Some(Instant::now() + wait);
        let busy = Arc::clone(&self.busy);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = tokio::task::spawn_blocking(trim).await;
            busy.store(false, Ordering::Release);
        });
    }
}

impl Default for Trimmer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes glibc's own arena locks; any thread may call it at any time,
    // and it only returns free pages, never memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's, macOS's) give memory back on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
