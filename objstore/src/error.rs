//! The one error type of this crate.
//!
//! Every variant names the bucket and key (or prefix) it concerns, because an error that only
//! says "service error" is useless in a map run's failure record. Each also knows whether a
//! retry could help, so callers (the worker's retry policy, the coordinator's reader) decide
//! without re-inspecting SDK internals.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// A boxed error that keeps the SDK's full source chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong talking to an S3-protocol store.
#[derive(Debug, thiserror::Error)]
pub enum ObjStoreError {
    /// The text is not an `s3://bucket/key` URI this crate accepts.
    #[error("invalid S3 URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },

    /// The object does not exist (S3 `NoSuchKey` / 404).
    #[error("s3://{bucket}/{key} not found")]
    NotFound { bucket: String, key: String },

    /// GetObject failed, or its body could not be read to the end.
    #[error("reading s3://{bucket}/{key} failed: {source}")]
    Get {
        bucket: String,
        key: String,
        retryable: bool,
        #[source]
        source: BoxError,
    },

    /// HeadObject failed for a reason other than the object being absent.
    #[error("inspecting s3://{bucket}/{key} failed: {source}")]
    Head {
        bucket: String,
        key: String,
        retryable: bool,
        #[source]
        source: BoxError,
    },

    /// PutObject failed.
    #[error("writing s3://{bucket}/{key} failed: {source}")]
    Put {
        bucket: String,
        key: String,
        retryable: bool,
        #[source]
        source: BoxError,
    },

    /// A ListObjectsV2 page failed.
    #[error("listing s3://{bucket}/{prefix} failed: {source}")]
    List {
        bucket: String,
        prefix: String,
        retryable: bool,
        #[source]
        source: BoxError,
    },

    /// The bucket could neither be found nor created.
    #[error("creating bucket {bucket} failed: {source}")]
    CreateBucket {
        bucket: String,
        retryable: bool,
        #[source]
        source: BoxError,
    },

    /// The loopback S3 server could not start (bind, temp dir, s3s-fs root).
    #[error("local S3 server: {reason}")]
    LocalServer { reason: String },
}

impl ObjStoreError {
    /// Whether trying the same call again may succeed: throttling, 5xx, timeouts and broken
    /// connections yes; 4xx answers (not found, access denied, bad request) and bad input no.
    pub fn is_retryable(&self) -> bool {
        match self {
            ObjStoreError::Get { retryable, .. }
            | ObjStoreError::Head { retryable, .. }
            | ObjStoreError::Put { retryable, .. }
            | ObjStoreError::List { retryable, .. }
            | ObjStoreError::CreateBucket { retryable, .. } => *retryable,
            ObjStoreError::InvalidUri { .. }
            | ObjStoreError::NotFound { .. }
            | ObjStoreError::LocalServer { .. } => false,
        }
    }

    /// Whether a GET read a body that does not match the checksum the store recorded for the
    /// object: the object is torn (content and checksum written by different PUTs), not
    /// merely unreachable. Callers that keep more than one copy can fall back to another;
    /// a broken connection or a 5xx is *not* this, and must not be mistaken for it.
    pub fn is_checksum_mismatch(&self) -> bool {
        let ObjStoreError::Get { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = cause {
            if matches!(
                e.downcast_ref::<aws_smithy_checksums::body::validate::Error>(),
                Some(aws_smithy_checksums::body::validate::Error::ChecksumMismatch { .. })
            ) {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// S3 error codes that mean "slow down / try later" even when the status is not 5xx.
pub(crate) const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
];

/// Classifies an SDK failure the way the SDK's own standard retry strategy does, so an error
/// that survived the SDK's retries still tells the caller whether a later attempt is sensible.
/// An S3 call's failure in one line that says what went wrong: the HTTP status, S3 error
/// code and message when the store answered (`HTTP 403 AccessDenied: Access Denied`), the
/// transport's chain of causes when it did not. The SDK's own `Display` says only
/// "service error", which is useless in a child execution's cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SdkFailure(pub(crate) String);

pub fn sdk_failure<E>(err: SdkError<E, HttpResponse>) -> BoxError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let summary = match &err {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("(no error code)");
            match s.err().message().filter(|m| !m.is_empty()) {
                Some(m) => format!("HTTP {status} {code}: {m}"),
                None => format!("HTTP {status} {code}"),
            }
        }
        other => aws_sdk_s3::error::DisplayErrorContext(other).to_string(),
    };
    Box::new(SdkFailure(summary))
}

pub(crate) fn sdk_retryable<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ConstructionFailure(_) => false,
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(f) => f.is_io() || f.is_timeout() || f.is_other(),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            status == 429
                || status >= 500
                || s.err().code().is_some_and(|c| RETRYABLE_CODES.contains(&c))
        }
        // `SdkError` is non-exhaustive; an unknown kind is not assumed transient.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    #[test]
    fn a_failure_names_status_code_and_message() {
        let err = GetObjectError::generic(
            ErrorMetadata::builder()
                .code("AccessDenied")
                .message("Access Denied")
                .build(),
        );
        let err = SdkError::service_error(
            err,
            HttpResponse::new(403.try_into().unwrap(), SdkBody::empty()),
        );
        assert_eq!(
            sdk_failure(err).to_string(),
            "HTTP 403 AccessDenied: Access Denied"
        );
        assert_eq!(sdk_failure(service_error(403, "")).to_string(), "HTTP 403 ");
    }

    fn service_error(status: u16, code: &str) -> SdkError<GetObjectError, HttpResponse> {
        let status = status.try_into().expect("valid status");
        let err = GetObjectError::generic(ErrorMetadata::builder().code(code).build());
        SdkError::service_error(err, HttpResponse::new(status, SdkBody::empty()))
    }

    #[test]
    fn throttling_and_server_errors_are_retryable() {
        assert!(sdk_retryable(&service_error(503, "SlowDown")));
        assert!(sdk_retryable(&service_error(500, "InternalError")));
        assert!(sdk_retryable(&service_error(429, "TooManyRequests")));
        assert!(sdk_retryable(&service_error(400, "RequestTimeout")));
        assert!(sdk_retryable(
            &SdkError::<GetObjectError, HttpResponse>::timeout_error("took too long")
        ));
    }

    #[test]
    fn client_errors_are_not_retryable() {
        assert!(!sdk_retryable(&service_error(403, "AccessDenied")));
        assert!(!sdk_retryable(&service_error(404, "NoSuchBucket")));
        assert!(!sdk_retryable(
            &SdkError::<GetObjectError, HttpResponse>::construction_failure("bad input")
        ));
        let not_found = ObjStoreError::NotFound {
            bucket: "b".into(),
            key: "k".into(),
        };
        assert!(!not_found.is_retryable());
    }
}
