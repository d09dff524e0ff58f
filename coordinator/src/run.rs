//! The map run state machine: pure, no I/O, no clock of its own.
//!
//! A run holds its child executions' states and the Step Functions counters, hands out the
//! next execution to dispatch while it has credits (`MaxConcurrency`), and applies outcomes
//! exactly once: an outcome for an execution that is not running *that attempt* is a
//! duplicate (a redelivery, or a late answer after an abort) and changes nothing. Times are
//! passed in as Unix milliseconds so tests can drive it without sleeping.

use std::collections::BTreeMap;
use std::fmt;

use fleetmap_protocol::{AnomalyCounts, ItemStatus, OutcomeMessage, errors};
use serde::Serialize;

/// Step Functions' `MaxConcurrency: 0` means "as many as possible", capped at 10,000.
pub const MAX_CONCURRENCY_CAP: u32 = 10_000;

/// A map run's id: unique, URL-safe, stable across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Waiting in the open-map-run backlog, or reading its items.
    Pending,
    Running,
    Succeeded,
    Failed,
    Aborted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "PENDING",
            RunStatus::Running => "RUNNING",
            RunStatus::Succeeded => "SUCCEEDED",
            RunStatus::Failed => "FAILED",
            RunStatus::Aborted => "ABORTED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Aborted
        )
    }
}

/// One child execution's input: a range of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildSpec {
    pub bucket: String,
    pub key: String,
    pub row_groups: Option<(u32, u32)>,
    pub first_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecState {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
}

/// The Step Functions counters, as `DescribeMapRun` returns them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub aborted: u64,
    pub total: u64,
    pub results_written: u64,
}

/// Failure tolerance (`ToleratedFailureCount` / `ToleratedFailurePercentage`); the run fails
/// when either is *exceeded*. Both unset means no failure is tolerated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Tolerance {
    pub count: Option<u64>,
    pub percentage: Option<f64>,
}

impl Tolerance {
    pub fn exceeded(&self, failed: u64, total: u64) -> bool {
        if failed == 0 {
            return false;
        }
        let by_count = self.count.is_some_and(|c| failed > c);
        let by_pct = self
            .percentage
            .is_some_and(|p| total > 0 && (failed as f64) * 100.0 / (total as f64) > p);
        match (self.count, self.percentage) {
            (None, None) => true,
            _ => by_count || by_pct,
        }
    }
}

/// The final record of one child execution, for ResultWriter and history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecRecord {
    pub execution: u32,
    pub attempt: u32,
    pub state: ExecState,
    pub worker_id: Option<String>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub bytes_read: u64,
    pub readings: u64,
    pub anomalies: AnomalyCounts,
    pub result_key: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
}

/// What applying an outcome did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The outcome changed the run.
    Recorded,
    /// Already applied, stale, or for an execution that is no longer running: ignored.
    Ignored(String),
}

#[derive(Debug)]
pub struct MapRun {
    pub id: RunId,
    pub label: Option<String>,
    status: RunStatus,
    max_concurrency: u32,
    tolerance: Tolerance,
    children: Vec<ChildSpec>,
    states: Vec<ExecState>,
    attempts: Vec<u32>,
    /// Next never-dispatched execution; everything before it has been dispatched once.
    cursor: usize,
    counts: Counts,
    records: BTreeMap<u32, ExecRecord>,
    pub created_ms: i64,
    pub start_ms: Option<i64>,
    pub stop_ms: Option<i64>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub readings: u64,
    pub anomalies: AnomalyCounts,
    pub devices_with_anomalies: BTreeMap<String, u64>,
    pub executions_by_worker: BTreeMap<String, u64>,
}

impl MapRun {
    /// A new run, PENDING until [`MapRun::open`]. `children` may be empty until the item
    /// reader has run ([`MapRun::set_children`]).
    pub fn new(
        id: RunId,
        label: Option<String>,
        max_concurrency: u32,
        tolerance: Tolerance,
        now_ms: i64,
    ) -> Self {
        MapRun {
            id,
            label,
            status: RunStatus::Pending,
            max_concurrency,
            tolerance,
            children: Vec::new(),
            states: Vec::new(),
            attempts: Vec::new(),
            cursor: 0,
            counts: Counts::default(),
            records: BTreeMap::new(),
            created_ms: now_ms,
            start_ms: None,
            stop_ms: None,
            error: None,
            cause: None,
            readings: 0,
            anomalies: AnomalyCounts::default(),
            devices_with_anomalies: BTreeMap::new(),
            executions_by_worker: BTreeMap::new(),
        }
    }

    pub fn status(&self) -> RunStatus {
        self.status
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency
    }

    pub fn tolerance(&self) -> Tolerance {
        self.tolerance
    }

    pub fn children(&self) -> &[ChildSpec] {
        &self.children
    }

    pub fn child(&self, execution: u32) -> Option<&ChildSpec> {
        self.children.get(execution as usize)
    }

    pub fn records(&self) -> impl Iterator<Item = &ExecRecord> {
        self.records.values()
    }

    /// The effective credit window: 0 means the Step Functions cap.
    pub fn window(&self) -> u64 {
        match self.max_concurrency {
            0 => u64::from(MAX_CONCURRENCY_CAP),
            n => u64::from(n.min(MAX_CONCURRENCY_CAP)),
        }
    }

    pub fn set_max_concurrency(&mut self, n: u32) {
        self.max_concurrency = n;
    }

    pub fn set_children(&mut self, children: Vec<ChildSpec>) {
        let n = children.len();
        self.children = children;
        self.states = vec![ExecState::Pending; n];
        self.attempts = vec![0; n];
        self.cursor = 0;
        self.counts = Counts {
            pending: n as u64,
            total: n as u64,
            ..Counts::default()
        };
    }

    /// Admitted: starts dispatching.
    pub fn open(&mut self, now_ms: i64) {
        if self.status == RunStatus::Pending {
            self.status = RunStatus::Running;
            self.start_ms = Some(now_ms);
        }
    }

    /// Fails a run that never got going (its item reader failed).
    pub fn fail(&mut self, error: &str, cause: String, now_ms: i64) {
        self.abort_unfinished();
        self.status = RunStatus::Failed;
        self.error = Some(error.to_owned());
        self.cause = Some(cause);
        self.stop_ms = Some(now_ms);
    }

    /// Writing the ResultWriter output failed: the run fails even if every child succeeded,
    /// because its declared output does not exist.
    pub fn result_writer_failed(&mut self, cause: String) {
        self.status = RunStatus::Failed;
        self.error = Some(errors::RESULT_WRITER_FAILED.to_owned());
        self.cause = Some(cause);
    }

    /// The next execution to publish, if the run is open and has a free credit.
    /// Marks it running; the caller must publish it (or call [`MapRun::undispatch`]).
    pub fn next_dispatch(&mut self) -> Option<(u32, u32)> {
        if self.status != RunStatus::Running || self.counts.running >= self.window() {
            return None;
        }
        let i = self.cursor;
        if i >= self.states.len() {
            return None;
        }
        self.cursor += 1;
        self.states[i] = ExecState::Running;
        self.attempts[i] += 1;
        self.counts.pending -= 1;
        self.counts.running += 1;
        Some((i as u32, self.attempts[i]))
    }

    /// Returns an execution to pending when its publish was refused, so it is sent again.
    pub fn undispatch(&mut self, execution: u32) {
        let i = execution as usize;
        if self.states.get(i) == Some(&ExecState::Running) && i + 1 == self.cursor {
            self.states[i] = ExecState::Pending;
            self.attempts[i] -= 1;
            self.cursor -= 1;
            self.counts.running -= 1;
            self.counts.pending += 1;
        }
    }

    /// Applies a worker's outcome once.
    pub fn apply_outcome(&mut self, o: &OutcomeMessage) -> Applied {
        let i = o.execution as usize;
        match (self.states.get(i), self.attempts.get(i)) {
            (Some(ExecState::Running), Some(&a)) if a == o.attempt => {}
            (Some(state), Some(&a)) => {
                return Applied::Ignored(format!(
                    "execution {} attempt {} is {state:?} at attempt {a}",
                    o.execution, o.attempt
                ));
            }
            _ => {
                return Applied::Ignored(format!(
                    "execution {} does not exist in run {}",
                    o.execution, self.id
                ));
            }
        }
        *self
            .executions_by_worker
            .entry(o.worker_id.clone())
            .or_default() += 1;
        let mut record = ExecRecord {
            execution: o.execution,
            attempt: o.attempt,
            state: ExecState::Succeeded,
            worker_id: Some(o.worker_id.clone()),
            started_ms: Some(o.started_ms),
            finished_ms: Some(o.finished_ms),
            bytes_read: o.bytes_read,
            readings: 0,
            anomalies: AnomalyCounts::default(),
            result_key: None,
            error: None,
            cause: None,
        };
        match &o.status {
            ItemStatus::Succeeded {
                readings,
                anomalies,
                devices,
                result_key,
                ..
            } => {
                record.readings = *readings;
                record.anomalies = *anomalies;
                record.result_key = Some(result_key.clone());
                self.readings += readings;
                self.anomalies.add(anomalies);
                for d in devices {
                    *self
                        .devices_with_anomalies
                        .entry(d.deviceid.clone())
                        .or_default() += d.readings_with_anomalies;
                }
                self.finish_exec(i, record);
            }
            ItemStatus::Failed { error, cause } => {
                record.state = if error == errors::TIMEOUT {
                    ExecState::TimedOut
                } else {
                    ExecState::Failed
                };
                record.error = Some(error.clone());
                record.cause = Some(cause.clone());
                self.finish_exec(i, record);
            }
        }
        Applied::Recorded
    }

    /// Records a failure that did not come from a worker's outcome (a dead-lettered item).
    pub fn apply_failure(
        &mut self,
        execution: u32,
        attempt: u32,
        error: &str,
        cause: String,
        now_ms: i64,
    ) -> Applied {
        let o = OutcomeMessage {
            run_id: self.id.0.clone(),
            execution,
            attempt,
            worker_id: "coordinator".into(),
            started_ms: now_ms,
            finished_ms: now_ms,
            bytes_read: 0,
            status: ItemStatus::Failed {
                error: error.to_owned(),
                cause,
            },
        };
        let applied = self.apply_outcome(&o);
        if applied == Applied::Recorded
            && let Some(n) = self.executions_by_worker.get_mut("coordinator")
        {
            *n -= 1;
            if *n == 0 {
                self.executions_by_worker.remove("coordinator");
            }
        }
        applied
    }

    fn finish_exec(&mut self, i: usize, record: ExecRecord) {
        self.counts.running -= 1;
        match record.state {
            ExecState::Succeeded => {
                self.counts.succeeded += 1;
                self.counts.results_written += 1;
            }
            ExecState::TimedOut => self.counts.timed_out += 1,
            _ => self.counts.failed += 1,
        }
        self.states[i] = record.state;
        self.records.insert(record.execution, record);
        let failures = self.counts.failed + self.counts.timed_out;
        if self.status == RunStatus::Running && self.tolerance.exceeded(failures, self.counts.total)
        {
            self.status = RunStatus::Failed;
            self.error = Some(errors::EXCEED_TOLERATED_FAILURE_THRESHOLD.to_owned());
            self.cause = Some(format!(
                "{failures} of {} child executions failed, more than the tolerated {}",
                self.counts.total,
                self.describe_tolerance()
            ));
            self.abort_unfinished();
        }
    }

    fn describe_tolerance(&self) -> String {
        match (self.tolerance.count, self.tolerance.percentage) {
            (None, None) => "0".into(),
            (Some(c), None) => format!("count {c}"),
            (None, Some(p)) => format!("{p}%"),
            (Some(c), Some(p)) => format!("count {c} / {p}%"),
        }
    }

    fn abort_unfinished(&mut self) {
        for (i, s) in self.states.iter_mut().enumerate() {
            if matches!(s, ExecState::Pending | ExecState::Running) {
                *s = ExecState::Aborted;
                self.records.insert(
                    i as u32,
                    ExecRecord {
                        execution: i as u32,
                        attempt: self.attempts[i],
                        state: ExecState::Aborted,
                        worker_id: None,
                        started_ms: None,
                        finished_ms: None,
                        bytes_read: 0,
                        readings: 0,
                        anomalies: AnomalyCounts::default(),
                        result_key: None,
                        error: None,
                        cause: None,
                    },
                );
            }
        }
        self.counts.aborted += self.counts.pending + self.counts.running;
        self.counts.pending = 0;
        self.counts.running = 0;
        self.cursor = self.states.len();
    }

    /// Once nothing is pending or running, decides the run's final status. Returns true when
    /// the run has just become terminal (or already was).
    pub fn settle(&mut self, now_ms: i64) -> bool {
        if self.status.is_terminal() {
            if self.stop_ms.is_none() {
                self.stop_ms = Some(now_ms);
            }
            return true;
        }
        if self.status != RunStatus::Running || self.counts.pending + self.counts.running > 0 {
            return false;
        }
        self.status = RunStatus::Succeeded;
        self.stop_ms = Some(now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmap_protocol::DeviceAnomalies;

    fn child(i: u32) -> ChildSpec {
        ChildSpec {
            bucket: "data".into(),
            key: format!("f{i}"),
            row_groups: None,
            first_index: 0,
        }
    }

    fn run(n: u32, max_concurrency: u32, tolerance: Tolerance) -> MapRun {
        let mut r = MapRun::new(RunId("r".into()), None, max_concurrency, tolerance, 0);
        r.set_children((0..n).map(child).collect());
        r.open(1);
        r
    }

    fn ok(execution: u32, attempt: u32, readings: u64) -> OutcomeMessage {
        OutcomeMessage {
            run_id: "r".into(),
            execution,
            attempt,
            worker_id: "w1".into(),
            started_ms: 1,
            finished_ms: 2,
            bytes_read: 10,
            status: ItemStatus::Succeeded {
                readings,
                anomalies: AnomalyCounts {
                    temperature_spike: 1,
                    humidity_anomaly: 0,
                    low_battery: 0,
                    readings_with_anomalies: 1,
                },
                devices: vec![DeviceAnomalies {
                    deviceid: "sensor-001".into(),
                    readings_with_anomalies: 1,
                }],
                devices_truncated: false,
                result_key: format!("k{execution}"),
            },
        }
    }

    fn failed(execution: u32, attempt: u32) -> OutcomeMessage {
        OutcomeMessage {
            status: ItemStatus::Failed {
                error: errors::OBJECT_NOT_FOUND.into(),
                cause: "gone".into(),
            },
            ..ok(execution, attempt, 0)
        }
    }

    fn drain(r: &mut MapRun) -> Vec<(u32, u32)> {
        std::iter::from_fn(|| r.next_dispatch()).collect()
    }

    #[test]
    fn pending_run_dispatches_nothing_until_opened() {
        let mut r = MapRun::new(RunId("r".into()), None, 2, Tolerance::default(), 0);
        r.set_children(vec![child(0)]);
        assert_eq!(r.next_dispatch(), None);
        r.open(5);
        assert_eq!(r.next_dispatch(), Some((0, 1)));
        assert_eq!(r.start_ms, Some(5));
    }

    #[test]
    fn max_concurrency_bounds_in_flight_executions() {
        let mut r = run(5, 2, Tolerance::default());
        assert_eq!(drain(&mut r), [(0, 1), (1, 1)]);
        assert_eq!(r.apply_outcome(&ok(0, 1, 24)), Applied::Recorded);
        assert_eq!(drain(&mut r), [(2, 1)]);
        r.set_max_concurrency(4);
        assert_eq!(drain(&mut r), [(3, 1), (4, 1)]);
        assert_eq!(r.counts().running, 4);
        assert_eq!(r.counts().pending, 0);
    }

    #[test]
    fn zero_max_concurrency_means_the_step_functions_cap() {
        let mut r = run(3, 0, Tolerance::default());
        assert_eq!(r.window(), 10_000);
        assert_eq!(drain(&mut r).len(), 3);
    }

    #[test]
    fn duplicate_and_stale_outcomes_are_ignored() {
        let mut r = run(2, 2, Tolerance::default());
        drain(&mut r);
        assert_eq!(r.apply_outcome(&ok(0, 1, 24)), Applied::Recorded);
        assert!(matches!(
            r.apply_outcome(&ok(0, 1, 24)),
            Applied::Ignored(_)
        ));
        assert!(matches!(
            r.apply_outcome(&ok(1, 2, 24)),
            Applied::Ignored(_)
        ));
        assert!(matches!(
            r.apply_outcome(&ok(9, 1, 24)),
            Applied::Ignored(_)
        ));
        assert_eq!(r.readings, 24);
        assert_eq!(r.counts().succeeded, 1);
        assert_eq!(r.devices_with_anomalies["sensor-001"], 1);
    }

    #[test]
    fn all_succeeded_settles_to_succeeded() {
        let mut r = run(2, 10, Tolerance::default());
        drain(&mut r);
        r.apply_outcome(&ok(0, 1, 24));
        assert!(!r.settle(3));
        r.apply_outcome(&ok(1, 1, 24));
        assert!(r.settle(3));
        assert_eq!(r.status(), RunStatus::Succeeded);
        let c = r.counts();
        assert_eq!((c.succeeded, c.total, c.results_written), (2, 2, 2));
        assert_eq!(r.executions_by_worker["w1"], 2);
    }

    #[test]
    fn one_failure_fails_a_run_without_tolerance_and_aborts_the_rest() {
        let mut r = run(4, 2, Tolerance::default());
        drain(&mut r);
        r.apply_outcome(&failed(0, 1));
        assert_eq!(r.status(), RunStatus::Failed);
        assert_eq!(
            r.error.as_deref(),
            Some(errors::EXCEED_TOLERATED_FAILURE_THRESHOLD)
        );
        let c = r.counts();
        assert_eq!((c.failed, c.aborted, c.pending, c.running), (1, 3, 0, 0));
        assert_eq!(r.next_dispatch(), None);
        assert!(matches!(
            r.apply_outcome(&ok(1, 1, 24)),
            Applied::Ignored(_)
        ));
        assert!(r.settle(9));
        assert_eq!(r.stop_ms, Some(9));
    }

    #[test]
    fn tolerance_is_exceeded_only_past_the_limit() {
        let t = Tolerance {
            count: None,
            percentage: Some(20.0),
        };
        assert!(!t.exceeded(2, 10));
        assert!(t.exceeded(3, 10));
        let t = Tolerance {
            count: Some(3),
            percentage: None,
        };
        assert!(!t.exceeded(3, 10));
        assert!(t.exceeded(4, 10));
        assert!(!Tolerance::default().exceeded(0, 10));
        assert!(Tolerance::default().exceeded(1, 10));
    }

    #[test]
    fn tolerated_failures_still_succeed() {
        let mut r = run(
            3,
            3,
            Tolerance {
                count: Some(1),
                percentage: None,
            },
        );
        drain(&mut r);
        r.apply_outcome(&failed(0, 1));
        r.apply_outcome(&ok(1, 1, 1));
        r.apply_outcome(&ok(2, 1, 1));
        assert!(r.settle(4));
        assert_eq!(r.status(), RunStatus::Succeeded);
        assert_eq!(r.counts().failed, 1);
    }

    #[test]
    fn dead_lettered_item_becomes_a_failed_execution() {
        let mut r = run(1, 1, Tolerance::default());
        drain(&mut r);
        let a = r.apply_failure(0, 1, errors::RUNTIME, "delivery limit".into(), 7);
        assert_eq!(a, Applied::Recorded);
        assert_eq!(r.counts().failed, 1);
        assert!(r.executions_by_worker.is_empty());
        let rec = r.records().next().unwrap();
        assert_eq!(rec.error.as_deref(), Some(errors::RUNTIME));
    }

    #[test]
    fn refused_publish_is_dispatched_again() {
        let mut r = run(2, 1, Tolerance::default());
        assert_eq!(r.next_dispatch(), Some((0, 1)));
        r.undispatch(0);
        assert_eq!(r.counts().pending, 2);
        assert_eq!(r.next_dispatch(), Some((0, 1)));
    }
}
