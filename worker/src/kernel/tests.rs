use std::sync::Arc;

use arrow::array::{
    DictionaryArray, Float32Array, Int16Array, Int64Array, LargeStringArray,
    TimestampMillisecondArray, UInt8Array,
};
use arrow::datatypes::{Field, Int32Type};

use super::*;

fn batch_of(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

/// A batch with plain types; metrics given per row as (temperature, humidity, battery).
type Metrics = (Option<f64>, Option<f64>, Option<f64>);

fn plain(rows: &[Metrics]) -> RecordBatch {
    let n = rows.len();
    let ids: StringArray = (0..n)
        .map(|i| Some(format!("sensor-{:03}", i % 2)))
        .collect();
    let ts: StringArray = (0..n)
        .map(|i| Some(format!("2024-01-15T{:02}:00:00", i % 24)))
        .collect();
    let col = |f: fn(&Metrics) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float64Array>())
    };
    batch_of(vec![
        (DEVICEID, Arc::new(ids)),
        (TIMESTAMP, Arc::new(ts)),
        (TEMPERATURE, col(|r| r.0)),
        (HUMIDITY, col(|r| r.1)),
        (BATTERYLEVEL, col(|r| r.2)),
        (LATITUDE, Arc::new(Float64Array::from(vec![47.61; n]))),
        (LONGITUDE, Arc::new(Float64Array::from(vec![-122.33; n]))),
    ])
}

fn run(batch: &RecordBatch) -> Detection {
    let r = Readings::from_batch(batch, "data", "k").unwrap();
    detect(&r, &Thresholds::default())
}

#[test]
fn values_exactly_at_thresholds_are_normal() {
    let d = run(&plain(&[
        (Some(35.0), Some(95.0), Some(20.0)),
        (Some(-10.0), Some(5.0), Some(20.0)),
    ]));
    assert_eq!(d.mask, vec![0, 0]);
    assert_eq!(d.counts, AnomalyCounts::default());
    assert_eq!(d.readings, 2);
}

#[test]
fn values_just_past_thresholds_are_anomalies() {
    let d = run(&plain(&[
        (Some(35.01), Some(50.0), Some(80.0)),
        (Some(-10.01), Some(50.0), Some(80.0)),
        (Some(20.0), Some(95.01), Some(80.0)),
        (Some(20.0), Some(4.99), Some(80.0)),
        (Some(20.0), Some(50.0), Some(19.99)),
    ]));
    assert_eq!(
        d.mask,
        vec![
            bits::TEMPERATURE_HIGH,
            bits::TEMPERATURE_LOW,
            bits::HUMIDITY_HIGH,
            bits::HUMIDITY_LOW,
            bits::BATTERY_LOW
        ]
    );
    assert_eq!(
        d.counts,
        AnomalyCounts {
            temperature_spike: 2,
            humidity_anomaly: 2,
            low_battery: 1,
            readings_with_anomalies: 5,
        }
    );
}

#[test]
fn null_and_nan_are_never_anomalies() {
    // A null slot's hidden value is 0.0, which would breach the battery and humidity rules
    // if validity were ignored.
    let d = run(&plain(&[
        (None, None, None),
        (Some(f64::NAN), Some(f64::NAN), Some(f64::NAN)),
    ]));
    assert_eq!(d.mask, vec![0, 0]);
    assert_eq!(d.counts.readings_with_anomalies, 0);
}

#[test]
fn several_anomalies_count_once_per_reading_and_once_per_type() {
    let d = run(&plain(&[
        (Some(50.0), Some(99.0), Some(3.0)),
        (Some(20.0), Some(50.0), Some(80.0)),
    ]));
    assert_eq!(
        d.mask[0],
        bits::TEMPERATURE_HIGH | bits::HUMIDITY_HIGH | bits::BATTERY_LOW
    );
    assert_eq!(
        d.counts,
        AnomalyCounts {
            temperature_spike: 1,
            humidity_anomaly: 1,
            low_battery: 1,
            readings_with_anomalies: 1,
        }
    );
    let order: Vec<Breach> = breaches(d.mask[0]).collect();
    assert_eq!(
        order,
        vec![
            Breach::TemperatureHigh,
            Breach::HumidityHigh,
            Breach::BatteryLow
        ]
    );
}

#[test]
fn float32_int_and_dictionary_inputs_match_float64_plain() {
    let expected = run(&plain(&[
        (Some(36.0), Some(96.0), Some(19.0)),
        (Some(-11.0), Some(4.0), Some(20.0)),
        (None, Some(50.0), Some(100.0)),
    ]));
    let ids = DictionaryArray::<Int32Type>::from_iter(["sensor-000", "sensor-001", "sensor-000"]);
    let batch = batch_of(vec![
        (DEVICEID, Arc::new(ids)),
        (
            TIMESTAMP,
            Arc::new(LargeStringArray::from(vec!["a", "b", "c"])),
        ),
        (
            TEMPERATURE,
            Arc::new(Float32Array::from(vec![Some(36.0), Some(-11.0), None])),
        ),
        (HUMIDITY, Arc::new(Int16Array::from(vec![96, 4, 50]))),
        (BATTERYLEVEL, Arc::new(UInt8Array::from(vec![19, 20, 100]))),
        (LATITUDE, Arc::new(Int64Array::from(vec![47, 47, 47]))),
        (LONGITUDE, Arc::new(Float32Array::from(vec![-122.5; 3]))),
    ]);
    let r = Readings::from_batch(&batch, "data", "k").unwrap();
    assert_eq!(r.deviceid.value(1), Some("sensor-001"));
    assert_eq!(r.timestamp.value(2), "c");
    assert_eq!(detect(&r, &Thresholds::default()), expected);
}

#[test]
fn column_names_match_case_insensitively() {
    let b = plain(&[(Some(40.0), Some(50.0), Some(50.0))]);
    let upper: Vec<Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_name(f.name().to_uppercase()))
        .collect();
    let b = RecordBatch::try_new(Arc::new(Schema::new(upper)), b.columns().to_vec()).unwrap();
    assert_eq!(run(&b).counts.temperature_spike, 1);
}

#[test]
fn arrow_timestamps_are_formatted_iso_with_fraction_only_when_present() {
    let b = plain(&[(Some(1.0), Some(50.0), Some(50.0)); 3]);
    let ts = TimestampMillisecondArray::from(vec![
        Some(1_705_287_600_000), // 2024-01-15T03:00:00
        Some(1_705_287_600_250),
        None,
    ])
    .with_timezone("UTC");
    let mut cols = b.columns().to_vec();
    cols[1] = Arc::new(ts);
    let b = batch_of(
        COLUMNS
            .iter()
            .copied()
            .zip(cols)
            .collect::<Vec<(&str, ArrayRef)>>(),
    );
    let r = Readings::from_batch(&b, "data", "k").unwrap();
    assert_eq!(r.timestamp.value(0), "2024-01-15T03:00:00");
    assert_eq!(r.timestamp.value(1), "2024-01-15T03:00:00.250");
    assert!(r.timestamp.is_null(2));

    let mut cols = b.columns().to_vec();
    cols[1] = Arc::new(arrow::array::Date32Array::from(vec![19737, 0, 1]));
    let b = batch_of(COLUMNS.iter().copied().zip(cols).collect());
    let r = Readings::from_batch(&b, "data", "k").unwrap();
    assert_eq!(r.timestamp.value(0), "2024-01-15T00:00:00");
    assert_eq!(r.timestamp.value(1), "1970-01-01T00:00:00");
}

#[test]
fn missing_column_error_names_the_column_and_object() {
    let b = plain(&[(Some(1.0), Some(2.0), Some(3.0))]);
    let b = b.project(&[0, 1, 2, 4, 5, 6]).unwrap(); // drop humidity
    let err = Readings::from_batch(&b, "data", "unload/part-0").unwrap_err();
    assert!(
        matches!(&err, WorkerError::MissingColumn { column: "humidity", key, .. } if key == "unload/part-0"),
        "{err:?}"
    );
    assert_eq!(err.error_name(), "FleetMap.MissingColumn");
    assert!(err.to_string().contains("s3://data/unload/part-0"));
}

#[test]
fn unsupported_type_error_names_column_and_type() {
    let b = plain(&[(Some(1.0), Some(2.0), Some(3.0))]);
    let mut cols = b.columns().to_vec();
    cols[4] = Arc::new(StringArray::from(vec!["full"]));
    let b = batch_of(COLUMNS.iter().copied().zip(cols).collect());
    let err = Readings::from_batch(&b, "data", "k").unwrap_err();
    assert_eq!(err.error_name(), "FleetMap.UnsupportedColumnType");
    assert_eq!(
        err.to_string(),
        "column \"batterylevel\" of s3://data/k has unsupported type Utf8"
    );
}

#[test]
fn device_counts_aggregate_across_batches() {
    let mut devices = BTreeMap::new();
    for _ in 0..2 {
        let b = plain(&[
            (Some(40.0), Some(50.0), Some(50.0)), // sensor-000
            (Some(20.0), Some(50.0), Some(50.0)), // sensor-001, healthy
            (Some(20.0), Some(50.0), Some(5.0)),  // sensor-000
        ]);
        let r = Readings::from_batch(&b, "data", "k").unwrap();
        let d = detect(&r, &Thresholds::default());
        count_devices(&r, &d.mask, &mut devices);
    }
    assert_eq!(devices.len(), 1);
    assert_eq!(devices.get("sensor-000"), Some(&4));
}

#[test]
fn custom_thresholds_are_used() {
    let b = plain(&[(Some(30.0), Some(50.0), Some(25.0))]);
    let r = Readings::from_batch(&b, "data", "k").unwrap();
    let t = Thresholds {
        temperature_high: 25.0,
        battery_low: 30.0,
        ..Thresholds::default()
    };
    assert_eq!(
        detect(&r, &t).mask,
        vec![bits::TEMPERATURE_HIGH | bits::BATTERY_LOW]
    );
}

/// Every way [`tally_devices`] can count (per dictionary key, by runs of keys when the
/// dictionary outgrows the batch, by runs of plain strings) gives the same per-device
/// totals, nulls under `""`.
#[test]
fn tally_devices_agrees_for_dictionary_and_plain_ids() {
    let rows: Vec<Option<&str>> = vec![
        Some("b"),
        Some("a"),
        None,
        Some("b"),
        Some("b"),
        Some("a\"q"),
        None,
        Some("a"),
    ];
    let mask = [
        bits::TEMPERATURE_HIGH,
        bits::BATTERY_LOW,
        bits::HUMIDITY_LOW,
        0,
        bits::TEMPERATURE_LOW | bits::HUMIDITY_HIGH,
        bits::BATTERY_LOW,
        bits::BATTERY_LOW,
        0,
    ];
    let mut want = BTreeMap::new();
    want.insert("".to_owned(), [2, 0, 1, 1]);
    want.insert("a".to_owned(), [1, 0, 0, 1]);
    want.insert("a\"q".to_owned(), [1, 0, 0, 1]);
    want.insert("b".to_owned(), [2, 2, 1, 0]);
    let totals = |ids: &DeviceIds| {
        let mut got: BTreeMap<String, DeviceTally> = BTreeMap::new();
        tally_devices(ids, &mask, |id, c| {
            let t = got.entry(id.to_owned()).or_default();
            for (t, n) in t.iter_mut().zip(c) {
                *t += n;
            }
        });
        got
    };

    let plain: ArrayRef = Arc::new(StringArray::from(rows.clone()));
    let ids = DeviceIds::new(&plain).unwrap();
    assert!(!ids.is_dictionary());
    assert_eq!(totals(&ids), want);

    let dict: ArrayRef = Arc::new(rows.iter().copied().collect::<DictionaryArray<Int32Type>>());
    let ids = DeviceIds::new(&dict).unwrap();
    assert!(ids.is_dictionary());
    assert_eq!(ids.values().len(), 3);
    assert_eq!(totals(&ids), want);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(ids.value(i), *r);
    }

    // A dictionary larger than the batch (as a row group's dictionary is for a short last
    // batch) is counted by runs, with other key types normalised to Int32.
    let mut big: Vec<Option<String>> = (0..20).map(|i| Some(format!("x{i}"))).collect();
    big.extend(rows.iter().map(|r| r.map(str::to_owned)));
    let keys = arrow::array::UInt16Array::from(
        (20..28)
            .map(|k| (rows[k - 20].is_some()).then_some(k as u16))
            .collect::<Vec<_>>(),
    );
    let values = StringArray::from(big);
    let dict: ArrayRef = Arc::new(
        DictionaryArray::<arrow::datatypes::UInt16Type>::try_new(keys, Arc::new(values)).unwrap(),
    );
    let ids = DeviceIds::new(&dict).unwrap();
    assert!(ids.is_dictionary() && ids.values().len() > ids.len());
    assert_eq!(totals(&ids), want);
}

#[test]
fn count_devices_reads_dictionary_ids() {
    let ids = DictionaryArray::<Int32Type>::from_iter(["s-1", "s-2", "s-1"]);
    let batch = batch_of(vec![
        (DEVICEID, Arc::new(ids)),
        (TIMESTAMP, Arc::new(StringArray::from(vec!["a", "b", "c"]))),
        (
            TEMPERATURE,
            Arc::new(Float64Array::from(vec![40.0, 40.0, 40.0])),
        ),
        (HUMIDITY, Arc::new(Float64Array::from(vec![50.0; 3]))),
        (BATTERYLEVEL, Arc::new(Float64Array::from(vec![50.0; 3]))),
        (LATITUDE, Arc::new(Float64Array::from(vec![1.0; 3]))),
        (LONGITUDE, Arc::new(Float64Array::from(vec![1.0; 3]))),
    ]);
    let r = Readings::from_batch(&batch, "data", "k").unwrap();
    assert!(r.deviceid.is_dictionary());
    let d = detect(&r, &Thresholds::default());
    let mut devices = BTreeMap::new();
    count_devices(&r, &d.mask, &mut devices);
    assert_eq!(
        devices,
        BTreeMap::from([("s-1".to_owned(), 2), ("s-2".to_owned(), 1)])
    );
}
