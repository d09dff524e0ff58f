use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use serde_json::{Value, json};

use super::*;
use crate::kernel::{COLUMNS, detect};

/// 2026-11-27T20:45:00.123Z
const ANALYSIS_MS: i64 = 1_795_812_300_123;
const SOURCE: &str = "s3://data/unload/deviceid_partition=3/20260101_x_00003";

fn ctx(ms: i64) -> RecordContext {
    RecordContext::new(ms, SOURCE).unwrap()
}

type Row<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    [Option<f64>; 5], // temperature, humidity, batterylevel, latitude, longitude
);

fn encode(rows: &[Row]) -> Vec<Value> {
    let ids: StringArray = rows.iter().map(|r| r.0).collect();
    let ts: StringArray = rows.iter().map(|r| r.1).collect();
    let mut cols: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(ts)];
    for m in 0..5 {
        let col: Float64Array = rows.iter().map(|r| r.2.get(m).copied().flatten()).collect();
        cols.push(Arc::new(col));
    }
    let fields: Vec<Field> = COLUMNS
        .iter()
        .zip(&cols)
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let readings = Readings::from_batch(&batch, "data", "k").unwrap();
    let t = Thresholds::default();
    let d = detect(&readings, &t);
    let mut out = Vec::new();
    encode_records(&readings, &d.mask, &t, &ctx(ANALYSIS_MS), 7, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with('\n') || text.is_empty());
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn healthy_reading_has_every_field_in_the_sample_schema() {
    let line = encode(&[(
        Some("sensor-001"),
        Some("2024-01-15T03:00:00"),
        [
            Some(23.45),
            Some(55.1),
            Some(98.5),
            Some(47.61),
            Some(-122.33),
        ],
    )]);
    assert_eq!(
        line,
        vec![json!({
            "deviceid": "sensor-001",
            "analysisdate": "2026-11-27",
            "readingtimestamp": "2024-01-15T03:00:00",
            "readingscount": 1,
            "metrics": {"temperature": 23.45, "humidity": 55.1, "batterylevel": 98.5,
                        "latitude": 47.61, "longitude": -122.33},
            "anomalies": [],
            "anomalycount": 0,
            "healthstatus": "healthy",
            "timestamp": "2026-11-27T20:45:00.123Z",
            "metadata": {"index": 7, "source": SOURCE},
        })]
    );
}

#[test]
fn field_order_and_bytes_match_the_sample_exactly() {
    let ids = StringArray::from(vec!["sensor-001"]);
    let ts = StringArray::from(vec!["2024-01-15T03:00:00"]);
    let mut cols: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(ts)];
    for v in [42.134, 55.1, 98.5, 47.61, -122.33] {
        cols.push(Arc::new(Float64Array::from(vec![v])));
    }
    let fields: Vec<Field> = COLUMNS
        .iter()
        .zip(&cols)
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let r = Readings::from_batch(&batch, "b", "k").unwrap();
    let t = Thresholds::default();
    let mut out = Vec::new();
    encode_records(
        &r,
        &detect(&r, &t).mask,
        &t,
        &ctx(ANALYSIS_MS),
        1041,
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"deviceid\":\"sensor-001\",\"analysisdate\":\"2026-11-27\",\"readingtimestamp\":\"2024-01-15T03:00:00\",\"readingscount\":1,\"metrics\":{\"temperature\":42.13,\"humidity\":55.1,\"batterylevel\":98.5,\"latitude\":47.61,\"longitude\":-122.33},\"anomalies\":[{\"type\":\"temperature_spike\",\"value\":42.13,\"threshold\":\">35°C\"}],\"anomalycount\":1,\"healthstatus\":\"anomalies_detected\",\"timestamp\":\"2026-11-27T20:45:00.123Z\",\"metadata\":{\"index\":1041,\"source\":\"s3://data/unload/deviceid_partition=3/20260101_x_00003\"}}\n"
    );
}

#[test]
fn anomalies_are_listed_temperature_humidity_battery_with_rounded_values() {
    let line = encode(&[(
        Some("d"),
        Some("t"),
        [Some(-12.345), Some(99.999), Some(3.0), Some(0.0), Some(0.0)],
    )]);
    assert_eq!(
        line[0]["anomalies"],
        json!([
            {"type": "temperature_spike", "value": -12.35, "threshold": "<-10°C"},
            {"type": "humidity_anomaly", "value": 100.0, "threshold": ">95%"},
            {"type": "low_battery", "value": 3.0, "threshold": "<20%"},
        ])
    );
    assert_eq!(line[0]["anomalycount"], 3);
    assert_eq!(line[0]["healthstatus"], "anomalies_detected");
}

#[test]
fn metrics_round_half_away_from_zero_to_two_decimals() {
    assert_eq!(round2(23.456), 23.46);
    assert_eq!(round2(23.454), 23.45);
    assert_eq!(round2(-23.456), -23.46);
    // -10.005 is stored as -10.00499.., but -10.005 * 100 == -1000.5000000000001: -10.01.
    assert_eq!(round2(-10.005), -10.01);
    assert_eq!(round2(-0.001), 0.0);
    assert!(round2(-0.001).is_sign_positive());
    assert_eq!(round2(1e300), 1e300);
}

#[test]
fn whole_numbers_keep_a_decimal_point_so_athena_reads_doubles() {
    let ids = StringArray::from(vec!["d"]);
    let ts = StringArray::from(vec!["t"]);
    let mut cols: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(ts)];
    for v in [23.0, 50.0, 100.0, -0.0001, 1e20] {
        cols.push(Arc::new(Float64Array::from(vec![v])));
    }
    let fields: Vec<Field> = COLUMNS
        .iter()
        .zip(&cols)
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let r = Readings::from_batch(&batch, "b", "k").unwrap();
    let mut out = Vec::new();
    encode_records(&r, &[0], &Thresholds::default(), &ctx(0), 0, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("{\"temperature\":23.0,\"humidity\":50.0,\"batterylevel\":100.0,\"latitude\":0.0,\"longitude\":100000000000000000000.0}"),
        "{text}"
    );
    assert!(text.contains("\"analysisdate\":\"1970-01-01\""), "{text}");
    assert!(
        text.contains("\"timestamp\":\"1970-01-01T00:00:00.000Z\""),
        "{text}"
    );
}

#[test]
fn null_and_nan_metrics_are_written_as_null_and_are_healthy() {
    let line = encode(&[(
        None,
        None,
        [None, Some(f64::NAN), None, Some(f64::INFINITY), None],
    )]);
    let rec = &line[0];
    assert_eq!(rec["deviceid"], Value::Null);
    assert_eq!(rec["readingtimestamp"], Value::Null);
    assert_eq!(
        rec["metrics"],
        json!({"temperature": null, "humidity": null, "batterylevel": null,
               "latitude": null, "longitude": null})
    );
    assert_eq!(rec["healthstatus"], "healthy");
    assert_eq!(rec["anomalies"], json!([]));
}

#[test]
fn device_ids_with_quotes_controls_and_unicode_are_escaped() {
    let nasty = "sen\"sor\\01\n\t\u{1}–ü°C 🌡";
    let line = encode(&[(
        Some(nasty),
        Some("2024-01-15T03:00:00"),
        [Some(1.0), Some(50.0), Some(50.0), Some(0.0), Some(0.0)],
    )]);
    assert_eq!(line[0]["deviceid"], nasty);
}

#[test]
fn empty_batch_writes_nothing() {
    assert!(encode(&[]).is_empty());
}

#[test]
fn analysis_time_out_of_range_is_rejected() {
    assert!(RecordContext::new(i64::MAX, SOURCE).is_none());
}

#[test]
fn each_record_carries_its_map_index_and_an_escaped_source() {
    let ids = StringArray::from(vec!["a", "b", "c"]);
    let ts = StringArray::from(vec!["t", "t", "t"]);
    let mut cols: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(ts)];
    for _ in 0..5 {
        cols.push(Arc::new(Float64Array::from(vec![30.0, 30.0, 30.0])));
    }
    let fields: Vec<Field> = COLUMNS
        .iter()
        .zip(&cols)
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let r = Readings::from_batch(&batch, "b", "k").unwrap();
    let odd = "s3://b/dir/quote\"back\\slash";
    let mut out = Vec::new();
    let ctx = RecordContext::new(0, odd).unwrap();
    encode_records(
        &r,
        &[0, 0, 0],
        &Thresholds::default(),
        &ctx,
        u64::from(u32::MAX),
        &mut out,
    );
    let recs: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let meta: Vec<(u64, &str)> = recs
        .iter()
        .map(|r| {
            (
                r["metadata"]["index"].as_u64().unwrap(),
                r["metadata"]["source"].as_str().unwrap(),
            )
        })
        .collect();
    let base = u64::from(u32::MAX);
    assert_eq!(meta, vec![(base, odd), (base + 1, odd), (base + 2, odd)]);
}

/// The fast metric writer must produce exactly the bytes of the general one
/// (`round2` then shortest round-trip `Display`), at every magnitude and edge.
#[test]
fn fast_metric_formatting_matches_shortest_round_trip_exactly() {
    let general = |v: f64| {
        let mut out = Vec::new();
        write_f64(&mut out, round2(v));
        out
    };
    let fast = |v: f64| {
        let mut out = Vec::new();
        write_rounded(&mut out, v);
        out
    };
    let mut values = vec![
        0.0,
        -0.0,
        0.001,
        -0.001,
        0.005,
        -0.005,
        0.004999,
        0.01,
        -0.01,
        0.1,
        0.5,
        1.0,
        -1.0,
        10.0,
        23.456,
        -10.005,
        1.005,
        2.675,
        99.995,
        100.0,
        123456.785,
        -122.33,
        47.61,
        9_999_999_999_999.99,
        9_999_999_999_999.995,
        1e13,
        1e15,
        1e16,
        1e300,
        -1e300,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    // A deterministic spread over magnitudes 1e-4 .. 1e16, both signs.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mantissa = (x >> 11) as f64 / (1u64 << 53) as f64;
        let exp = (x % 21) as i32 - 4;
        let sign = if x & 1 == 0 { 1.0 } else { -1.0 };
        values.push(sign * mantissa * 10f64.powi(exp));
        // Values that are already whole hundredths, as sensor data usually is.
        values.push(sign * ((x >> 20) % 100_000_000) as f64 / 100.0);
    }
    for v in values {
        assert_eq!(
            String::from_utf8(fast(v)).unwrap(),
            String::from_utf8(general(v)).unwrap(),
            "{v:e}"
        );
    }
}
