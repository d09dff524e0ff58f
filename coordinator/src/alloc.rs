//! Gives the heap a finished map run (or a long listing) freed back to the operating system.
//!
//! A run's children go through many short-lived allocations (deliveries, outcomes,
//! events) interleaved with the long-lived records they leave, and its end renders the
//! ResultWriter files and the run's archive into large buffers. glibc keeps most of that
//! freed memory mapped: after a 50,000-child run the coordinator's RSS was 359 MB, and
//! 115 MB after `malloc_trim` (B4, BENCHMARKS.md). Without trimming, RSS only grows with
//! the largest run ever held, which is what a memory limit in Kubernetes sees.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Trims at most this often, so a stream of small runs ending costs little.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// A trim waits at least this long after it is asked for, so buffers still on their way
/// out (a listing page the API is rendering, a response being written) are freed first.
const SETTLE: Duration = Duration::from_millis(100);

/// Trims the heap after large buffers are freed (a run's items read, its results written
/// or archived, a long listing answered), on the blocking pool (a
/// trim walks the free lists of every arena: milliseconds on a large heap), at most once
/// per [`TRIM_EVERY`]. A request is never dropped: one made while a trim is scheduled is
/// covered by it; one made while a trim is already *running* (whose memory may have been
/// freed after the trim walked past it) schedules another, one interval later. Dropping
/// those left B5's thousand runs, which finish reading within a second of each other, at
/// ~16 KB per open run instead of ~7.5 KB, depending on how the burst met the trims.
#[derive(Debug)]
pub struct Trimmer {
    state: Arc<Mutex<State>>,
    every: Duration,
    settle: Duration,
    trim: fn(),
}

#[derive(Debug, Default)]
struct State {
    phase: Phase,
    last: Option<Instant>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Idle,
    /// A trim task is sleeping until its turn: a request now is covered by it.
    Scheduled,
    /// A trim is walking the heap now; `again` once it was asked for meanwhile.
    Running { again: bool },
}

impl Trimmer {
    pub fn new() -> Self {
        Self::with(trim, TRIM_EVERY, SETTLE)
    }

    fn with(trim: fn(), every: Duration, settle: Duration) -> Self {
        Trimmer {
            state: Arc::default(),
            every,
            settle,
            trim,
        }
    }

    /// Called when large buffers have been freed, or are about to be.
    pub fn freed(&mut self) {
        let wait = {
            let mut s = lock(&self.state);
            match s.phase {
                Phase::Running { .. } => {
                    s.phase = Phase::Running { again: true };
                    return;
                }
                Phase::Scheduled => return,
                Phase::Idle => s.phase = Phase::Scheduled,
            }
            s.last
                .map(|t| self.every.saturating_sub(t.elapsed()))
                .unwrap_or_default()
                .max(self.settle)
        };
        let (state, every, settle, trim) =
            (Arc::clone(&self.state), self.every, self.settle, self.trim);
        tokio::spawn(async move {
            let mut wait = wait;
            loop {
                tokio::time::sleep(wait).await;
                lock(&state).phase = Phase::Running { again: false };
                let _ = tokio::task::spawn_blocking(trim).await;
                let mut s = lock(&state);
                s.last = Some(Instant::now());
                if s.phase != (Phase::Running { again: true }) {
                    s.phase = Phase::Idle;
                    return;
                }
                s.phase = Phase::Scheduled;
                wait = every.max(settle);
            }
        });
    }
}

/// The state stays consistent whatever panicked while holding it (only flags and a time).
fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static TRIMS: AtomicUsize = AtomicUsize::new(0);

    /// A trim that takes a while, so a request can land while it runs.
    fn slow_trim() {
        TRIMS.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
    }

    fn trims() -> usize {
        TRIMS.load(Ordering::SeqCst)
    }

    async fn sleep_ms(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Real time, with margins of a quarter second around each step; the trims are at
    /// 0–0.2 s, 0.8–1.0 s and 1.6–1.8 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_during_a_trim_gets_a_trim_of_its_own_and_one_while_scheduled_does_not() {
        let mut t = Trimmer::with(slow_trim, Duration::from_millis(600), Duration::ZERO);
        t.freed();
        sleep_ms(50).await;
        // While the first trim runs: memory freed now may be behind its walk.
        t.freed();
        t.freed();
        sleep_ms(400).await;
        assert_eq!(trims(), 1, "the next trim waits out the interval");
        sleep_ms(800).await;
        assert_eq!(
            trims(),
            2,
            "the requests made during the first trim were kept"
        );
        // While one is scheduled (0.35 s from now), requests share it.
        t.freed();
        t.freed();
        t.freed();
        sleep_ms(600).await;
        assert_eq!(trims(), 3);
        sleep_ms(800).await;
        assert_eq!(trims(), 3, "nothing was asked for since");
    }
}
