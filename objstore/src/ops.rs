//! Thin helpers over single S3 calls, shared by coordinator, CLI and tests.
//!
//! They exist so that every caller gets the same error mapping: `NoSuchKey` becomes
//! [`ObjStoreError::NotFound`], and every error names its bucket and key and whether a retry
//! may help. Whole-object reads are for small objects (manifests, results); Parquet data is read
//! with ranged GETs by the worker.

use std::ops::Range;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use bytes::Bytes;

use crate::ObjStoreError;
use crate::error::{sdk_failure, sdk_retryable};

/// ListObjectsV2 page size used by [`list_keys`] (S3's maximum).
pub const LIST_PAGE_SIZE: i32 = 1000;

/// Reads a whole object into memory.
pub async fn get_bytes(c: &Client, bucket: &str, key: &str) -> Result<Bytes, ObjStoreError> {
    get(c, bucket, key, None).await
}

/// Reads bytes `range.start..range.end` (end exclusive) of an object with one ranged GET.
/// An empty range reads nothing and makes no request.
pub async fn get_range(
    c: &Client,
    bucket: &str,
    key: &str,
    range: Range<u64>,
) -> Result<Bytes, ObjStoreError> {
    if range.start >= range.end {
        return Ok(Bytes::new());
    }
    // HTTP ranges are inclusive at both ends.
    let header = format!("bytes={}-{}", range.start, range.end - 1);
    get(c, bucket, key, Some(header)).await
}

/// Reads the last `n` bytes of an object (all of it if shorter) with one suffix-range GET,
/// and returns them with the object's length, read from `Content-Range`. It replaces a
/// HeadObject plus a tail GET when opening a Parquet file: for a file under `n` bytes, the
/// whole item is then one request.
pub async fn get_suffix(
    c: &Client,
    bucket: &str,
    key: &str,
    n: u64,
) -> Result<(Bytes, u64), ObjStoreError> {
    if n == 0 {
        return Ok((Bytes::new(), head_size(c, bucket, key).await?));
    }
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .range(format!("bytes=-{n}"))
        .send()
        .await;
    let out = match out {
        Ok(out) => out,
        // S3 answers a suffix range on an empty object with 416 InvalidRange.
        Err(err)
            if err
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 416) =>
        {
            return Ok((Bytes::new(), head_size(c, bucket, key).await?));
        }
        Err(err) => return Err(get_failed(bucket, key, err)),
    };
    // `bytes 100-199/200`; absent when the store sent the whole object (200 OK).
    let total = out
        .content_range()
        .and_then(|r| r.rsplit_once('/'))
        .and_then(|(_, total)| total.parse::<u64>().ok());
    let body = collect(bucket, key, out.body).await?;
    suffix_checked(bucket, key, n, body, total)
}

/// A suffix GET's answer as `(bytes, object length)`, the length from `Content-Range`'s total
/// (`None`: the store sent the whole object), refused unless it holds the last `n` bytes
/// (or all of a shorter object).
pub(crate) fn suffix_checked(
    bucket: &str,
    key: &str,
    n: u64,
    body: Bytes,
    total: Option<u64>,
) -> Result<(Bytes, u64), ObjStoreError> {
    let size = total.unwrap_or(body.len() as u64);
    if body.len() as u64 != size.min(n) {
        return Err(ObjStoreError::Get {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            retryable: true,
            source: format!(
                "suffix GET of {n} bytes returned {} bytes of a {size}-byte object",
                body.len()
            )
            .into(),
        });
    }
    Ok((body, size))
}

async fn get(
    c: &Client,
    bucket: &str,
    key: &str,
    range: Option<String>,
) -> Result<Bytes, ObjStoreError> {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_range(range)
        .send()
        .await
        .map_err(|err| get_failed(bucket, key, err))?;
    collect(bucket, key, out.body).await
}

/// A GetObject that got no body: `NoSuchKey` is [`ObjStoreError::NotFound`].
fn get_failed(
    bucket: &str,
    key: &str,
    err: aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::get_object::GetObjectError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
) -> ObjStoreError {
    if err.as_service_error().is_some_and(|e| e.is_no_such_key()) {
        not_found(bucket, key)
    } else {
        ObjStoreError::Get {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            retryable: sdk_retryable(&err),
            source: sdk_failure(err),
        }
    }
}

/// Reads a GetObject body to the end.
async fn collect(bucket: &str, key: &str, body: ByteStream) -> Result<Bytes, ObjStoreError> {
    let body = body.collect().await.map_err(|err| ObjStoreError::Get {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        // The connection broke mid-body; a fresh request may well succeed.
        retryable: true,
        source: err.into(),
    })?;
    Ok(body.into_bytes())
}

/// Returns an object's size in bytes (HeadObject), which a range reader needs before it can
/// fetch a Parquet footer.
pub async fn head_size(c: &Client, bucket: &str, key: &str) -> Result<u64, ObjStoreError> {
    let out = c
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|err| {
            if err.as_service_error().is_some_and(|e| e.is_not_found()) {
                not_found(bucket, key)
            } else {
                ObjStoreError::Head {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    retryable: sdk_retryable(&err),
                    source: sdk_failure(err),
                }
            }
        })?;
    let len = out.content_length().unwrap_or(0);
    u64::try_from(len).map_err(|_| ObjStoreError::Head {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        retryable: false,
        source: format!("negative content length {len}").into(),
    })
}

/// Writes an object in one PutObject.
pub async fn put_bytes(
    c: &Client,
    bucket: &str,
    key: &str,
    body: Bytes,
    content_type: &str,
) -> Result<(), ObjStoreError> {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|err| ObjStoreError::Put {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            retryable: sdk_retryable(&err),
            source: sdk_failure(err),
        })?;
    Ok(())
}

/// Lists every key under `prefix`, in S3's (lexicographic) order, following continuation
/// tokens across pages.
pub async fn list_keys(
    c: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>, ObjStoreError> {
    list_keys_paged(c, bucket, prefix, LIST_PAGE_SIZE).await
}

/// [`list_keys`] with an explicit page size, so tests can exercise pagination without
/// creating thousands of objects.
pub async fn list_keys_paged(
    c: &Client,
    bucket: &str,
    prefix: &str,
    page_size: i32,
) -> Result<Vec<String>, ObjStoreError> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = c
            .list_objects_v2()
            .bucket(bucket)
            .set_prefix((!prefix.is_empty()).then(|| prefix.to_owned()))
            .max_keys(page_size)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|err| ObjStoreError::List {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
                retryable: sdk_retryable(&err),
                source: sdk_failure(err),
            })?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match (page.is_truncated(), page.next_continuation_token()) {
            (Some(true), Some(next)) => token = Some(next.to_owned()),
            _ => return Ok(keys),
        }
    }
}

/// Creates `bucket` unless it already exists and is reachable with these credentials.
///
/// Safe to race: several processes starting at once may all try to create it.
pub async fn ensure_bucket(c: &Client, bucket: &str) -> Result<(), ObjStoreError> {
    let create_err =
        |retryable: bool, source: crate::error::BoxError| ObjStoreError::CreateBucket {
            bucket: bucket.to_owned(),
            retryable,
            source,
        };
    match c.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(()),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {}
        Err(err) => return Err(create_err(sdk_retryable(&err), sdk_failure(err))),
    }

    // Outside us-east-1, AWS requires the region as a location constraint.
    let constraint = c
        .config()
        .region()
        .map(|r| r.as_ref())
        .filter(|r| *r != crate::config::DEFAULT_REGION)
        .map(|r| {
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(r))
                .build()
        });
    match c
        .create_bucket()
        .bucket(bucket)
        .set_create_bucket_configuration(constraint)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(err)
            if err.as_service_error().is_some_and(|e| {
                e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
            }) =>
        {
            // Someone created it between our head and create. "Already exists" may also
            // mean another account owns it, so only a successful head settles it.
            c.head_bucket()
                .bucket(bucket)
                .send()
                .await
                .map(|_| ())
                .map_err(|head_err| create_err(sdk_retryable(&head_err), sdk_failure(head_err)))
        }
        Err(err) => Err(create_err(sdk_retryable(&err), sdk_failure(err))),
    }
}

fn not_found(bucket: &str, key: &str) -> ObjStoreError {
    ObjStoreError::NotFound {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    }
}
