//! The coordinator's Prometheus metrics, named in one place.
//!
//! The three admission gauges mirror Step Functions' `OpenMapRunLimit`,
//! `ApproximateOpenMapRunCount` and `ApproximateMapRunBacklogSize` — exact here, since one
//! process owns the numbers.

use fleetmap_protocol::{ItemStatus, OutcomeMessage};

use crate::admission::AdmissionControl;
use crate::run::RunStatus;

pub const OPEN_MAP_RUN_LIMIT: &str = "fleetmap_open_map_run_limit";
pub const OPEN_MAP_RUNS: &str = "fleetmap_open_map_runs";
pub const MAP_RUN_BACKLOG_SIZE: &str = "fleetmap_map_run_backlog_size";
pub const MAP_RUNS_FINISHED: &str = "fleetmap_map_runs_finished_total";
pub const CHILD_EXECUTIONS: &str = "fleetmap_child_executions_total";
pub const CHILD_EXECUTION_SECONDS: &str = "fleetmap_child_execution_duration_seconds";

pub fn set_admission(a: &AdmissionControl) {
    metrics::gauge!(OPEN_MAP_RUN_LIMIT).set(a.limit() as f64);
    metrics::gauge!(OPEN_MAP_RUNS).set(a.open_count() as f64);
    metrics::gauge!(MAP_RUN_BACKLOG_SIZE).set(a.backlog_len() as f64);
}

pub fn run_finished(status: RunStatus) {
    metrics::counter!(MAP_RUNS_FINISHED, "status" => status.as_str()).increment(1);
}

pub fn execution_finished(o: &OutcomeMessage) {
    let (status, error) = match &o.status {
        ItemStatus::Succeeded { .. } => ("SUCCEEDED", String::new()),
        ItemStatus::Failed { error, .. } => ("FAILED", error.clone()),
    };
    metrics::counter!(CHILD_EXECUTIONS, "status" => status, "error" => error).increment(1);
    let secs = (o.finished_ms - o.started_ms).max(0) as f64 / 1000.0;
    metrics::histogram!(CHILD_EXECUTION_SECONDS).record(secs);
}

pub fn execution_failed(error: &'static str) {
    metrics::counter!(CHILD_EXECUTIONS, "status" => "FAILED", "error" => error).increment(1);
}
