//! Bad input ends in a FAILED run or child execution with a Step Functions error name and a
//! cause that names the input — never a panic or a hang.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use fleetmap_coordinator::{ItemSource, RunDescription, RunStatus, Tolerance};
use fleetmap_sample::GenConfig;
use fleetmap_tests::{DATA, Harness};
use parquet::arrow::ArrowWriter;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn manifest(uri: String) -> ItemSource {
    ItemSource::AthenaManifest { uri }
}

/// The FAILED_n.json entries of a finished run.
async fn failed_entries(h: &Harness, d: &RunDescription) -> Vec<Value> {
    let manifest = h
        .get_json(d.result_writer_manifest.as_deref().expect("manifest"))
        .await;
    let bucket = manifest["DestinationBucket"].as_str().unwrap().to_owned();
    let mut out = Vec::new();
    for f in manifest["ResultFiles"]["FAILED"].as_array().unwrap() {
        let entries = h
            .get_json(&format!("s3://{bucket}/{}", f["Key"].as_str().unwrap()))
            .await;
        out.extend(entries.as_array().unwrap().iter().cloned());
    }
    out
}

fn parquet_without_humidity() -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("deviceid", DataType::Utf8, false),
        Field::new("timestamp", DataType::Utf8, false),
        Field::new("temperature", DataType::Float64, true),
        Field::new("batterylevel", DataType::Float64, true),
        Field::new("latitude", DataType::Float64, true),
        Field::new("longitude", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["sensor-009"])),
            Arc::new(StringArray::from(vec!["2024-01-15T00:00:00"])),
            Arc::new(Float64Array::from(vec![21.5])),
            Arc::new(Float64Array::from(vec![80.0])),
            Arc::new(Float64Array::from(vec![47.6])),
            Arc::new(Float64Array::from(vec![-122.3])),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_manifest_fails_the_run_with_item_reader_failed() {
    let h = Harness::start(1, 2).await;
    let uri = format!("s3://{DATA}/nope/manifest.csv");
    let (_, d) = h
        .run_to_end(
            Harness::spec(manifest(uri.clone()), 5, Tolerance::default()),
            LIMIT,
        )
        .await;
    assert_eq!(d.status, RunStatus::Failed);
    assert_eq!(d.error.as_deref(), Some("States.ItemReaderFailed"));
    assert!(d.cause.as_deref().unwrap().contains(&uri), "{:?}", d.cause);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_manifest_line_is_named_by_its_number() {
    let h = Harness::start(1, 2).await;
    h.put(
        DATA,
        "m/manifest.csv",
        b"s3://fleetmap-data/a/part-0\nnot-a-uri\n".to_vec(),
    )
    .await;
    let (_, d) = h
        .run_to_end(
            Harness::spec(
                manifest(format!("s3://{DATA}/m/manifest.csv")),
                5,
                Tolerance::default(),
            ),
            LIMIT,
        )
        .await;
    assert_eq!(d.status, RunStatus::Failed);
    assert_eq!(d.error.as_deref(), Some("States.ItemReaderFailed"));
    let cause = d.cause.unwrap();
    assert!(
        cause.contains("line 2") && cause.contains("not-a-uri"),
        "{cause}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_garbage_and_columnless_objects_fail_their_child_executions() {
    let h = Harness::start(2, 2).await;
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &GenConfig::default())
        .await
        .unwrap();
    h.put(
        DATA,
        "bad/not-parquet",
        b"this is a CSV, not Parquet\n1,2,3\n".to_vec(),
    )
    .await;
    h.put(DATA, "bad/no-humidity", parquet_without_humidity())
        .await;
    let mut lines: Vec<String> = generated
        .files
        .iter()
        .map(|k| format!("s3://{DATA}/{k}"))
        .collect();
    lines.push(format!("s3://{DATA}/bad/missing-object"));
    lines.push(format!("s3://{DATA}/bad/not-parquet"));
    lines.push(format!("s3://{DATA}/bad/no-humidity"));
    h.put(
        DATA,
        "bad/manifest.csv",
        (lines.join("\n") + "\n").into_bytes(),
    )
    .await;

    // Three bad of eight: tolerated at 50 %, so the run succeeds with three failures.
    let tolerance = Tolerance {
        count: None,
        percentage: Some(50.0),
    };
    let (_, d) = h
        .run_to_end(
            Harness::spec(
                manifest(format!("s3://{DATA}/bad/manifest.csv")),
                8,
                tolerance,
            ),
            LIMIT,
        )
        .await;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    assert_eq!(
        (d.execution_counts.succeeded, d.execution_counts.failed),
        (5, 3)
    );
    assert_eq!(d.readings, 120);

    let failed = failed_entries(&h, &d).await;
    let find = |key: &str| {
        failed
            .iter()
            .find(|e| e["Input"].as_str().unwrap_or("").contains(key))
            .unwrap_or_else(|| panic!("no FAILED entry for {key}: {failed:#?}"))
            .clone()
    };
    let missing = find("bad/missing-object");
    assert_eq!(missing["Error"], "FleetMap.ObjectNotFound");
    assert!(
        missing["Cause"]
            .as_str()
            .unwrap()
            .contains("bad/missing-object")
    );
    let garbage = find("bad/not-parquet");
    assert_eq!(garbage["Error"], "FleetMap.InvalidInput");
    assert!(
        garbage["Cause"]
            .as_str()
            .unwrap()
            .contains("bad/not-parquet")
    );
    let columnless = find("bad/no-humidity");
    assert_eq!(columnless["Error"], "FleetMap.MissingColumn");
    let cause = columnless["Cause"].as_str().unwrap();
    assert!(
        cause.contains("humidity") && cause.contains("bad/no-humidity"),
        "{cause}"
    );

    // Without tolerance the same input fails the run with the Step Functions error.
    let (_, d) = h
        .run_to_end(
            Harness::spec(
                manifest(format!("s3://{DATA}/bad/manifest.csv")),
                8,
                Tolerance::default(),
            ),
            LIMIT,
        )
        .await;
    assert_eq!(d.status, RunStatus::Failed);
    assert_eq!(
        d.error.as_deref(),
        Some("States.ExceedToleratedFailureThreshold")
    );
    h.stop().await;
}
