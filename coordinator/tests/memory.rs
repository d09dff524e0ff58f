//! What a map run holds per child execution, counted by this test binary's allocator, so a
//! change that puts a struct or a `String` back into every child fails here rather than in
//! the next B5 benchmark (target: 64 bytes per pending item). The numbers are bytes
//! allocated, not timings: deterministic for a given build.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use fleetmap_coordinator::run::{ChildSpec, MapRun, RunId, Tolerance};
use fleetmap_protocol::{AnomalyCounts, ItemStatus, OutcomeMessage};

/// The system allocator, keeping the net count of bytes allocated.
struct Counting;

static NET: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        NET.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NET.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn net() -> isize {
    NET.load(Ordering::Relaxed)
}

#[test]
fn a_pending_child_costs_under_64_bytes_and_a_finished_one_its_record() {
    const N: u32 = 50_000;
    let before = net();
    // B4/B5's shape: one CSV-listed object per child.
    let specs: Vec<ChildSpec> = (0..N)
        .map(|i| ChildSpec {
            bucket: "fleetmap-data".into(),
            key: format!("b4/noop/object-{i:06}.csv"),
            row_groups: None,
            first_index: 0,
            items: None,
        })
        .collect();
    let mut run = MapRun::new(RunId("r".into()), None, 10_000, Tolerance::default(), 0);
    run.set_children(specs, 0);
    run.open(1);
    // The specs were moved in and freed; what remains is the run's own.
    let pending = (net() - before) / N as isize;
    assert!(pending <= 64, "{pending} bytes per pending child");

    let mut finished = 0;
    while finished < N {
        let batch: Vec<(u32, u32)> = std::iter::from_fn(|| run.next_dispatch(5)).collect();
        for (execution, attempt) in batch {
            let o = OutcomeMessage {
                run_id: "r".into(),
                execution,
                attempt,
                worker_id: "noop-1".into(),
                started_ms: 6,
                finished_ms: 7,
                bytes_read: 0,
                status: ItemStatus::Succeeded {
                    readings: 0,
                    anomalies: AnomalyCounts::default(),
                    devices: vec![],
                    devices_truncated: false,
                    result_key: format!("fm/r/{execution:06}-1.jsonl"),
                },
            };
            run.apply_outcome(&o, 8);
            finished += 1;
        }
    }
    // A finished child keeps its record (worker, times, counts, result key) but no stored
    // history: an ordinary one is rebuilt from the record (~480 bytes measured).
    let done = (net() - before) / N as isize;
    assert!(done <= 640, "{done} bytes per finished child");
    assert_eq!(
        run.history(7).len(),
        4,
        "Queued, Dispatched, Started, Succeeded"
    );
    eprintln!("{pending} bytes per pending child, {done} per finished child");
}
