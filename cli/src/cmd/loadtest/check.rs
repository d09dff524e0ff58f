//! The load test's pure core: what was measured, the invariants it must satisfy, and the
//! figures it prints. No I/O, so every invariant has a unit test that breaks it on purpose.

use fleetmap_coordinator::{RunDescription, RunStatus};

/// One reading of the coordinator's admission numbers (the values behind the gauges
/// `fleetmap_open_map_run_limit`, `fleetmap_open_map_runs`, `fleetmap_map_run_backlog_size`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Milliseconds since the first `start_run` call.
    pub t_ms: u64,
    pub open_map_run_limit: usize,
    pub open_map_runs: usize,
    pub backlog_size: usize,
    pub runs_finished: u64,
    pub executions_finished: u64,
    /// Child executions finished per second since the previous sample.
    pub executions_per_s: f64,
}

/// What the load test needs of one run's `DescribeMapRun`, kept in creation order.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub open_order: Option<u64>,
    /// When the run was opened (admitted) and when it became terminal, epoch ms.
    pub opened_ms: Option<i64>,
    pub stopped_ms: Option<i64>,
    pub executions_succeeded: u64,
    pub executions_total: u64,
}

impl From<&RunDescription> for RunRecord {
    fn from(d: &RunDescription) -> Self {
        let ms = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_millis())
        };
        RunRecord {
            id: d.map_run_id.clone(),
            status: d.status,
            error: d.error.clone(),
            open_order: d.open_order,
            // `startDate` falls back to the creation time while PENDING; only an opened run's
            // counts as its opening time.
            opened_ms: d.open_order.and(ms(&d.start_date)),
            stopped_ms: ms(&d.stop_date),
            executions_succeeded: d.execution_counts.succeeded,
            executions_total: d.execution_counts.total,
        }
    }
}

/// The invariants, by the names the report and the failure message use.
pub const OPEN_WITHIN_LIMIT: &str = "open map runs never above the limit";
pub const BACKLOG_DRAINED: &str = "backlog drained to 0";
pub const ALL_SUCCEEDED: &str = "every run SUCCEEDED with all its child executions";
pub const FIFO: &str = "runs opened in FIFO (creation) order";
pub const FINISHED_IN_TIME: &str = "every run finished within --timeout-secs";

/// A broken invariant and the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// Checks every invariant; an empty result means the load test passed.
///
/// `runs` are in creation order (the order `start_run` returned their ids); `items` is the
/// number of child executions each run must have succeeded; `finished` is false when the
/// sampling stopped (timeout, interrupt) before every run was terminal.
pub fn check(
    limit: usize,
    items: u64,
    samples: &[Sample],
    final_backlog: usize,
    runs: &[RunRecord],
    finished: bool,
) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut broken = |invariant, detail| v.push(Violation { invariant, detail });

    if !finished {
        let done = runs.iter().filter(|r| r.status.is_terminal()).count();
        broken(
            FINISHED_IN_TIME,
            format!("only {done} of {} runs were terminal", runs.len()),
        );
    }

    if let Some(s) = samples.iter().find(|s| s.open_map_runs > limit) {
        broken(
            OPEN_WITHIN_LIMIT,
            format!(
                "{} open map runs at t = {} ms, limit {limit}",
                s.open_map_runs, s.t_ms
            ),
        );
    } else if let Some(peak) = exact_peak_open(runs).filter(|&p| p > limit) {
        broken(
            OPEN_WITHIN_LIMIT,
            format!("{peak} runs were open at once by their open and stop times, limit {limit}"),
        );
    }

    let last = samples.last().map_or(0, |s| s.backlog_size);
    if last != 0 || final_backlog != 0 {
        broken(
            BACKLOG_DRAINED,
            format!(
                "{} runs still in the backlog at the end",
                last.max(final_backlog)
            ),
        );
    }

    let bad: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.status != RunStatus::Succeeded || r.executions_succeeded != items)
        .collect();
    if !bad.is_empty() {
        let shown: Vec<String> = bad
            .iter()
            .take(5)
            .map(|r| {
                format!(
                    "{} {}{} ({} of {items} child executions succeeded)",
                    r.id,
                    r.status.as_str(),
                    r.error
                        .as_deref()
                        .map(|e| format!(" {e}"))
                        .unwrap_or_default(),
                    r.executions_succeeded,
                )
            })
            .collect();
        let more = if bad.len() > shown.len() { ", …" } else { "" };
        broken(
            ALL_SUCCEEDED,
            format!(
                "{} of {} runs did not: {}{more}",
                bad.len(),
                runs.len(),
                shown.join("; ")
            ),
        );
    }

    if let Some(detail) = fifo_violation(runs) {
        broken(FIFO, detail);
    }
    v
}

/// The first place where opening order departs from creation order, if any.
fn fifo_violation(runs: &[RunRecord]) -> Option<String> {
    let mut prev: Option<(usize, u64)> = None;
    for (i, r) in runs.iter().enumerate() {
        let Some(order) = r.open_order else {
            return Some(format!("run #{} ({}) was never opened", i + 1, r.id));
        };
        if let Some((j, p)) = prev
            && order <= p
        {
            return Some(format!(
                "run #{} ({}) was created after run #{} but opened {} (open order {order} ≤ {p})",
                i + 1,
                r.id,
                j + 1,
                if order == p { "with it" } else { "before it" },
            ));
        }
        prev = Some((i, order));
    }
    None
}

/// The most runs open at the same moment, from each run's open and stop times: exact where
/// sampling every 100 ms could miss a short peak. A slot is released in the same step that
/// stops a run, and the next run opens after it, so at equal milliseconds closes count first.
///
/// `None` unless every opened run has a stop time: a run shows none until its ResultWriter
/// output is written, well after its slot was released, so an unfinished load test would
/// count released slots as still held.
pub fn exact_peak_open(runs: &[RunRecord]) -> Option<usize> {
    let mut events: Vec<(i64, i8)> = Vec::with_capacity(runs.len() * 2);
    for r in runs {
        let Some(open) = r.opened_ms else { continue };
        events.push((open, 1));
        events.push((r.stopped_ms?, -1));
    }
    if events.is_empty() {
        return None;
    }
    events.sort_unstable();
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, d) in events {
        now += i64::from(d);
        peak = peak.max(now);
    }
    usize::try_from(peak).ok()
}

/// The figures the load test prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub peak_open: usize,
    pub peak_backlog: usize,
    /// First sample after the last start at which the backlog was empty.
    pub backlog_drained_ms: Option<u64>,
    /// First sample at which every run was terminal.
    pub all_done_ms: Option<u64>,
    pub runs_per_s: Option<f64>,
    pub executions_per_s: Option<f64>,
    pub peak_executions_per_s: f64,
}

pub fn summarize(samples: &[Sample], runs: u64, starts_done_ms: u64) -> Summary {
    let peak_open = samples.iter().map(|s| s.open_map_runs).max().unwrap_or(0);
    let peak_backlog = samples.iter().map(|s| s.backlog_size).max().unwrap_or(0);
    let backlog_drained_ms = samples
        .iter()
        .find(|s| s.t_ms >= starts_done_ms && s.backlog_size == 0)
        .map(|s| s.t_ms);
    let done = samples.iter().find(|s| s.runs_finished >= runs);
    let all_done_ms = done.map(|s| s.t_ms);
    let per_s = |n: u64| {
        all_done_ms
            .filter(|&ms| ms > 0)
            .map(|ms| n as f64 * 1000.0 / ms as f64)
    };
    Summary {
        peak_open,
        peak_backlog,
        backlog_drained_ms,
        all_done_ms,
        runs_per_s: per_s(runs),
        executions_per_s: done.and_then(|s| per_s(s.executions_finished)),
        peak_executions_per_s: samples
            .iter()
            .map(|s| s.executions_per_s)
            .fold(0.0, f64::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_ms: u64, open: usize, backlog: usize, finished: u64) -> Sample {
        Sample {
            t_ms,
            open_map_run_limit: 2,
            open_map_runs: open,
            backlog_size: backlog,
            runs_finished: finished,
            executions_finished: finished * 2,
            executions_per_s: 0.0,
        }
    }

    fn run(i: u64, order: Option<u64>, opened: i64, stopped: i64) -> RunRecord {
        RunRecord {
            id: format!("run{i}"),
            status: RunStatus::Succeeded,
            error: None,
            open_order: order,
            opened_ms: order.map(|_| opened),
            stopped_ms: Some(stopped),
            executions_succeeded: 2,
            executions_total: 2,
        }
    }

    /// Four runs, limit 2: two open at once, the next opening as each closes.
    fn good() -> (Vec<Sample>, Vec<RunRecord>) {
        let samples = vec![
            sample(0, 0, 0, 0),
            sample(100, 2, 2, 0),
            sample(200, 2, 0, 2),
            sample(300, 0, 0, 4),
        ];
        let runs = vec![
            run(1, Some(1), 10, 150),
            run(2, Some(2), 10, 160),
            run(3, Some(3), 150, 250),
            run(4, Some(4), 160, 260),
        ];
        (samples, runs)
    }

    fn broken_names(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn a_clean_run_breaks_nothing() {
        let (samples, runs) = good();
        assert_eq!(check(2, 2, &samples, 0, &runs, true), vec![]);
    }

    #[test]
    fn a_sample_above_the_limit_is_caught() {
        let (mut samples, runs) = good();
        samples[1].open_map_runs = 3;
        let v = check(2, 2, &samples, 0, &runs, true);
        assert_eq!(broken_names(&v), vec![OPEN_WITHIN_LIMIT]);
        assert!(
            v[0].detail.contains("3 open map runs at t = 100 ms"),
            "{v:?}"
        );
    }

    #[test]
    fn a_peak_between_samples_is_caught_from_open_and_stop_times() {
        let (samples, mut runs) = good();
        // Run 3 opens 1 ms before run 1 stops: three open at once, unseen by any sample.
        runs[2].opened_ms = Some(149);
        let v = check(2, 2, &samples, 0, &runs, true);
        assert_eq!(broken_names(&v), vec![OPEN_WITHIN_LIMIT]);
        assert!(v[0].detail.starts_with("3 runs were open at once"), "{v:?}");
    }

    #[test]
    fn a_slot_handed_over_in_the_same_millisecond_is_not_a_peak() {
        let (_, runs) = good();
        assert_eq!(exact_peak_open(&runs), Some(2));
    }

    #[test]
    fn no_exact_peak_while_an_opened_run_has_not_stopped() {
        let (samples, mut runs) = good();
        runs[0].stopped_ms = None;
        runs[2].opened_ms = Some(100);
        assert_eq!(exact_peak_open(&runs), None);
        // The samples still judge the limit.
        assert_eq!(check(2, 2, &samples, 0, &runs, true), vec![]);
    }

    #[test]
    fn a_backlog_left_at_the_end_is_caught() {
        let (mut samples, runs) = good();
        samples[3].backlog_size = 1;
        assert_eq!(
            broken_names(&check(2, 2, &samples, 0, &runs, true)),
            vec![BACKLOG_DRAINED]
        );
        let (samples, runs) = good();
        assert_eq!(
            broken_names(&check(2, 2, &samples, 1, &runs, true)),
            vec![BACKLOG_DRAINED]
        );
    }

    #[test]
    fn a_failed_run_or_a_missing_execution_is_caught_and_named() {
        let (samples, mut runs) = good();
        runs[1].status = RunStatus::Failed;
        runs[1].error = Some("States.ExceedToleratedFailureThreshold".into());
        runs[3].executions_succeeded = 1;
        let v = check(2, 2, &samples, 0, &runs, true);
        assert_eq!(broken_names(&v), vec![ALL_SUCCEEDED]);
        assert!(v[0].detail.starts_with("2 of 4 runs did not"), "{v:?}");
        assert!(
            v[0].detail
                .contains("run2 FAILED States.ExceedToleratedFailureThreshold"),
            "{v:?}"
        );
        assert!(
            v[0].detail
                .contains("run4 SUCCEEDED (1 of 2 child executions"),
            "{v:?}"
        );
    }

    #[test]
    fn opening_out_of_creation_order_is_caught() {
        let (samples, mut runs) = good();
        runs[2].open_order = Some(4);
        runs[3].open_order = Some(3);
        let v = check(2, 2, &samples, 0, &runs, true);
        assert_eq!(broken_names(&v), vec![FIFO]);
        assert!(v[0].detail.starts_with("run #4 (run4)"), "{v:?}");
    }

    #[test]
    fn a_run_never_opened_breaks_fifo_and_success() {
        let (samples, mut runs) = good();
        runs[3].open_order = None;
        runs[3].opened_ms = None;
        runs[3].status = RunStatus::Pending;
        let v = check(2, 2, &samples, 0, &runs, false);
        assert_eq!(
            broken_names(&v),
            vec![FINISHED_IN_TIME, ALL_SUCCEEDED, FIFO]
        );
        assert_eq!(v[0].detail, "only 3 of 4 runs were terminal");
        assert!(v[2].detail.contains("never opened"), "{v:?}");
    }

    #[test]
    fn summary_reports_peaks_drain_and_rates() {
        let (samples, _) = good();
        let s = summarize(&samples, 4, 50);
        assert_eq!(s.peak_open, 2);
        assert_eq!(s.peak_backlog, 2);
        assert_eq!(s.backlog_drained_ms, Some(200));
        assert_eq!(s.all_done_ms, Some(300));
        let rps = s.runs_per_s.unwrap();
        assert!((rps - 4.0 / 0.3).abs() < 1e-9, "{rps}");
        let eps = s.executions_per_s.unwrap();
        assert!((eps - 8.0 / 0.3).abs() < 1e-9, "{eps}");
    }

    #[test]
    fn summary_without_an_end_has_no_rates() {
        let (samples, _) = good();
        let s = summarize(&samples[..2], 4, 50);
        assert_eq!(s.all_done_ms, None);
        assert_eq!(s.runs_per_s, None);
        assert_eq!(s.backlog_drained_ms, None);
    }
}
