//! ResultWriter: the Step Functions result layout under a run's result prefix.
//!
//! `manifest.json` lists the `SUCCEEDED_n.json`, `FAILED_n.json` and `PENDING_n.json` files;
//! each holds an array of child execution results with Step Functions' field names, so
//! tooling written against Distributed Map's ResultWriter reads fleetmap's output unchanged.
//! Aborted child executions go to `PENDING_n.json`, as Step Functions does for executions
//! that never finished.

use aws_sdk_s3::Client;
use bytes::Bytes;
use fleetmap_objstore::{S3Uri, put_bytes};
use serde_json::{Value, json};

use crate::run::{ExecRecord, ExecState, MapRun};

/// Entries per result file. Step Functions splits at 5 GB; a smaller split keeps each file
/// easy to fetch and parse.
pub const ENTRIES_PER_FILE: usize = 10_000;

#[derive(Debug, thiserror::Error)]
#[error("writing results of run {run} to {prefix}: {reason}")]
pub struct ResultWriterError {
    pub run: String,
    pub prefix: String,
    pub reason: String,
}

/// The files to write: (key, JSON body). Pure, so it is tested without a store.
pub fn render(run: &MapRun, prefix: &S3Uri) -> Vec<(String, Vec<u8>)> {
    let base = run_prefix(prefix, &run.id.0);
    let mut files = Vec::new();
    let mut listing = serde_json::Map::new();
    for (label, states) in [
        ("SUCCEEDED", &[ExecState::Succeeded][..]),
        ("FAILED", &[ExecState::Failed, ExecState::TimedOut][..]),
        ("PENDING", &[ExecState::Aborted][..]),
    ] {
        let entries: Vec<Value> = run
            .records()
            .filter(|r| states.contains(&r.state))
            .map(|r| entry(run, r))
            .collect();
        let mut listed = Vec::new();
        for (n, chunk) in entries.chunks(ENTRIES_PER_FILE).enumerate() {
            let key = format!("{base}{label}_{n}.json");
            let body = serde_json::to_vec(chunk).unwrap_or_default();
            listed.push(json!({ "Key": key, "Size": body.len() }));
            files.push((key, body));
        }
        listing.insert(label.to_owned(), Value::Array(listed));
    }
    let manifest = json!({
        "DestinationBucket": prefix.bucket,
        "MapRunArn": map_run_arn(&run.id.0),
        "ResultFiles": Value::Object(listing),
    });
    files.push((
        format!("{base}manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    ));
    files
}

/// Writes rendered files in order; the manifest is last, so its presence means the set is
/// complete. Returns the manifest's key.
pub async fn write_files(
    s3: &Client,
    run: &str,
    prefix: &S3Uri,
    files: Vec<(String, Vec<u8>)>,
) -> Result<String, ResultWriterError> {
    let mut manifest_key = String::new();
    for (key, body) in files {
        put_bytes(
            s3,
            &prefix.bucket,
            &key,
            Bytes::from(body),
            "application/json",
        )
        .await
        .map_err(|e| ResultWriterError {
            run: run.to_owned(),
            prefix: prefix.to_string(),
            reason: e.to_string(),
        })?;
        manifest_key = key;
    }
    Ok(manifest_key)
}

fn run_prefix(prefix: &S3Uri, run_id: &str) -> String {
    let p = prefix.key.trim_end_matches('/');
    if p.is_empty() {
        format!("{run_id}/")
    } else {
        format!("{p}/{run_id}/")
    }
}

pub fn map_run_arn(run_id: &str) -> String {
    format!("arn:fleetmap:states:::mapRun:{run_id}")
}

fn rfc3339(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

fn entry(run: &MapRun, r: &ExecRecord) -> Value {
    let child = run.child(r.execution);
    let input = child.map(|c| {
        json!({
            "Source": format!("s3://{}/{}", c.bucket, c.key),
            "Index": c.first_index,
            "RowGroups": c.row_groups.map(|(a, b)| vec![a, b]),
        })
    });
    let status = match r.state {
        ExecState::Succeeded => "SUCCEEDED",
        ExecState::Failed => "FAILED",
        ExecState::TimedOut => "TIMED_OUT",
        ExecState::Aborted => "ABORTED",
        ExecState::Pending => "PENDING",
        ExecState::Running => "RUNNING",
    };
    let mut e = json!({
        "ExecutionArn": format!("{}:{}", map_run_arn(&run.id.0), r.execution),
        "Name": format!("{}-{:06}", run.id.0, r.execution),
        "Input": input.map(|v| v.to_string()),
        "InputDetails": { "Included": true },
        "Status": status,
        "StartDate": rfc3339(r.started_ms),
        "StopDate": rfc3339(r.finished_ms),
        "RedriveCount": run.redrive_count,
        "Attempt": r.attempt,
        "Worker": r.worker_id,
    });
    if r.state == ExecState::Succeeded {
        e["Output"] = Value::String(
            json!({
                "readings": r.readings,
                "anomalies": {
                    "temperature_spike": r.anomalies.temperature_spike,
                    "humidity_anomaly": r.anomalies.humidity_anomaly,
                    "low_battery": r.anomalies.low_battery,
                    "readings_with_anomalies": r.anomalies.readings_with_anomalies,
                },
                "resultKey": r.result_key,
            })
            .to_string(),
        );
        e["OutputDetails"] = json!({ "Included": true });
    }
    if let Some(err) = &r.error {
        e["Error"] = Value::String(err.clone());
        e["Cause"] = Value::String(r.cause.clone().unwrap_or_default());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{ChildSpec, RunId, Tolerance};
    use fleetmap_protocol::{AnomalyCounts, ItemStatus, OutcomeMessage};

    #[test]
    fn layout_lists_every_file_with_its_size() {
        let mut run = MapRun::new(
            RunId("r1".into()),
            None,
            5,
            Tolerance {
                count: Some(5),
                percentage: None,
            },
            0,
        );
        run.set_children(
            (0..3)
                .map(|i| ChildSpec {
                    bucket: "data".into(),
                    key: format!("f{i}"),
                    row_groups: None,
                    first_index: 0,
                    items: None,
                })
                .collect(),
            0,
        );
        run.open(0);
        while run.next_dispatch(0).is_some() {}
        for (i, status) in [
            ItemStatus::Succeeded {
                readings: 24,
                anomalies: AnomalyCounts::default(),
                devices: vec![],
                devices_truncated: false,
                result_key: "k0".into(),
            },
            ItemStatus::Failed {
                error: "FleetMap.ObjectNotFound".into(),
                cause: "s3://data/f1 does not exist".into(),
            },
        ]
        .into_iter()
        .enumerate()
        {
            run.apply_outcome(
                &OutcomeMessage {
                    run_id: "r1".into(),
                    execution: i as u32,
                    attempt: 1,
                    worker_id: "w".into(),
                    started_ms: 1,
                    finished_ms: 2,
                    bytes_read: 0,
                    status,
                },
                1,
            );
        }
        let prefix = S3Uri::parse_prefix("s3://results/runs/").unwrap();
        let files = render(&run, &prefix);
        let keys: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "runs/r1/SUCCEEDED_0.json",
                "runs/r1/FAILED_0.json",
                "runs/r1/manifest.json"
            ]
        );
        let manifest: Value = serde_json::from_slice(&files[2].1).unwrap();
        assert_eq!(manifest["DestinationBucket"], "results");
        assert_eq!(
            manifest["ResultFiles"]["FAILED"][0]["Size"],
            files[1].1.len()
        );
        assert_eq!(manifest["ResultFiles"]["PENDING"], json!([]));
        let failed: Value = serde_json::from_slice(&files[1].1).unwrap();
        assert_eq!(failed[0]["Error"], "FleetMap.ObjectNotFound");
        assert!(
            failed[0]["Cause"]
                .as_str()
                .unwrap()
                .contains("s3://data/f1")
        );
        let ok: Value = serde_json::from_slice(&files[0].1).unwrap();
        let output: Value = serde_json::from_str(ok[0]["Output"].as_str().unwrap()).unwrap();
        assert_eq!(output["readings"], 24);
    }
}
