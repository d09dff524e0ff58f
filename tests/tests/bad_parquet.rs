//! Bad and unusual Parquet through `process_item` against the real loopback S3 server:
//! every broken file fails its item with an error that names the object (and the column,
//! where one is at fault) and never panics; every merely unusual file (no rows, extra
//! columns, other numeric or string encodings, nulls and NaN) gives the records the plain
//! file gives.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, DictionaryArray, Float32Array, Float64Array, Int32Array, Int64Array,
    ListArray, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use fleetmap_objstore::local::LocalS3;
use fleetmap_protocol::{InputType, ItemMessage, ResultTarget, Thresholds};
use fleetmap_worker::WorkerError;
use fleetmap_worker::kernel::COLUMNS;
use fleetmap_worker::process::{ItemReport, process_item, result_key};
use parquet::arrow::ArrowWriter;
use parquet::basic::Encoding;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;

const DATA: &str = "bad-parquet-data";
const RESULTS: &str = "bad-parquet-results";

/// One reading; `None` is a null.
#[derive(Clone, Copy)]
struct Reading {
    deviceid: &'static str,
    timestamp: &'static str,
    metrics: [Option<f64>; 5],
}

/// Readings whose metrics are whole numbers, so float32 and integer columns can hold them
/// exactly, with an anomaly of every kind among them.
const READINGS: [Reading; 6] = [
    reading(
        "sensor-001",
        "2024-01-15T00:00:00",
        [21.0, 50.0, 80.0, 47.0, -122.0],
    ),
    reading(
        "sensor-001",
        "2024-01-15T01:00:00",
        [40.0, 96.0, 15.0, 47.0, -122.0],
    ),
    reading(
        "sensor-002",
        "2024-01-15T00:00:00",
        [-12.0, 4.0, 90.0, 48.0, -121.0],
    ),
    reading(
        "sensor-002",
        "2024-01-15T01:00:00",
        [35.0, 95.0, 20.0, 48.0, -121.0],
    ),
    reading(
        "sensor-001",
        "2024-01-15T02:00:00",
        [22.0, 60.0, 19.0, 47.0, -122.0],
    ),
    reading(
        "sensor-003",
        "2024-01-15T00:00:00",
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ),
];

const fn reading(deviceid: &'static str, timestamp: &'static str, m: [f64; 5]) -> Reading {
    Reading {
        deviceid,
        timestamp,
        metrics: [Some(m[0]), Some(m[1]), Some(m[2]), Some(m[3]), Some(m[4])],
    }
}

/// How the five metric columns are stored.
#[derive(Clone, Copy, Debug)]
enum Numbers {
    Float64,
    Float32,
    Int32,
    Int64,
}

/// How `deviceid` and `timestamp` are stored.
#[derive(Clone, Copy, Debug)]
enum Strings {
    /// Utf8 with Parquet dictionary pages (the writer's default, and Athena's).
    Dictionary,
    /// Utf8, PLAIN-encoded pages only.
    Plain,
    /// An Arrow `Dictionary(Int32, Utf8)` column, read back as a dictionary array.
    ArrowDictionary,
}

struct File {
    numbers: Numbers,
    strings: Strings,
    without: Option<&'static str>,
    extra_columns: bool,
}

impl Default for File {
    fn default() -> Self {
        File {
            numbers: Numbers::Float64,
            strings: Strings::Dictionary,
            without: None,
            extra_columns: false,
        }
    }
}

impl File {
    fn bytes(&self, readings: &[Reading]) -> Bytes {
        let strings = |f: fn(&Reading) -> &'static str| -> ArrayRef {
            let values = readings.iter().map(f);
            match self.strings {
                Strings::Dictionary | Strings::Plain => {
                    Arc::new(StringArray::from_iter_values(values))
                }
                Strings::ArrowDictionary => {
                    Arc::new(values.collect::<DictionaryArray<Int32Type>>())
                }
            }
        };
        let metric = |i: usize| -> ArrayRef {
            let values = readings.iter().map(|r| r.metrics[i]);
            match self.numbers {
                Numbers::Float64 => Arc::new(values.collect::<Float64Array>()),
                Numbers::Float32 => Arc::new(
                    values
                        .map(|v| v.map(|v| v as f32))
                        .collect::<Float32Array>(),
                ),
                Numbers::Int32 => {
                    Arc::new(values.map(|v| v.map(|v| v as i32)).collect::<Int32Array>())
                }
                Numbers::Int64 => {
                    Arc::new(values.map(|v| v.map(|v| v as i64)).collect::<Int64Array>())
                }
            }
        };
        let mut columns: Vec<(&str, ArrayRef)> = vec![
            (COLUMNS[0], strings(|r| r.deviceid)),
            (COLUMNS[1], strings(|r| r.timestamp)),
        ];
        columns.extend((0..5).map(|i| (COLUMNS[i + 2], metric(i))));
        if self.extra_columns {
            columns.splice(1..1, extra_columns(readings.len()));
        }
        columns.retain(|(name, _)| Some(*name) != self.without);
        let schema = Schema::new(
            columns
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_dictionary_enabled(!matches!(self.strings, Strings::Plain))
            .build();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        if !readings.is_empty() {
            w.write(&batch).unwrap();
        }
        w.close().unwrap();
        Bytes::from(out)
    }
}

/// Columns the job never reads, of types it could not read: they must not matter.
fn extra_columns(n: usize) -> Vec<(&'static str, ArrayRef)> {
    let nested = StructArray::from(vec![(
        Arc::new(Field::new("inner", DataType::Int64, true)),
        Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef,
    )]);
    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(
        (0..n).map(|i| Some(vec![Some(i as i32), None])),
    );
    vec![
        (
            "firmware",
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("v{i}")),
            )),
        ),
        (
            "raw",
            Arc::new(BinaryArray::from_iter_values((0..n).map(|_| b"\x00\xff"))),
        ),
        ("location", Arc::new(nested)),
        ("samples", Arc::new(list)),
        (
            "temperature_f",
            Arc::new(Float64Array::from_iter_values((0..n).map(|_| 1000.0))),
        ),
    ]
}

/// The one item each test processes: the object at `key`, its records under `key` in
/// [`RESULTS`].
fn item(key: &str) -> ItemMessage {
    ItemMessage {
        run_id: "bad-parquet".into(),
        execution: 0,
        attempt: 1,
        input_type: InputType::Parquet,
        bucket: DATA.into(),
        key: key.into(),
        row_groups: None,
        first_index: 0,
        result: ResultTarget {
            bucket: RESULTS.into(),
            prefix: key.into(),
        },
        analysis_time_ms: 1_705_276_800_000,
        thresholds: Thresholds::default(),
    }
}

struct Env {
    s3: LocalS3,
    client: fleetmap_objstore::DataClient,
}

async fn env() -> Env {
    let s3 = LocalS3::start().await.expect("loopback S3");
    let client = s3.data_client().await;
    for b in [DATA, RESULTS] {
        fleetmap_objstore::ensure_bucket(&client, b).await.unwrap();
    }
    Env { s3, client }
}

impl Env {
    /// Puts `body` at `key` and processes it as one item.
    async fn process(&self, key: &str, body: Bytes) -> Result<ItemReport, WorkerError> {
        fleetmap_objstore::put_bytes(&self.client, DATA, key, body, "application/octet-stream")
            .await
            .unwrap();
        process_item(&self.client, &item(key)).await
    }

    /// The result object's bytes.
    async fn result(&self, report: &ItemReport) -> Bytes {
        fleetmap_objstore::get_bytes(&self.client, RESULTS, &report.result_key)
            .await
            .unwrap()
    }

    /// Processes `body`, which must succeed, and returns the result object's bytes with the
    /// records' `metadata.source` (the one field naming the input object) checked and blanked,
    /// so results of the same readings in different encodings compare equal.
    async fn records(&self, key: &str, body: Bytes) -> (ItemReport, Bytes) {
        let report = self
            .process(key, body)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let bytes = self.result(&report).await;
        let text = std::str::from_utf8(&bytes).expect("records are UTF-8");
        let source = format!("\"source\":\"s3://{DATA}/{key}\"");
        assert_eq!(text.matches(&source).count(), text.lines().count(), "{key}");
        let blanked = text.replace(&source, "\"source\":\"\"");
        (report, Bytes::from(blanked))
    }

    /// Processes `body`, which must fail with `name`, and returns the error's text, which
    /// must name the object.
    async fn failure(&self, key: &str, body: Bytes, name: &str) -> String {
        let err = match self.process(key, body).await {
            Ok(r) => panic!("{key}: processed a bad file: {r:?}"),
            Err(e) => e,
        };
        let text = err.to_string();
        assert_eq!(err.error_name(), name, "{key}: {text}");
        // A failed child execution leaves no result object, not even the records read
        // before the failure.
        let written =
            fleetmap_objstore::get_bytes(&self.client, RESULTS, &result_key(&item(key))).await;
        assert!(
            matches!(
                written,
                Err(fleetmap_objstore::ObjStoreError::NotFound { .. })
            ),
            "{key}: a failed item wrote a result object: {written:?}"
        );
        assert!(
            !err.is_retryable(),
            "{key}: a bad file is not worth a retry: {text}"
        );
        assert!(
            text.contains(&format!("s3://{DATA}/{key}")),
            "{key}: {text}"
        );
        eprintln!("{key}: {name}: {text}");
        text
    }
}

fn lines(body: &[u8]) -> Vec<Value> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// The footer's (metadata length, metadata start) in a Parquet file.
fn footer(file: &[u8]) -> (usize, usize) {
    let n = file.len();
    let len = u32::from_le_bytes(file[n - 8..n - 4].try_into().unwrap()) as usize;
    (len, n - 8 - len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_footer_is_invalid_input_naming_the_object() {
    let env = env().await;
    let good = File::default().bytes(&READINGS).to_vec();
    let (len, start) = footer(&good);
    let n = good.len();

    let mut garbage = good.clone();
    garbage[start..start + len].fill(0xff);
    let mut scrambled = good.clone();
    for (i, b) in scrambled[start..start + len].iter_mut().enumerate() {
        *b = b.wrapping_mul(31).wrapping_add(i as u8);
    }
    let mut too_long = good.clone();
    too_long[n - 8..n - 4].copy_from_slice(&(n as u32).to_le_bytes());
    let mut empty = good.clone();
    empty[n - 8..n - 4].copy_from_slice(&0u32.to_le_bytes());
    let mut magic = good.clone();
    magic[n - 4..].copy_from_slice(b"PAR2");
    // PARE is the magic of an encrypted footer, which fleetmap does not read.
    let mut encrypted = good.clone();
    encrypted[n - 4..].copy_from_slice(b"PARE");

    for (key, body) in [
        ("footer/garbage", garbage),
        ("footer/scrambled", scrambled),
        ("footer/length-past-the-start", too_long),
        ("footer/zero-length", empty),
        ("footer/bad-magic", magic),
        ("footer/encrypted", encrypted),
    ] {
        env.failure(key, body.into(), "FleetMap.InvalidInput").await;
    }
    env.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_is_invalid_input_naming_the_object() {
    let env = env().await;
    let good = File::default().bytes(&READINGS);
    let n = good.len();
    for (key, keep) in [
        ("cut/last-byte", n - 1),
        ("cut/footer", n - 8),
        ("cut/half", n / 2),
        ("cut/magic-only", 4),
        ("cut/empty", 0),
    ] {
        env.failure(key, good.slice(..keep), "FleetMap.InvalidInput")
            .await;
    }
    env.s3.shutdown().await;
}

/// A file whose footer is intact but whose data pages were lost in the middle (a bad
/// copy): the column chunks the footer points at hold other bytes or run past the end of
/// the object. That is a broken file, not a transient storage fault worth retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_missing_its_data_pages_is_invalid_input_not_a_storage_fault() {
    let env = env().await;
    // Small enough for the footer prefetch to hold everything, and large enough not to.
    let many: Vec<Reading> = (0..50_000)
        .map(|i| {
            let v = f64::from(i) * 0.37;
            reading("sensor-001", "2024-01-15T00:00:00", [v, v, v, v, v])
        })
        .collect();
    for (key, readings) in [
        ("cut/data-pages-small", &READINGS[..]),
        ("cut/data-pages-large", &many),
    ] {
        let good = File::default().bytes(readings).to_vec();
        let (len, start) = footer(&good);
        // Keep the leading magic, drop half of the data, keep the footer.
        let cut = (start - 4) / 2;
        let mut body = good[..4].to_vec();
        body.extend_from_slice(&good[4 + cut..start]);
        body.extend_from_slice(&good[start..start + len + 8]);
        env.failure(key, body.into(), "FleetMap.InvalidInput").await;
    }
    env.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_without_rows_succeeds_with_an_empty_result_object() {
    let env = env().await;
    let empty = File::default().bytes(&[]);
    let (report, body) = env.records("empty/no-rows", empty).await;
    assert_eq!(report.readings, 0);
    assert_eq!(report.anomalies.total(), 0);
    assert!(report.devices.is_empty());
    assert!(body.is_empty(), "{body:?}");
    env.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_column_is_named_with_the_object() {
    let env = env().await;
    for column in COLUMNS {
        let key = format!("missing/{column}");
        let body = File {
            without: Some(column),
            ..File::default()
        }
        .bytes(&READINGS);
        let text = env.failure(&key, body, "FleetMap.MissingColumn").await;
        assert!(text.contains(&format!("{column:?}")), "{text}");
    }
    env.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_stored_as_text_is_an_unsupported_type_naming_the_column() {
    let env = env().await;
    // Humidity as strings: a CSV import gone wrong.
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values(
        READINGS.iter().map(|r| r.deviceid),
    ));
    let ts: ArrayRef = Arc::new(StringArray::from_iter_values(
        READINGS.iter().map(|r| r.timestamp),
    ));
    let num = |i: usize| -> ArrayRef {
        Arc::new(
            READINGS
                .iter()
                .map(|r| r.metrics[i])
                .collect::<Float64Array>(),
        )
    };
    let text: ArrayRef = Arc::new(StringArray::from_iter_values(
        READINGS.iter().map(|_| "high"),
    ));
    let batch = RecordBatch::try_from_iter([
        ("deviceid", ids),
        ("timestamp", ts),
        ("temperature", num(0)),
        ("humidity", text),
        ("batterylevel", num(2)),
        ("latitude", num(3)),
        ("longitude", num(4)),
    ])
    .unwrap();
    let mut file = Vec::new();
    let mut w = ArrowWriter::try_new(&mut file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let text = env
        .failure(
            "types/humidity-as-text",
            file.into(),
            "FleetMap.UnsupportedColumnType",
        )
        .await;
    assert!(
        text.contains("\"humidity\"") && text.contains("Utf8"),
        "{text}"
    );
    env.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_columns_are_ignored() {
    let env = env().await;
    let (plain, want) = env
        .records("extra/none", File::default().bytes(&READINGS))
        .await;
    let extra = File {
        extra_columns: true,
        ..File::default()
    };
    let (report, got) = env.records("extra/five", extra.bytes(&READINGS)).await;
    assert_eq!(got, want);
    assert_eq!(report.anomalies, plain.anomalies);
    assert_eq!(report.readings, READINGS.len() as u64);
    env.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float32_and_integer_metrics_give_the_float64_records() {
    let env = env().await;
    let (plain, want) = env
        .records("numbers/float64", File::default().bytes(&READINGS))
        .await;
    assert!(plain.anomalies.temperature_spike > 0 && plain.anomalies.low_battery > 0);
    for numbers in [Numbers::Float32, Numbers::Int32, Numbers::Int64] {
        let key = format!("numbers/{numbers:?}");
        let file = File {
            numbers,
            ..File::default()
        };
        let (report, got) = env.records(&key, file.bytes(&READINGS)).await;
        assert_eq!(
            std::str::from_utf8(&got).unwrap(),
            std::str::from_utf8(&want).unwrap(),
            "{key}"
        );
        assert_eq!(report.anomalies, plain.anomalies, "{key}");
        assert_eq!(report.devices, plain.devices, "{key}");
    }
    env.s3.shutdown().await;
}

/// Whether the file's `deviceid` column chunk has a dictionary page.
fn has_dictionary_page(file: &Bytes) -> bool {
    let reader = SerializedFileReader::new(file.clone()).unwrap();
    let chunk = reader.metadata().row_group(0).column(0);
    assert_eq!(chunk.column_path().string(), "deviceid");
    chunk.dictionary_page_offset().is_some()
        || chunk.encodings().any(|e| e == Encoding::RLE_DICTIONARY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictionary_and_plain_strings_give_the_same_records() {
    let env = env().await;
    let dictionary = File::default().bytes(&READINGS);
    assert!(has_dictionary_page(&dictionary));
    let (plain_report, want) = env.records("strings/dictionary", dictionary).await;
    for strings in [Strings::Plain, Strings::ArrowDictionary] {
        let key = format!("strings/{strings:?}");
        let body = File {
            strings,
            ..File::default()
        }
        .bytes(&READINGS);
        assert_eq!(
            has_dictionary_page(&body),
            !matches!(strings, Strings::Plain),
            "{key}"
        );
        let (report, got) = env.records(&key, body).await;
        assert_eq!(got, want, "{key}");
        assert_eq!(report.devices, plain_report.devices, "{key}");
    }
    env.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_and_nan_metrics_are_never_anomalies_and_are_written_as_null() {
    let env = env().await;
    // Values that would breach every rule, hidden behind nulls and NaNs.
    let readings: Vec<Reading> = (0..5)
        .map(|i| {
            let mut r = reading(
                "sensor-009",
                "2024-01-15T00:00:00",
                [99.0, 99.0, 1.0, 47.0, -122.0],
            );
            r.metrics[i] = None;
            r
        })
        .chain((0..5).map(|i| {
            let mut r = reading(
                "sensor-009",
                "2024-01-15T01:00:00",
                [f64::NAN, f64::NAN, f64::NAN, 0.0, 0.0],
            );
            r.metrics[i] = Some(f64::NAN);
            r
        }))
        .chain([Reading {
            deviceid: "sensor-009",
            timestamp: "2024-01-15T02:00:00",
            metrics: [None, Some(f64::NAN), None, Some(f64::NAN), None],
        }])
        .collect();
    for numbers in [Numbers::Float64, Numbers::Float32] {
        let key = format!("nulls/{numbers:?}");
        let file = File {
            numbers,
            ..File::default()
        };
        let (report, body) = env.records(&key, file.bytes(&readings)).await;
        assert_eq!(report.readings, readings.len() as u64, "{key}");
        let records = lines(&body);
        assert_eq!(records.len(), readings.len(), "{key}");
        let names = [
            "temperature",
            "humidity",
            "batterylevel",
            "latitude",
            "longitude",
        ];
        for (rec, r) in records.iter().zip(&readings) {
            for (name, v) in names.iter().zip(r.metrics) {
                let written = &rec["metrics"][name];
                match v {
                    Some(v) if !v.is_nan() => assert_eq!(written.as_f64(), Some(v), "{key}: {rec}"),
                    _ => assert!(written.is_null(), "{key}: {name} of {rec}"),
                }
            }
            // Only the rules over real values fire: the first five readings keep the
            // breaching values that are not null, the NaN ones have none.
            let real: Vec<&str> = rec["anomalies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["type"].as_str().unwrap())
                .collect();
            let expected: Vec<&str> = [
                ("temperature_spike", r.metrics[0]),
                ("humidity_anomaly", r.metrics[1]),
                ("low_battery", r.metrics[2]),
            ]
            .into_iter()
            .filter(|(_, v)| v.is_some_and(|v| !v.is_nan()))
            .map(|(t, _)| t)
            .collect();
            assert_eq!(real, expected, "{key}: {rec}");
            assert!(
                rec["anomalies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|a| !a["value"].is_null())
            );
        }
        assert_eq!(report.anomalies.readings_with_anomalies, 5, "{key}");
    }
    env.s3.shutdown().await;
}
