//! One item end to end: read the object, run the kernel and encoder, write the records.
//!
//! Reading is async I/O; decoding, detection and encoding are CPU work and run on tokio's
//! blocking pool one chunk (a Parquet row group, or a CSV / JSONL batch) at a time, so the
//! runtime that drives AMQP heartbeats and other items is never held for long. While one
//! chunk is being processed the next is already being fetched, and at most those two are in
//! memory besides the output.
//!
//! The result object's key depends only on the run and the child execution, and every byte
//! in it only on the item (the analysis time comes from the run's start, not the clock), so
//! a redelivered item overwrites the same object with the same bytes.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::DateTime;
use fleetmap_objstore::ObjStoreError;
use fleetmap_protocol::messages::MAX_DEVICES_PER_OUTCOME;
use fleetmap_protocol::{AnomalyCounts, DeviceAnomalies, ItemMessage, Thresholds};
use tokio::task::JoinHandle;

use crate::encode::{RecordContext, encode_records};
use crate::error::WorkerError;
use crate::kernel::{Readings, count_devices, detect};
use crate::reader::{Chunk, ItemReader, from_store};

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

/// What processing one chunk produced.
#[derive(Default)]
struct ChunkOutput {
    records: Vec<u8>,
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
}

/// Decodes, detects and encodes one chunk. Runs on the blocking pool.
fn process_chunk(job: &Job, chunk: Chunk) -> Result<ChunkOutput, WorkerError> {
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
            &mut out.records,
        );
        out.readings += d.readings;
        out.counts.add(&d.counts);
    }
    Ok(out)
}

/// Reads the item's object (or row groups), writes its analytics records to
/// `result_key(item)` and reports the counts. An item with no readings still writes an
/// (empty) object, so the result set always has one object per child execution.
pub async fn process_item(s3: &Client, item: &ItemMessage) -> Result<ItemReport, WorkerError> {
    let invalid = |reason: String| WorkerError::InvalidItem {
        run_id: item.run_id.clone(),
        execution: item.execution,
        reason,
    };
    let ctx = RecordContext::new(item.analysis_time_ms).ok_or_else(|| {
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
    });

    let mut reader = ItemReader::open(s3, item).await?;
    let mut total = ChunkOutput::default();
    let mut running: Option<JoinHandle<Result<ChunkOutput, WorkerError>>> = None;
    loop {
        // Fetch the next chunk while the previous one is processed.
        let next = reader.next_chunk().await?;
        if let Some(task) = running.take() {
            merge(&mut total, join(task, &job).await?);
        }
        let Some(chunk) = next else { break };
        let job = Arc::clone(&job);
        running = Some(tokio::task::spawn_blocking(move || {
            process_chunk(&job, chunk)
        }));
    }

    let key = result_key(item);
    fleetmap_objstore::put_bytes(
        s3,
        &item.result.bucket,
        &key,
        Bytes::from(total.records),
        RESULT_CONTENT_TYPE,
    )
    .await
    .map_err(|e| match e {
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
    })?;

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
    if total.records.is_empty() {
        total.records = part.records;
    } else {
        total.records.extend_from_slice(&part.records);
    }
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
