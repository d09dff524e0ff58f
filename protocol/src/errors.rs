//! Error names reported in outcomes and run descriptions.
//!
//! Step Functions users match on these strings in `Retry` and `Catch` (`ErrorEquals`), so
//! the `States.*` names mean exactly what they mean in Step Functions. fleetmap's own, more
//! specific names start with `FleetMap.`; all of them are also `States.TaskFailed` for the
//! purposes of a `Retry` rule naming that.

/// The item reader could not read or parse the run's item source (manifest, prefix, …).
pub const ITEM_READER_FAILED: &str = "States.ItemReaderFailed";
/// More child executions failed than `ToleratedFailurePercentage` / `Count` allow.
pub const EXCEED_TOLERATED_FAILURE_THRESHOLD: &str = "States.ExceedToleratedFailureThreshold";
/// A child execution crashed its worker (dead-lettered past the delivery limit).
pub const RUNTIME: &str = "States.Runtime";
/// A child execution ran past its timeout.
pub const TIMEOUT: &str = "States.Timeout";
/// Generic task failure.
pub const TASK_FAILED: &str = "States.TaskFailed";
/// Writing the ResultWriter output failed.
pub const RESULT_WRITER_FAILED: &str = "States.ResultWriterFailed";
/// The run was aborted by a user.
pub const ABORTED: &str = "States.Aborted";

/// The listed object does not exist.
pub const OBJECT_NOT_FOUND: &str = "FleetMap.ObjectNotFound";
/// The object store refused or failed a request after retries.
pub const STORAGE_ERROR: &str = "FleetMap.StorageError";
/// The object is not valid Parquet / CSV / JSONL.
pub const INVALID_INPUT: &str = "FleetMap.InvalidInput";
/// A column the job needs is not in the object.
pub const MISSING_COLUMN: &str = "FleetMap.MissingColumn";
/// A column has a type the job cannot read.
pub const UNSUPPORTED_COLUMN_TYPE: &str = "FleetMap.UnsupportedColumnType";
/// Writing result objects failed.
pub const RESULT_WRITE_FAILED: &str = "FleetMap.ResultWriteFailed";
