//! The generator end to end: Parquet files and manifest in a real S3-protocol server (and on
//! disk), read back with parquet's own reader.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use bytes::Bytes;
use fleetmap_objstore::local::LocalS3;
use fleetmap_objstore::{ensure_bucket, get_bytes, list_keys};
use fleetmap_sample::{
    Compression, GenConfig, GenReport, Reading, generate_readings, generate_to_dir, generate_to_s3,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};

const BUCKET: &str = "sample-data";

async fn generate(cfg: &GenConfig) -> (LocalS3, aws_sdk_s3::Client, GenReport) {
    let server = LocalS3::start().await.expect("local S3 starts");
    let client = server.client().await;
    ensure_bucket(&client, BUCKET).await.unwrap();
    let report = generate_to_s3(&client, BUCKET, cfg).await.unwrap();
    (server, client, report)
}

/// Decodes a Parquet file back into readings, checking the column types on the way.
fn read_readings(bytes: Bytes) -> Vec<Reading> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let fields: Vec<(String, DataType)> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect();
    let expected: Vec<(String, DataType)> = [
        ("deviceid", DataType::Utf8),
        ("timestamp", DataType::Utf8),
        ("temperature", DataType::Float64),
        ("humidity", DataType::Float64),
        ("batterylevel", DataType::Float64),
        ("latitude", DataType::Float64),
        ("longitude", DataType::Float64),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t))
    .collect();
    assert_eq!(fields, expected);

    let mut out = Vec::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        let s = |i: usize| batch.column(i).as_string::<i32>().clone();
        let f = |i: usize| batch.column(i).as_primitive::<Float64Type>().clone();
        let (dev, ts) = (s(0), s(1));
        let (t, h, b, lat, lon) = (f(2), f(3), f(4), f(5), f(6));
        for row in 0..batch.num_rows() {
            assert!(!t.is_null(row));
            out.push(Reading {
                deviceid: dev.value(row).to_owned(),
                timestamp: ts.value(row).to_owned(),
                temperature: t.value(row),
                humidity: h.value(row),
                batterylevel: b.value(row),
                latitude: lat.value(row),
                longitude: lon.value(row),
            });
        }
    }
    out
}

#[tokio::test]
async fn default_config_writes_five_device_partitions_and_a_manifest() {
    let cfg = GenConfig {
        keep_readings: true,
        ..Default::default()
    };
    let (server, c, report) = generate(&cfg).await;
    assert_eq!(report.files.len(), 5);
    assert_eq!(report.readings_total, 120);
    assert_eq!(report.rows_per_file, [24; 5]);
    assert_eq!(report.manifest, "iot-unload/manifest.csv");

    let manifest = get_bytes(&c, BUCKET, "iot-unload/manifest.csv")
        .await
        .unwrap();
    let manifest = std::str::from_utf8(&manifest).unwrap();
    assert!(manifest.ends_with('\n'));
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines.len(), 5);
    for (i, (line, key)) in lines.iter().zip(&report.files).enumerate() {
        let prefix = format!(
            "s3://{BUCKET}/iot-unload/deviceid_partition=sensor-00{}/",
            i + 1
        );
        assert!(line.starts_with(&prefix), "{line}");
        assert_eq!(*line, format!("s3://{BUCKET}/{key}"));
        assert!(!line.ends_with(".parquet"));
    }

    // Every listed object is there, plus the manifest, nothing else.
    let mut listed = list_keys(&c, BUCKET, "iot-unload/").await.unwrap();
    listed.retain(|k| k != "iot-unload/manifest.csv");
    assert_eq!(listed, report.files);

    // Reading the files back gives the same readings, in order.
    let mut read = Vec::new();
    for key in &report.files {
        read.extend(read_readings(get_bytes(&c, BUCKET, key).await.unwrap()));
    }
    assert_eq!(read.len(), 120);
    assert_eq!(read, report.readings);
    assert_eq!(read[0].deviceid, "sensor-001");
    assert_eq!(read[0].timestamp, "2024-01-15T00:00:00");
    assert_eq!(read[23].timestamp, "2024-01-15T23:00:00");
    assert_eq!(read[119].deviceid, "sensor-005");
    let from_core: Vec<Reading> = generate_readings(&cfg).unwrap().map(|(_, r)| r).collect();
    assert_eq!(read, from_core);
    server.shutdown().await;
}

#[tokio::test]
async fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let cfg = GenConfig::default();
    let (server, c, report) = generate(&cfg).await;
    let first = get_bytes(&c, BUCKET, &report.files[2]).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let again = generate_to_dir(dir.path(), &cfg).unwrap();
    assert_eq!(again.files, report.files);
    let second = std::fs::read(dir.path().join(&again.files[2])).unwrap();
    assert_eq!(first.as_ref(), &second[..]);

    let other = GenConfig { seed: 43, ..cfg };
    let other_dir = tempfile::tempdir().unwrap();
    let other_report = generate_to_dir(other_dir.path(), &other).unwrap();
    let third = std::fs::read(other_dir.path().join(&other_report.files[2])).unwrap();
    assert_ne!(first.as_ref(), &third[..]);
    server.shutdown().await;
}

#[tokio::test]
async fn fifty_devices_over_thirty_days_in_twenty_files() {
    let cfg = GenConfig {
        devices: 50,
        days: 30,
        files: Some(20),
        ..Default::default()
    };
    let (server, c, report) = generate(&cfg).await;
    assert_eq!(report.files.len(), 20);
    assert_eq!(report.readings_total, 36_000);
    assert_eq!(report.rows_per_file.iter().sum::<u64>(), 36_000);
    let mut total = 0;
    let mut low_battery = 0;
    for key in &report.files {
        let readings = read_readings(get_bytes(&c, BUCKET, key).await.unwrap());
        assert!(readings.iter().all(|r| r.batterylevel >= 0.0));
        low_battery += readings.iter().filter(|r| r.batterylevel < 20.0).count();
        total += readings.len();
    }
    assert_eq!(total, 36_000);
    assert!(low_battery > 0, "multi-day sets reach low battery");
    server.shutdown().await;
}

#[tokio::test]
async fn small_row_groups_give_several_per_file() {
    let cfg = GenConfig {
        rows_per_row_group: 10,
        ..Default::default()
    };
    let (server, c, report) = generate(&cfg).await;
    let bytes = get_bytes(&c, BUCKET, &report.files[0]).await.unwrap();
    let reader = SerializedFileReader::new(bytes).unwrap();
    let groups: Vec<i64> = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect();
    assert_eq!(groups, [10, 10, 4]);
    // deviceid is dictionary-encoded, as the writer does by default and UNLOAD often does.
    let deviceid = reader.metadata().row_group(0).column(0);
    assert!(
        deviceid
            .encodings()
            .any(|e| e == parquet::basic::Encoding::RLE_DICTIONARY),
        "{:?}",
        deviceid.encodings().collect::<Vec<_>>()
    );
    server.shutdown().await;
}

#[test]
fn compression_is_recorded_in_the_file_metadata() {
    for (codec, expected) in [
        (Compression::None, parquet::basic::Compression::UNCOMPRESSED),
        (Compression::Snappy, parquet::basic::Compression::SNAPPY),
        (
            Compression::Zstd,
            parquet::basic::Compression::ZSTD(Default::default()),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = GenConfig {
            compression: codec,
            devices: 1,
            ..Default::default()
        };
        let report = generate_to_dir(dir.path(), &cfg).unwrap();
        let file = std::fs::File::open(dir.path().join(&report.files[0])).unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        for column in reader.metadata().row_group(0).columns() {
            assert_eq!(column.compression(), expected, "{codec:?}");
        }
    }
}

#[test]
fn local_manifest_lists_paths_relative_to_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let report = generate_to_dir(dir.path(), &GenConfig::default()).unwrap();
    let manifest = std::fs::read_to_string(dir.path().join("iot-unload/manifest.csv")).unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines, report.files);
    for line in lines {
        assert!(line.starts_with("iot-unload/deviceid_partition=sensor-00"));
        assert!(dir.path().join(line).is_file());
    }
}

#[tokio::test]
async fn invalid_config_writes_nothing() {
    let server = LocalS3::start().await.unwrap();
    let c = server.client().await;
    ensure_bucket(&c, BUCKET).await.unwrap();
    let cfg = GenConfig {
        devices: 0,
        ..Default::default()
    };
    let err = generate_to_s3(&c, BUCKET, &cfg).await.unwrap_err();
    assert!(err.to_string().contains("devices"), "{err}");
    assert!(list_keys(&c, BUCKET, "").await.unwrap().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn upload_failure_names_the_object() {
    let server = LocalS3::start().await.unwrap();
    ensure_bucket(&server.client().await, BUCKET).await.unwrap();
    let mut cfg = server.config();
    cfg.secret_access_key = Some("wrong-secret".into());
    let c = fleetmap_objstore::client(&cfg).await;
    let err = generate_to_s3(&c, BUCKET, &GenConfig::default())
        .await
        .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("s3://sample-data/iot-unload/deviceid_partition=sensor-001/"),
        "{shown}"
    );
    assert!(
        matches!(err, fleetmap_sample::SampleError::Store(_)),
        "{err:?}"
    );
    server.shutdown().await;
}
