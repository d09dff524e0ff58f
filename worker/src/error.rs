//! The worker's one error type.
//!
//! Every failure of an item ends up in an outcome as a Step Functions style error name
//! (what users match in `Retry` / `Catch`) plus a cause a human can act on. So each variant
//! carries the object it concerns (`s3://bucket/key`) and, where it applies, the column or
//! row group, and knows both its error name and whether trying again can help.

use std::error::Error as StdError;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use fleetmap_protocol::errors;

/// A boxed underlying error, kept as a source rather than flattened into a string.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The item names an object that is not there (or whose bucket is not there).
    #[error("object s3://{bucket}/{key} does not exist")]
    ObjectNotFound { bucket: String, key: String },

    /// The object store failed a request after the SDK's own retries.
    #[error("{op} s3://{bucket}/{key} failed: {source}")]
    Storage {
        bucket: String,
        key: String,
        /// The S3 operation, e.g. `GetObject`.
        op: &'static str,
        /// True for 5xx, throttling, timeouts and connection failures.
        retryable: bool,
        #[source]
        source: BoxError,
    },

    /// The object is not valid Parquet / CSV / JSONL, or is corrupt.
    #[error("s3://{bucket}/{key} is not valid {format}: {source}")]
    InvalidInput {
        bucket: String,
        key: String,
        /// `PARQUET`, `CSV` or `JSONL`.
        format: &'static str,
        #[source]
        source: BoxError,
    },

    /// The item asks for row groups the Parquet object does not have.
    #[error(
        "s3://{bucket}/{key} has {available} row groups; the item asks for row groups {start}..{end}"
    )]
    RowGroupsOutOfRange {
        bucket: String,
        key: String,
        start: u32,
        end: u32,
        available: usize,
    },

    /// A Parquet row group is larger than the worker's per-row-group limit (default
    /// 256 MiB, as Step Functions): refused before it is fetched, rather than exhausting
    /// memory. Re-write the file with smaller row groups, or raise the limit.
    #[error(
        "row group {row_group} of s3://{bucket}/{key} holds {bytes} bytes of the needed column chunks, above the worker's limit of {limit} bytes per row group"
    )]
    RowGroupTooLarge {
        bucket: String,
        key: String,
        row_group: usize,
        bytes: u64,
        limit: u64,
    },

    /// A column the job needs is not in the object.
    #[error("s3://{bucket}/{key} has no column {column:?}")]
    MissingColumn {
        bucket: String,
        key: String,
        column: &'static str,
    },

    /// A column has a type the kernel cannot read.
    #[error("column {column:?} of s3://{bucket}/{key} has unsupported type {data_type}")]
    UnsupportedColumnType {
        bucket: String,
        key: String,
        column: &'static str,
        data_type: String,
    },

    /// The item message itself cannot be processed (e.g. an analysis time out of range).
    #[error("item {execution} of run {run_id} is invalid: {reason}")]
    InvalidItem {
        run_id: String,
        execution: u32,
        reason: String,
    },

    /// Writing the analytics records failed.
    #[error("writing results to s3://{bucket}/{key} failed: {source}")]
    ResultWrite {
        bucket: String,
        key: String,
        retryable: bool,
        #[source]
        source: BoxError,
    },

    /// A blocking task running the kernel or encoder died (panicked or was cancelled).
    #[error("processing s3://{bucket}/{key} crashed: {source}")]
    Crashed {
        bucket: String,
        key: String,
        #[source]
        source: BoxError,
    },

    /// The item ran past the child execution timeout and was abandoned.
    #[error("child execution over s3://{bucket}/{key} ran past its timeout of {seconds} s")]
    Timeout {
        bucket: String,
        key: String,
        seconds: u64,
    },
}

impl WorkerError {
    /// The Step Functions style error name an outcome reports, see [`errors`].
    pub fn error_name(&self) -> &'static str {
        match self {
            WorkerError::ObjectNotFound { .. } => errors::OBJECT_NOT_FOUND,
            WorkerError::Storage { .. } => errors::STORAGE_ERROR,
            WorkerError::InvalidInput { .. }
            | WorkerError::RowGroupsOutOfRange { .. }
            | WorkerError::RowGroupTooLarge { .. } => errors::INVALID_INPUT,
            WorkerError::MissingColumn { .. } => errors::MISSING_COLUMN,
            WorkerError::UnsupportedColumnType { .. } => errors::UNSUPPORTED_COLUMN_TYPE,
            WorkerError::InvalidItem { .. } => errors::TASK_FAILED,
            WorkerError::ResultWrite { .. } => errors::RESULT_WRITE_FAILED,
            WorkerError::Crashed { .. } => errors::RUNTIME,
            WorkerError::Timeout { .. } => errors::TIMEOUT,
        }
    }

    /// Whether the same item may succeed if tried again. Bad data stays bad; only the
    /// object store's transient failures are worth another attempt.
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Storage { retryable, .. } | WorkerError::ResultWrite { retryable, .. } => {
                *retryable
            }
            _ => false,
        }
    }

    /// Maps a failed S3 read: 404 becomes [`WorkerError::ObjectNotFound`], anything else
    /// [`WorkerError::Storage`] with its retryable flag.
    pub(crate) fn from_read<E>(
        err: SdkError<E, HttpResponse>,
        bucket: &str,
        key: &str,
        op: &'static str,
    ) -> WorkerError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().unwrap_or_default();
        if status == Some(404) || matches!(code, "NoSuchKey" | "NoSuchBucket" | "NotFound") {
            return WorkerError::ObjectNotFound {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            };
        }
        WorkerError::Storage {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            op,
            retryable: sdk_retryable(&err),
            source: fleetmap_objstore::error::sdk_failure(err),
        }
    }
}

/// Transient by the usual S3 rules: no response at all (timeout, connection), a 5xx, a 429
/// or one of the throttling codes. 4xx answers are the request's fault and stay failed.
fn sdk_retryable<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ConstructionFailure(_) => false,
        _ => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let code = err.code().unwrap_or_default();
            matches!(status, Some(429 | 500..=599))
                || matches!(
                    code,
                    "SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout"
                )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_causes_name_the_object_and_column() {
        let e = WorkerError::MissingColumn {
            bucket: "data".into(),
            key: "a/b.parquet".into(),
            column: "humidity",
        };
        assert_eq!(e.error_name(), "FleetMap.MissingColumn");
        assert_eq!(
            e.to_string(),
            "s3://data/a/b.parquet has no column \"humidity\""
        );
        assert!(!e.is_retryable());

        let e = WorkerError::RowGroupsOutOfRange {
            bucket: "data".into(),
            key: "k".into(),
            start: 2,
            end: 5,
            available: 3,
        };
        assert_eq!(e.error_name(), "FleetMap.InvalidInput");
        assert!(e.to_string().contains("s3://data/k has 3 row groups"));
    }

    #[test]
    fn only_transient_storage_failures_are_retryable() {
        let transient = WorkerError::Storage {
            bucket: "b".into(),
            key: "k".into(),
            op: "GetObject",
            retryable: true,
            source: "503".into(),
        };
        assert!(transient.is_retryable());
        assert_eq!(transient.error_name(), "FleetMap.StorageError");
        let bad = WorkerError::InvalidInput {
            bucket: "b".into(),
            key: "k".into(),
            format: "PARQUET",
            source: "bad magic".into(),
        };
        assert!(!bad.is_retryable());
        assert_eq!(bad.to_string(), "s3://b/k is not valid PARQUET: bad magic");
    }
}
