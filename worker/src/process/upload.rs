//! The result object, streamed to S3 while the item is still being processed.
//!
//! A file of millions of readings makes gigabytes of JSON lines, so the records are never
//! held whole: the encoder hands over pieces through a bounded channel, and [`upload`]
//! writes them as a multipart upload of [`PART_SIZE`] parts, at most
//! [`MAX_PARTS_IN_FLIGHT`] at once. Every part but the last is exactly `PART_SIZE` long, as
//! the AWS CLI and SDK transfer managers cut them (see [`cut_part`]): a store can then put
//! each part at its final offset as it arrives and complete the upload without copying it
//! again (fleetmap's loopback server does; B3 large spent 17 % of that server's CPU on the
//! copy). Output that fits in one part (most items) is written in one PutObject, as before. Memory per item is therefore bounded by about
//! `PART_SIZE × (MAX_PARTS_IN_FLIGHT + 1)` plus the channel, whatever the file size.
//!
//! The object appears only when the upload completes, and it completes only when the
//! encoder says every record was handed over (the `commit` signal): the channel closing is
//! not enough, since an item whose reading fails half way, or that is dropped on timeout,
//! closes it too. Such an upload is aborted (or, dropped with its item, never completed),
//! as is one that fails, so a half-written result is never visible; a redelivered item
//! writes the same bytes to the same key.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use fleetmap_objstore::DataClient;
use fleetmap_objstore::ObjStoreError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::error::WorkerError;
use crate::reader::from_store;

/// Size of each multipart part (S3's minimum is 5 MiB; 10,000 parts make 80 GiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once per item.
pub const MAX_PARTS_IN_FLIGHT: usize = 2;
/// Pieces the encoder may queue before it waits for the uploader.
pub const CHANNEL_PIECES: usize = 1;

/// Where the records go.
#[derive(Debug, Clone)]
pub struct Target {
    pub bucket: String,
    pub key: String,
    pub content_type: &'static str,
}

/// A bounded channel from the encoder (on a blocking thread) to [`upload`].
pub fn channel() -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    mpsc::channel(CHANNEL_PIECES)
}

/// Writes everything received on `pieces` to the target, in order, until the senders are
/// dropped, and then makes the object visible if `commit` was sent. Returns the object's
/// length, or `None` when the encoder gave up without committing: then nothing was written
/// (a multipart upload begun is aborted) and the encoder's error is the item's.
pub async fn upload(
    s3: DataClient,
    target: Target,
    mut pieces: mpsc::Receiver<Vec<u8>>,
    commit: oneshot::Receiver<()>,
) -> Result<Option<u64>, WorkerError> {
    let mut pending: Vec<u8> = Vec::new();
    let mut multipart: Option<Multipart> = None;
    let mut total = 0u64;
    while let Some(piece) = pieces.recv().await {
        total += piece.len() as u64;
        if pending.is_empty() {
            pending = piece;
        } else {
            pending.extend_from_slice(&piece);
        }
        // The encoder sends whole parts; this only cuts pieces that arrive otherwise.
        while let Some(part) = cut_part(&mut pending) {
            let part = Bytes::from(part);
            let m = match &mut multipart {
                Some(m) => m,
                None => multipart.insert(Multipart::create(&s3, &target).await?),
            };
            if let Err(e) = m.send(&s3, &target, part).await {
                m.abort(&s3, &target).await;
                return Err(e);
            }
        }
    }
    if commit.await.is_err() {
        if let Some(mut m) = multipart {
            m.abort(&s3, &target).await;
        }
        return Ok(None);
    }
    match multipart {
        None => {
            s3.put_bytes(
                &target.bucket,
                &target.key,
                Bytes::from(pending),
                target.content_type,
            )
            .await
            .map_err(from_put)?;
        }
        Some(mut m) => {
            let finished = async {
                if !pending.is_empty() {
                    m.send(&s3, &target, Bytes::from(pending)).await?;
                }
                m.complete(&s3, &target).await
            }
            .await;
            if let Err(e) = finished {
                m.abort(&s3, &target).await;
                return Err(e);
            }
        }
    }
    Ok(Some(total))
}

/// Takes the first [`PART_SIZE`] bytes of `records` as a part once there are that many,
/// leaving the rest (copied into a fresh buffer, sized for a part) to start the next.
pub fn cut_part(records: &mut Vec<u8>) -> Option<Vec<u8>> {
    if records.len() < PART_SIZE {
        return None;
    }
    if records.len() == PART_SIZE {
        return Some(std::mem::take(records));
    }
    let mut next = Vec::with_capacity(PART_SIZE);
    next.extend_from_slice(&records[PART_SIZE..]);
    records.truncate(PART_SIZE);
    Some(std::mem::replace(records, next))
}

/// An open multipart upload and its parts.
struct Multipart {
    upload_id: String,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart, WorkerError>>,
    done: Vec<CompletedPart>,
}

impl Multipart {
    async fn create(s3: &DataClient, t: &Target) -> Result<Self, WorkerError> {
        let out = s3
            .create_multipart_upload()
            .bucket(&t.bucket)
            .key(&t.key)
            .content_type(t.content_type)
            .send()
            .await
            .map_err(|e| write_error(t, e))?;
        let upload_id = out.upload_id().unwrap_or_default().to_owned();
        Ok(Multipart {
            upload_id,
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
        })
    }

    /// Starts uploading `body` as the next part, first waiting for a slot.
    async fn send(&mut self, s3: &DataClient, t: &Target, body: Bytes) -> Result<(), WorkerError> {
        while self.in_flight.len() >= MAX_PARTS_IN_FLIGHT {
            self.reap(t).await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let request = s3
            .upload_part()
            .bucket(&t.bucket)
            .key(&t.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(body));
        let t = t.clone();
        self.in_flight.spawn(async move {
            let out = request.send().await.map_err(|e| write_error(&t, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                .set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_owned))
                .set_checksum_crc64_nvme(out.checksum_crc64_nvme().map(str::to_owned))
                .set_checksum_sha1(out.checksum_sha1().map(str::to_owned))
                .set_checksum_sha256(out.checksum_sha256().map(str::to_owned))
                .build())
        });
        Ok(())
    }

    /// Waits for one part in flight.
    async fn reap(&mut self, t: &Target) -> Result<(), WorkerError> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part = joined.map_err(|e| WorkerError::Crashed {
                bucket: t.bucket.clone(),
                key: t.key.clone(),
                source: Box::new(e),
            })??;
            self.done.push(part);
        }
        Ok(())
    }

    async fn complete(&mut self, s3: &DataClient, t: &Target) -> Result<(), WorkerError> {
        while !self.in_flight.is_empty() {
            self.reap(t).await?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        s3.complete_multipart_upload()
            .bucket(&t.bucket)
            .key(&t.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| write_error(t, e))?;
        Ok(())
    }

    /// Best effort: a leftover upload only costs storage until the bucket's lifecycle rule
    /// removes it, and the item's own error is the one worth reporting.
    async fn abort(&mut self, s3: &DataClient, t: &Target) {
        self.in_flight.abort_all();
        if let Err(e) = s3
            .abort_multipart_upload()
            .bucket(&t.bucket)
            .key(&t.key)
            .upload_id(&self.upload_id)
            .send()
            .await
        {
            tracing::warn!(bucket = %t.bucket, key = %t.key, error = %e, "aborting multipart upload failed");
        }
    }
}

fn write_error<E>(
    t: &Target,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> WorkerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ConstructionFailure(_) => false,
        _ => {
            matches!(status, Some(429 | 500..=599))
                || matches!(
                    err.code().unwrap_or_default(),
                    "SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout"
                )
        }
    };
    WorkerError::ResultWrite {
        bucket: t.bucket.clone(),
        key: t.key.clone(),
        retryable,
        source: fleetmap_objstore::error::sdk_failure(err),
    }
}

fn from_put(e: ObjStoreError) -> WorkerError {
    match e {
        ObjStoreError::Put {
            bucket,
            key,
            retryable,
            source,
        } => WorkerError::ResultWrite {
            bucket,
            key,
            retryable,
            source,
        },
        other => from_store(other, "PutObject"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_cut_at_exactly_part_size_and_the_rest_carried() {
        let mut short = vec![1u8; PART_SIZE - 1];
        assert_eq!(cut_part(&mut short), None);
        assert_eq!(short.len(), PART_SIZE - 1);

        let mut exact = vec![2u8; PART_SIZE];
        assert_eq!(cut_part(&mut exact).map(|p| p.len()), Some(PART_SIZE));
        assert!(exact.is_empty());

        let mut over: Vec<u8> = (0..PART_SIZE + 10).map(|i| i as u8).collect();
        let whole = over.clone();
        let part = cut_part(&mut over).unwrap();
        assert_eq!(part[..], whole[..PART_SIZE]);
        assert_eq!(over[..], whole[PART_SIZE..]);
        assert!(over.capacity() >= PART_SIZE, "the rest has room for a part");
    }
}
