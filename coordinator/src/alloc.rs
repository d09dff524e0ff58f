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

/// Trims the heap after runs end, on the blocking pool (a trim walks the free lists of
/// every arena: milliseconds on a large heap), at most once per [`TRIM_EVERY`].
#[derive(Debug)]
pub struct Trimmer {
    last: Option<Instant>,
    running: Arc<AtomicBool>,
}

impl Trimmer {
    pub fn new() -> Self {
        Trimmer {
            last: None,
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Called when a run's buffers have been freed: trims unless one ran just now or
    /// still runs.
    pub fn run_ended(&mut self) {
        if self.last.is_some_and(|t| t.elapsed() < TRIM_EVERY)
            || self.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.last = Some(Instant::now());
        let running = Arc::clone(&self.running);
        tokio::task::spawn_blocking(move || {
            trim();
            running.store(false, Ordering::Release);
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
