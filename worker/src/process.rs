//! One item end to end: read the object, run the kernel and encoder, write the records.
//!
//! Reading is async I/O; decoding, detection and encoding are CPU work and run on tokio's
//! blocking pool one chunk (a Parquet row group, or a CSV / JSONL batch) at a time, so the
//! runtime that drives AMQP heartbeats and other items is never held for long. While one
//! chunk is being processed the next is already being fetched.
//!
//! Memory is bounded whatever the object's size: at most two row groups are held (the one
//! being decoded and the one being fetched; a row group above
//! [`ProcessOptions::max_row_group_bytes`] is refused up front), and the records stream to
//! S3 as they are encoded, a part at a time ([`upload`]), instead of being collected.
//!
//! The result object's key depends only on the run and the child execution, and every byte
//! in it only on the item (the analysis time comes from the run's start, not the clock), so
//! a redelivered item overwrites the same object with the same bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::DateTime;
use fleetmap_objstore::DataClient;
use fleetmap_protocol::messages::MAX_DEVICES_PER_OUTCOME;
use fleetmap_protocol::{AnomalyCounts, DeviceAnomalies, ItemMessage, Thresholds};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::encode::{RecordContext, encode_records};
use crate::error::WorkerError;
use crate::kernel::{Readings, count_devices, detect};
use crate::reader::{Chunk, DEFAULT_MAX_ROW_GROUP_BYTES, ItemReader};

mod upload;

pub use upload::{MAX_PARTS_IN_FLIGHT, PART_SIZE};

/// Content type of the result objects (JSON lines).
pub const RESULT_CONTENT_TYPE: &str = "application/x-ndjson";

/// What one item produced, for its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemReport {
    pub readings: u64,
    pub anomalies: AnomalyCounts,
    /// Devices with anomalous readings, sorted by id, at most [`MAX_DEVICES_PER_OUTCOME`].
    pub devices: Vec<DeviceAnomalies>,
    /// True when more devices had anomalies than are listed.
    pub devices_truncated: bool,
    /// Key of the analytics records in `item.result.bucket`.
    pub result_key: String,
    /// Bytes fetched from the object store.
    pub bytes_read: u64,
}

/// `{prefix}/{YYYY}/{MM}/{DD}/{HH}/fleetmap-{run_id}-{execution:06}.json`, the hour being the
/// run's start (UTC), as Firehose partitions the sample's output. Per (run, execution), not
/// per attempt, so a retry or redelivery replaces the same object. An analysis time outside
/// the calendar (which [`process_item`] rejects before writing) falls back to the epoch.
pub fn result_key(item: &ItemMessage) -> String {
    let t = DateTime::from_timestamp_millis(item.analysis_time_ms).unwrap_or_default();
    let partition = t.format("%Y/%m/%d/%H");
    let name = format!("fleetmap-{}-{:06}.json", item.run_id, item.execution);
    let prefix = item.result.prefix.trim_end_matches('/');
    if prefix.is_empty() {
        format!("{partition}/{name}")
    } else {
        format!("{prefix}/{partition}/{name}")
    }
}

/// What processing one chunk produced. The records themselves went to the uploader,
/// except for `carry`: the tail too short to send yet, which the next chunk continues.
#[derive(Default)]
struct ChunkOutput {
    carry: Vec<u8>,
    readings: u64,
    counts: AnomalyCounts,
    devices: BTreeMap<String, u64>,
}

/// Everything a blocking task needs, shared rather than cloned per chunk.
struct Job {
    bucket: String,
    key: String,
    thresholds: Thresholds,
    ctx: RecordContext,
    /// Map context `Index` of the item's first reading.
    first_index: u64,
}

/// Decodes, detects and encodes one chunk, batch by batch, handing the records to the
/// uploader a part at a time. Runs on the blocking pool; waits there (never on the async
/// runtime) when the uploader is behind.
fn process_chunk(
    job: &Job,
    chunk: Chunk,
    mut first_index: u64,
    mut records: Vec<u8>,
    to_upload: &mpsc::Sender<Vec<u8>>,
) -> Result<ChunkOutput, WorkerError> {
    let mut out = ChunkOutput::default();
    for batch in chunk.into_batches(&job.bucket, &job.key) {
        let batch = batch?;
        let readings = Readings::from_batch(&batch, &job.bucket, &job.key)?;
        let d = detect(&readings, &job.thresholds);
        count_devices(&readings, &d.mask, &mut out.devices);
        encode_records(
            &readings,
            &d.mask,
            &job.thresholds,
            &job.ctx,
            first_index,
            &mut records,
        );
        first_index += readings.len() as u64;
        out.readings += d.readings;
        out.counts.add(&d.counts);
        // Whole parts only, the overflow carried into the next (see upload.rs).
        while let Some(full) = upload::cut_part(&mut records) {
            if to_upload.blocking_send(full).is_err() {
                // The uploader stopped; its error is the one the item reports.
                return Err(UploadStopped.into_error(job));
            }
        }
    }
    out.carry = records;
    Ok(out)
}

/// The uploader gave up while a chunk was still producing records.
struct UploadStopped;

impl UploadStopped {
    fn into_error(self, job: &Job) -> WorkerError {
        WorkerError::Crashed {
            bucket: job.bucket.clone(),
            key: job.key.clone(),
            source: "the result upload stopped".into(),
        }
    }
}

/// Reads the item's object (or row groups), writes its analytics records to
/// `result_key(item)` and reports the counts. An item with no readings still writes an
/// (empty) object, so the result set always has one object per child execution.
///
/// Memory stays bounded whatever the object's size: at most two row groups (the one being
/// decoded and the one being fetched) and a few result parts (see [`upload`]) are held.
pub async fn process_item(s3: &DataClient, item: &ItemMessage) -> Result<ItemReport, WorkerError> {
    process_item_with(s3, item, &ProcessOptions::default()).await
}

/// Limits that keep one item's memory bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOptions {
    /// A Parquet row group whose needed column chunks are larger than this fails with
    /// [`WorkerError::RowGroupTooLarge`] before anything is fetched.
    pub max_row_group_bytes: u64,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            max_row_group_bytes: DEFAULT_MAX_ROW_GROUP_BYTES,
        }
    }
}

/// [`process_item`] with explicit limits.
pub async fn process_item_with(
    s3: &DataClient,
    item: &ItemMessage,
    options: &ProcessOptions,
) -> Result<ItemReport, WorkerError> {
    let invalid = |reason: String| WorkerError::InvalidItem {
        run_id: item.run_id.clone(),
        execution: item.execution,
        reason,
    };
    let ctx = RecordContext::new(item.analysis_time_ms, item.source_uri()).ok_or_else(|| {
        invalid(format!(
            "analysis time {} ms is out of range",
            item.analysis_time_ms
        ))
    })?;
    item.thresholds.validate().map_err(invalid)?;
    let job = Arc::new(Job {
        bucket: item.bucket.clone(),
        key: item.key.clone(),
        thresholds: item.thresholds,
        ctx,
        first_index: item.first_index,
    });

    let mut reader = ItemReader::open_with(s3, item, options.max_row_group_bytes).await?;
    let key = result_key(item);
    let (to_upload, pieces) = upload::channel();
    let (commit, committed) = oneshot::channel();
    // Both in this task, not the uploader on a task of its own: dropping the item (its
    // timeout) then drops the upload with it, instead of leaving an uploader that takes
    // the closed channel for the end of the records. A small item also never crosses
    // threads for it.
    let target = upload::Target {
        bucket: item.result.bucket.clone(),
        key: key.clone(),
        content_type: RESULT_CONTENT_TYPE,
    };
    let (processed, uploaded) = tokio::join!(
        process_chunks(&mut reader, &job, to_upload, commit),
        upload::upload(s3.clone(), target, pieces, committed),
    );
    // A failed upload explains a stopped encoder, so it wins; otherwise the reading error.
    let total = match (processed, uploaded) {
        (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
        (Ok(total), Ok(Some(_))) => total,
        (Ok(_), Ok(None)) => {
            return Err(WorkerError::Crashed {
                bucket: job.bucket.clone(),
                key: job.key.clone(),
                source: "the result upload was abandoned after every record was handed over".into(),
            });
        }
    };

    let devices_truncated = total.devices.len() > MAX_DEVICES_PER_OUTCOME;
    let devices = total
        .devices
        .into_iter()
        .take(MAX_DEVICES_PER_OUTCOME)
        .map(|(deviceid, readings_with_anomalies)| DeviceAnomalies {
            deviceid,
            readings_with_anomalies,
        })
        .collect();
    Ok(ItemReport {
        readings: total.readings,
        anomalies: total.counts,
        devices,
        devices_truncated,
        result_key: key,
        bytes_read: reader.bytes_read(),
    })
}

/// Runs every chunk through [`process_chunk`] on the blocking pool, fetching the next
/// chunk while the current one is processed, then hands the last records to the uploader
/// and sends `commit`. Dropping `to_upload` on return ends the upload; without `commit`
/// (any error) it is abandoned.
async fn process_chunks(
    reader: &mut ItemReader,
    job: &Arc<Job>,
    to_upload: mpsc::Sender<Vec<u8>>,
    commit: oneshot::Sender<()>,
) -> Result<ChunkOutput, WorkerError> {
    let mut total = ChunkOutput::default();
    let mut running: Option<JoinHandle<Result<ChunkOutput, WorkerError>>> = None;
    loop {
        // Fetch the next chunk while the previous one is processed.
        let next = reader.next_chunk().await;
        if let Some(task) = running.take() {
            merge(&mut total, join(task, job).await?);
        }
        let Some(chunk) = next? else { break };
        let (job, tx) = (Arc::clone(job), to_upload.clone());
        let carry = std::mem::take(&mut total.carry);
        // Chunks are processed one after another and merged before the next starts, so
        // the readings counted so far are exactly the rows before this chunk.
        let first_index = job.first_index + total.readings;
        running = Some(tokio::task::spawn_blocking(move || {
            process_chunk(&job, chunk, first_index, carry, &tx)
        }));
    }
    let last = std::mem::take(&mut total.carry);
    if to_upload.send(last).await.is_err() || commit.send(()).is_err() {
        return Err(UploadStopped.into_error(job));
    }
    Ok(total)
}

async fn join(
    task: JoinHandle<Result<ChunkOutput, WorkerError>>,
    job: &Job,
) -> Result<ChunkOutput, WorkerError> {
    task.await.map_err(|e| WorkerError::Crashed {
        bucket: job.bucket.clone(),
        key: job.key.clone(),
        source: Box::new(e),
    })?
}

fn merge(total: &mut ChunkOutput, part: ChunkOutput) {
    total.carry = part.carry;
    total.readings += part.readings;
    total.counts.add(&part.counts);
    for (id, n) in part.devices {
        *total.devices.entry(id).or_default() += n;
    }
}

#[cfg(test)]
mod tests {
    use fleetmap_protocol::{InputType, ResultTarget};

    use super::*;

    fn item(prefix: &str, ms: i64) -> ItemMessage {
        ItemMessage {
            run_id: "run-7".into(),
            execution: 42,
            attempt: 3,
            input_type: InputType::Parquet,
            bucket: "data".into(),
            key: "k".into(),
            row_groups: None,
            first_index: 0,
            result: ResultTarget {
                bucket: "results".into(),
                prefix: prefix.into(),
            },
            analysis_time_ms: ms,
            thresholds: Thresholds::default(),
        }
    }

    #[test]
    fn result_key_is_partitioned_by_the_runs_start_hour() {
        // 2026-11-27T20:45:00.123Z
        assert_eq!(
            result_key(&item("analytics", 1_795_812_300_123)),
            "analytics/2026/11/27/20/fleetmap-run-7-000042.json"
        );
        assert_eq!(
            result_key(&item("", 0)),
            "1970/01/01/00/fleetmap-run-7-000042.json"
        );
        assert_eq!(
            result_key(&item("a/b/", 0)),
            "a/b/1970/01/01/00/fleetmap-run-7-000042.json"
        );
    }

    #[test]
    fn result_key_ignores_the_attempt() {
        let mut again = item("p", 1_795_812_300_123);
        again.attempt = 9;
        assert_eq!(
            result_key(&again),
            result_key(&item("p", 1_795_812_300_123))
        );
    }
}
