//! `process_item` against a real S3-protocol server on loopback (s3s-fs): ranged GETs,
//! projection, row-group selection, CSV / JSONL streams and the result object.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Float64Array, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use fleetmap_objstore::local::LocalS3;
use fleetmap_objstore::{ensure_bucket, get_bytes, put_bytes};
use fleetmap_protocol::{AnomalyCounts, InputType, ItemMessage, ResultTarget, Thresholds};
use fleetmap_worker::WorkerError;
use fleetmap_worker::process::{process_item, result_key};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

const DATA: &str = "data";
const RESULTS: &str = "results";
/// 2026-11-27T20:45:00.123Z
const ANALYSIS_MS: i64 = 1_795_812_300_123;
const DEVICES: usize = 5;
const HOURS: usize = 24;
const ROWS: usize = DEVICES * HOURS;

/// One reading of the generated fleet: five devices, 24 hourly readings each, with
/// anomalies of every kind and a few nulls.
#[derive(Debug, Clone)]
struct Row {
    deviceid: String,
    timestamp: String,
    temperature: Option<f64>,
    humidity: f64,
    batterylevel: f64,
    latitude: f64,
    longitude: f64,
}

fn rows() -> Vec<Row> {
    rows_n(ROWS)
}

fn rows_n(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let (d, h) = ((i / HOURS) % 1000, i % HOURS);
            Row {
                deviceid: format!("sensor-{:03}", d + 1),
                timestamp: format!("2024-01-15T{h:02}:00:00"),
                temperature: (i % 17 != 5)
                    .then_some(14.25 + (i % 25) as f64 - (i % 3) as f64 * 14.5),
                humidity: 48.5 + (i % 13) as f64 * 4.125,
                batterylevel: 100.0 - i as f64 * 0.75,
                latitude: 47.6 + d as f64 * 0.011,
                longitude: -122.33 - h as f64 * 0.0123,
            }
        })
        .collect()
}

/// The rules of the reference job, written out plainly as an oracle.
fn expected_counts(rows: &[Row]) -> AnomalyCounts {
    let mut c = AnomalyCounts::default();
    for r in rows {
        let t = r.temperature.is_some_and(|t| !(-10.0..=35.0).contains(&t));
        let h = !(5.0..=95.0).contains(&r.humidity);
        let b = r.batterylevel < 20.0;
        c.temperature_spike += u64::from(t);
        c.humidity_anomaly += u64::from(h);
        c.low_battery += u64::from(b);
        c.readings_with_anomalies += u64::from(t || h || b);
    }
    c
}

fn batch(rows: &[Row], with_humidity: bool, payload: Option<usize>) -> RecordBatch {
    let mut cols: Vec<(&str, ArrayRef)> = vec![
        (
            "deviceid",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.deviceid),
            )),
        ),
        (
            "timestamp",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.timestamp),
            )),
        ),
        (
            "temperature",
            Arc::new(rows.iter().map(|r| r.temperature).collect::<Float64Array>()),
        ),
    ];
    if with_humidity {
        cols.push((
            "humidity",
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.humidity),
            )),
        ));
    }
    cols.extend([
        (
            "batterylevel",
            // Athena often leaves float32 behind; the kernel widens it.
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.batterylevel as f32),
            )) as ArrayRef,
        ),
        (
            "latitude",
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.latitude),
            )),
        ),
        (
            "longitude",
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.longitude),
            )),
        ),
    ]);
    if let Some(bytes) = payload {
        // Incompressible filler the job never reads.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let filler = rows.iter().map(|_| {
            (0..bytes)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect::<String>()
        });
        cols.push(("payload", Arc::new(StringArray::from_iter_values(filler))));
    }
    let schema = Schema::new(
        cols.iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect()).unwrap()
}

fn parquet_bytes(batch: &RecordBatch, rows_per_group: usize) -> Bytes {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    Bytes::from(buf)
}

struct Env {
    _server: LocalS3,
    client: fleetmap_objstore::DataClient,
}

async fn env() -> Env {
    let server = LocalS3::start().await.unwrap();
    let client = server.data_client().await;
    ensure_bucket(&client, DATA).await.unwrap();
    ensure_bucket(&client, RESULTS).await.unwrap();
    Env {
        _server: server,
        client,
    }
}

impl Env {
    async fn put(&self, key: &str, body: Bytes) {
        put_bytes(&self.client, DATA, key, body, "application/octet-stream")
            .await
            .unwrap();
    }

    async fn records(&self, key: &str) -> (Bytes, Vec<Value>) {
        let body = get_bytes(&self.client, RESULTS, key).await.unwrap();
        let lines = std::str::from_utf8(&body)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (body, lines)
    }
}

fn item(
    execution: u32,
    input_type: InputType,
    key: &str,
    row_groups: Option<(u32, u32)>,
) -> ItemMessage {
    ItemMessage {
        run_id: "run-1".into(),
        execution,
        attempt: 1,
        input_type,
        bucket: DATA.into(),
        key: key.into(),
        row_groups,
        first_index: 0,
        result: ResultTarget {
            bucket: RESULTS.into(),
            prefix: "analytics".into(),
        },
        analysis_time_ms: ANALYSIS_MS,
        thresholds: Thresholds::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_item_writes_one_record_per_reading_at_its_result_key() {
    let env = env().await;
    let rows = rows();
    // No extension, Hive-partitioned folder, as Athena UNLOAD leaves them.
    let key = "unload/deviceid_partition=all/20260101_000000_00001_abcde";
    env.put(key, parquet_bytes(&batch(&rows, true, None), HOURS))
        .await;

    let it = item(3, InputType::Parquet, key, None);
    let report = process_item(&env.client, &it).await.unwrap();
    assert_eq!(
        report.result_key,
        "analytics/2026/11/27/20/fleetmap-run-1-000003.json"
    );
    assert_eq!(report.result_key, result_key(&it));
    assert_eq!(report.readings, ROWS as u64);
    let expected = expected_counts(&rows);
    assert!(
        expected.temperature_spike > 0 && expected.humidity_anomaly > 0 && expected.low_battery > 0
    );
    assert_eq!(report.anomalies, expected);
    assert!(report.bytes_read > 0);
    assert!(!report.devices_truncated);
    let listed: u64 = report
        .devices
        .iter()
        .map(|d| d.readings_with_anomalies)
        .sum();
    assert_eq!(listed, expected.readings_with_anomalies);
    assert!(
        report
            .devices
            .windows(2)
            .all(|w| w[0].deviceid < w[1].deviceid)
    );

    let (_, records) = env.records(&report.result_key).await;
    assert_eq!(records.len(), ROWS);
    for (rec, row) in records.iter().zip(&rows) {
        assert_eq!(rec["deviceid"], row.deviceid.as_str());
        assert_eq!(rec["readingtimestamp"], row.timestamp.as_str());
        assert_eq!(rec["analysisdate"], "2026-11-27");
        assert_eq!(rec["timestamp"], "2026-11-27T20:45:00.123Z");
        assert_eq!(rec["readingscount"], 1);
        let round = |v: f64| (v * 100.0).round() / 100.0;
        match row.temperature {
            Some(t) => assert_eq!(rec["metrics"]["temperature"].as_f64(), Some(round(t))),
            None => assert!(rec["metrics"]["temperature"].is_null()),
        }
        assert_eq!(
            rec["metrics"]["humidity"].as_f64(),
            Some(round(row.humidity))
        );
        assert_eq!(
            rec["metrics"]["longitude"].as_f64(),
            Some(round(row.longitude))
        );
        let n = rec["anomalies"].as_array().unwrap().len();
        assert_eq!(rec["anomalycount"], n);
        let status = if n == 0 {
            "healthy"
        } else {
            "anomalies_detected"
        };
        assert_eq!(rec["healthstatus"], status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_groups_range_processes_only_those_rows() {
    let env = env().await;
    let rows = rows();
    env.put("rg", parquet_bytes(&batch(&rows, true, None), HOURS))
        .await;

    // The coordinator puts the Map context Index of the item's first reading in the item.
    let mut rg = item(1, InputType::Parquet, "rg", Some((1, 3)));
    rg.first_index = 1_000 + HOURS as u64;
    let report = process_item(&env.client, &rg).await.unwrap();
    let chosen = &rows[HOURS..3 * HOURS];
    assert_eq!(report.readings, chosen.len() as u64);
    assert_eq!(report.anomalies, expected_counts(chosen));
    let (_, records) = env.records(&report.result_key).await;
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r["deviceid"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = chosen.iter().map(|r| r.deviceid.as_str()).collect();
    assert_eq!(ids, want);
    assert_eq!(ids.first(), Some(&"sensor-002"));
    assert_eq!(ids.last(), Some(&"sensor-003"));
    let indexes: Vec<u64> = records
        .iter()
        .map(|r| r["metadata"]["index"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (1_000 + HOURS as u64..1_000 + 3 * HOURS as u64).collect();
    assert_eq!(
        indexes, want,
        "Index runs on across the row groups of the item"
    );
    assert!(
        records
            .iter()
            .all(|r| r["metadata"]["source"] == format!("s3://{DATA}/rg"))
    );

    let err = process_item(
        &env.client,
        &item(2, InputType::Parquet, "rg", Some((4, 6))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, WorkerError::RowGroupsOutOfRange { available: 5, .. }),
        "{err:?}"
    );
    assert_eq!(err.error_name(), "FleetMap.InvalidInput");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_fetches_fewer_bytes_than_the_object_holds() {
    let env = env().await;
    let rows = rows();
    let body = parquet_bytes(&batch(&rows, true, Some(4096)), HOURS);
    let size = body.len() as u64;
    assert!(size > 400 * 1024, "filler too small: {size}");
    env.put("wide", body).await;

    let report = process_item(&env.client, &item(1, InputType::Parquet, "wide", None))
        .await
        .unwrap();
    assert_eq!(report.readings, ROWS as u64);
    assert!(
        report.bytes_read < size / 4,
        "read {} of {size} bytes",
        report.bytes_read
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_object_is_object_not_found_naming_the_key() {
    let env = env().await;
    for input in [InputType::Parquet, InputType::Csv, InputType::Jsonl] {
        let err = process_item(&env.client, &item(1, input, "no/such/key", None))
            .await
            .unwrap_err();
        assert_eq!(
            err.error_name(),
            "FleetMap.ObjectNotFound",
            "{input:?}: {err:?}"
        );
        assert!(err.to_string().contains("s3://data/no/such/key"), "{err}");
        assert!(!err.is_retryable());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_parquet_object_is_invalid_input_naming_the_key() {
    let env = env().await;
    env.put(
        "notes.txt",
        Bytes::from_static(b"deviceid,timestamp\nnot parquet at all\n"),
    )
    .await;
    env.put("tiny", Bytes::from_static(b"PAR1")).await;
    for key in ["notes.txt", "tiny"] {
        let err = process_item(&env.client, &item(1, InputType::Parquet, key, None))
            .await
            .unwrap_err();
        assert_eq!(err.error_name(), "FleetMap.InvalidInput", "{err:?}");
        assert!(
            err.to_string().contains(&format!("s3://data/{key}")),
            "{err}"
        );
        assert!(!err.is_retryable());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_without_humidity_is_missing_column_humidity() {
    let env = env().await;
    env.put("nohum", parquet_bytes(&batch(&rows(), false, None), HOURS))
        .await;
    let err = process_item(&env.client, &item(1, InputType::Parquet, "nohum", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkerError::MissingColumn {
                column: "humidity",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.error_name(), "FleetMap.MissingColumn");
    assert!(err.to_string().contains("s3://data/nohum"), "{err}");
}

fn csv_of(rows: &[Row]) -> String {
    // Columns out of order, upper-case names and an extra column: the header decides.
    let mut s = String::from(
        "Humidity,deviceid,note,timestamp,temperature,batterylevel,longitude,latitude\n",
    );
    for r in rows {
        let t = r.temperature.map(|t| t.to_string()).unwrap_or_default();
        s.push_str(&format!(
            "{},{},\"x, y\",{},{t},{},{},{}\n",
            r.humidity,
            r.deviceid,
            r.timestamp,
            r.batterylevel as f32 as f64,
            r.longitude,
            r.latitude
        ));
    }
    s
}

/// The same objects as [`jsonl_of`], as one pretty-printed JSON array (newlines and
/// indentation inside and between the elements, as `json.dump(indent=2)` writes).
fn json_array_of(rows: &[Row]) -> String {
    let values: Vec<serde_json::Value> = jsonl_of(rows)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    serde_json::to_string_pretty(&values).unwrap()
}

fn jsonl_of(rows: &[Row]) -> String {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "deviceid": r.deviceid, "timestamp": r.timestamp, "temperature": r.temperature,
                "humidity": r.humidity, "batterylevel": r.batterylevel as f32 as f64,
                "latitude": r.latitude, "longitude": r.longitude, "extra": [1, 2],
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// The records of `key` with their `metadata.source` (the one field that names the input
/// object) blanked, so results from the same rows in different formats compare equal.
fn without_source(records: &[u8], key: &str) -> String {
    std::str::from_utf8(records).unwrap().replace(
        &format!("\"source\":\"s3://{DATA}/{key}\""),
        "\"source\":\"\"",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_jsonl_give_the_same_records_as_parquet() {
    let env = env().await;
    let rows = rows();
    env.put("p", parquet_bytes(&batch(&rows, true, None), HOURS))
        .await;
    env.put("c.csv", Bytes::from(csv_of(&rows))).await;
    env.put("j.jsonl", Bytes::from(jsonl_of(&rows))).await;
    env.put("a.json", Bytes::from(json_array_of(&rows))).await;

    let p = process_item(&env.client, &item(1, InputType::Parquet, "p", None))
        .await
        .unwrap();
    let c = process_item(&env.client, &item(2, InputType::Csv, "c.csv", None))
        .await
        .unwrap();
    let j = process_item(&env.client, &item(3, InputType::Jsonl, "j.jsonl", None))
        .await
        .unwrap();
    let a = process_item(&env.client, &item(4, InputType::Json, "a.json", None))
        .await
        .unwrap();
    let (pb, _) = env.records(&p.result_key).await;
    let (cb, _) = env.records(&c.result_key).await;
    let (jb, _) = env.records(&j.result_key).await;
    let (ab, _) = env.records(&a.result_key).await;
    let pb = without_source(&pb, "p");
    assert!(pb.contains("\"source\":\"\""), "{pb}");
    assert_eq!(pb, without_source(&cb, "c.csv"));
    assert_eq!(pb, without_source(&jb, "j.jsonl"));
    assert_eq!(pb, without_source(&ab, "a.json"));
    for r in [&c, &j, &a] {
        assert_eq!(r.readings, p.readings);
        assert_eq!(r.anomalies, p.anomalies);
        assert_eq!(r.devices, p.devices);
        assert!(r.bytes_read > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_text_objects_stream_across_chunks_and_batches() {
    // Megabytes of text: many network chunks cut mid-line and several decoder batches.
    let env = env().await;
    let rows = rows_n(20_000);
    env.put("big", parquet_bytes(&batch(&rows, true, None), 6_000))
        .await;
    let csv = csv_of(&rows);
    assert!(csv.len() > 1_000_000);
    env.put("big.csv", Bytes::from(csv)).await;
    // No newline after the last line.
    env.put(
        "big.jsonl",
        Bytes::from(jsonl_of(&rows).trim_end().to_owned()),
    )
    .await;
    env.put("big.json", Bytes::from(json_array_of(&rows))).await;

    let p = process_item(&env.client, &item(1, InputType::Parquet, "big", None))
        .await
        .unwrap();
    let c = process_item(&env.client, &item(2, InputType::Csv, "big.csv", None))
        .await
        .unwrap();
    let j = process_item(&env.client, &item(3, InputType::Jsonl, "big.jsonl", None))
        .await
        .unwrap();
    assert_eq!(p.readings, 20_000);
    assert_eq!(p.anomalies, expected_counts(&rows));
    let (pb, _) = env.records(&p.result_key).await;
    let pb = without_source(&pb, "big");
    let a = process_item(&env.client, &item(4, InputType::Json, "big.json", None))
        .await
        .unwrap();
    for (r, key) in [(&c, "big.csv"), (&j, "big.jsonl"), (&a, "big.json")] {
        assert_eq!(r.readings, 20_000);
        let (b, _) = env.records(&r.result_key).await;
        assert!(
            without_source(&b, key) == pb,
            "{} differs from the Parquet result",
            r.result_key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_missing_a_column_and_bad_values_are_reported_with_the_object() {
    let env = env().await;
    env.put(
        "nohum.csv",
        Bytes::from_static(
            b"deviceid,timestamp,temperature,batterylevel,latitude,longitude\nd,t,1,2,3,4\n",
        ),
    )
    .await;
    let err = process_item(&env.client, &item(1, InputType::Csv, "nohum.csv", None))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkerError::MissingColumn {
                column: "humidity",
                ..
            }
        ),
        "{err:?}"
    );

    let mut bad = csv_of(&rows()[..3]);
    bad.push_str("50,sensor-9,n,2024-01-15T00:00:00,hot,1,2,3\n");
    env.put("bad.csv", Bytes::from(bad)).await;
    let err = process_item(&env.client, &item(2, InputType::Csv, "bad.csv", None))
        .await
        .unwrap_err();
    assert_eq!(err.error_name(), "FleetMap.InvalidInput");
    assert!(err.to_string().contains("s3://data/bad.csv"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_without_readings_still_writes_an_empty_object() {
    let env = env().await;
    env.put("empty.csv", Bytes::new()).await;
    env.put("header-only.csv", Bytes::from(csv_of(&[]))).await;
    env.put(
        "empty-groups",
        parquet_bytes(&batch(&rows(), true, None), HOURS),
    )
    .await;
    for (n, (input, key, groups)) in [
        (InputType::Csv, "empty.csv", None),
        (InputType::Csv, "header-only.csv", None),
        (InputType::Parquet, "empty-groups", Some((2, 2))),
    ]
    .into_iter()
    .enumerate()
    {
        let report = process_item(&env.client, &item(n as u32, input, key, groups))
            .await
            .unwrap();
        assert_eq!(report.readings, 0, "{key}");
        let (body, _) = env.records(&report.result_key).await;
        assert!(body.is_empty(), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_item_rewrites_identical_bytes_at_the_same_key() {
    let env = env().await;
    env.put("p", parquet_bytes(&batch(&rows(), true, None), 50))
        .await;
    let first = process_item(&env.client, &item(5, InputType::Parquet, "p", None))
        .await
        .unwrap();
    let (a, _) = env.records(&first.result_key).await;
    let mut again = item(5, InputType::Parquet, "p", None);
    again.attempt = 2;
    let second = process_item(&env.client, &again).await.unwrap();
    assert_eq!(first, second);
    let (b, _) = env.records(&second.result_key).await;
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_larger_than_a_part_stream_as_multipart_with_every_record_in_order() {
    let env = env().await;
    // ~25 MB of JSON lines: three 8 MiB parts and a short last one.
    let rows = rows_n(60_000);
    env.put("huge", parquet_bytes(&batch(&rows, true, None), 7_000))
        .await;
    let it = item(9, InputType::Parquet, "huge", None);
    let report = process_item(&env.client, &it).await.unwrap();
    assert_eq!(report.readings, 60_000);
    assert_eq!(report.anomalies, expected_counts(&rows));
    let (body, records) = env.records(&report.result_key).await;
    let part_size = fleetmap_worker::process::PART_SIZE;
    assert!(body.len() > 2 * part_size);
    assert_eq!(records.len(), rows.len());
    // Every part but the last exactly PART_SIZE long: S3's multipart ETag is the MD5 of the
    // parts' MD5s, so it names the boundaries.
    let etag = env
        .client
        .head_object()
        .bucket(RESULTS)
        .key(&report.result_key)
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned();
    assert_eq!(etag, multipart_etag(&body, part_size));
    for (rec, row) in records.iter().zip(&rows) {
        assert_eq!(rec["deviceid"], row.deviceid.as_str());
        assert_eq!(rec["readingtimestamp"], row.timestamp.as_str());
    }
    // A redelivery writes the same bytes to the same key.
    let again = process_item(&env.client, &it).await.unwrap();
    assert_eq!(again.result_key, report.result_key);
    let (body_again, _) = env.records(&again.result_key).await;
    assert!(body_again == body);
}

/// S3's ETag for `body` uploaded in parts of `part_size` (the last shorter).
fn multipart_etag(body: &[u8], part_size: usize) -> String {
    use s3s::crypto::{Checksum, Md5};
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut of_parts = Md5::new();
    for part in body.chunks(part_size) {
        let mut md5 = Md5::new();
        md5.update(part);
        of_parts.update(&md5.finalize());
    }
    let count = body.len().div_ceil(part_size);
    format!("\"{}-{count}\"", hex(&of_parts.finalize()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_group_above_the_limit_fails_naming_the_object_and_row_group() {
    let env = env().await;
    let rows = rows_n(2_000);
    env.put("wide", parquet_bytes(&batch(&rows, true, None), 500))
        .await;
    let options = fleetmap_worker::process::ProcessOptions {
        max_row_group_bytes: 1_000,
    };
    let it = item(4, InputType::Parquet, "wide", None);
    let err = fleetmap_worker::process::process_item_with(&env.client, &it, &options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkerError::RowGroupTooLarge {
                row_group: 0,
                limit: 1_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.error_name(), "FleetMap.InvalidInput");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("row group 0 of s3://data/wide"), "{text}");
    assert!(text.contains("limit of 1000 bytes"), "{text}");
    // The default limit (256 MiB) lets the same file through.
    assert_eq!(
        process_item(&env.client, &it).await.unwrap().readings,
        2_000
    );
}
