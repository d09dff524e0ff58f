//! The anomaly kernel: one Arrow record batch in, a breach mask and counts out.
//!
//! Pure on purpose — no tokio, no I/O — so the rules of the reference job are tested in
//! microseconds at every edge. The work is two steps:
//!
//! 1. [`Readings::from_batch`] finds the seven columns by name (case-insensitively, since
//!    Athena lower-cases names and hand-made files may not) and normalises whatever types the
//!    writer chose — float32, integers, decimals, dictionary or view strings, Arrow
//!    timestamps — into `Float64` metrics and `Utf8` strings, once per batch. Device ids
//!    stay keys into their dictionary when they come as one ([`DeviceIds`]).
//! 2. [`detect`] runs the [`Thresholds`] over the plain `f64` slices into a per-row bit mask,
//!    then clears the bits of null rows using the validity bitmap. No allocation per row.
//!
//! NaN compares false with everything, so it is never an anomaly without a special case;
//! values exactly at a threshold are normal because the rules are strict.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, StringArray, StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::DateTime;
use fleetmap_protocol::AnomalyCounts;
use fleetmap_protocol::rules::{Breach, Thresholds};

use crate::error::WorkerError;

/// The columns the job reads, as the AWS sample names them.
pub const DEVICEID: &str = "deviceid";
pub const TIMESTAMP: &str = "timestamp";
pub const TEMPERATURE: &str = "temperature";
pub const HUMIDITY: &str = "humidity";
pub const BATTERYLEVEL: &str = "batterylevel";
pub const LATITUDE: &str = "latitude";
pub const LONGITUDE: &str = "longitude";

/// All seven, in record order. Every one is required.
pub const COLUMNS: [&str; 7] = [
    DEVICEID,
    TIMESTAMP,
    TEMPERATURE,
    HUMIDITY,
    BATTERYLEVEL,
    LATITUDE,
    LONGITUDE,
];

/// Bits of the per-row breach mask, one per [`Breach`].
pub mod bits {
    pub const TEMPERATURE_HIGH: u8 = 1;
    pub const TEMPERATURE_LOW: u8 = 1 << 1;
    pub const HUMIDITY_HIGH: u8 = 1 << 2;
    pub const HUMIDITY_LOW: u8 = 1 << 3;
    pub const BATTERY_LOW: u8 = 1 << 4;
    pub const TEMPERATURE: u8 = TEMPERATURE_HIGH | TEMPERATURE_LOW;
    pub const HUMIDITY: u8 = HUMIDITY_HIGH | HUMIDITY_LOW;
    pub const BATTERY: u8 = BATTERY_LOW;
}

/// The breaches a mask holds, in the order records list them (temperature, humidity,
/// battery).
pub fn breaches(mask: u8) -> impl Iterator<Item = Breach> {
    [
        (bits::TEMPERATURE_HIGH, Breach::TemperatureHigh),
        (bits::TEMPERATURE_LOW, Breach::TemperatureLow),
        (bits::HUMIDITY_HIGH, Breach::HumidityHigh),
        (bits::HUMIDITY_LOW, Breach::HumidityLow),
        (bits::BATTERY_LOW, Breach::BatteryLow),
    ]
    .into_iter()
    .filter(move |(bit, _)| mask & bit != 0)
    .map(|(_, b)| b)
}

/// Index of the field called `name`: an exact match first, else the first
/// case-insensitive one.
pub fn find_column(schema: &Schema, name: &str) -> Option<usize> {
    let fields = schema.fields();
    fields.iter().position(|f| f.name() == name).or_else(|| {
        fields
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(name))
    })
}

/// One batch's readings with every column in its canonical type.
#[derive(Debug, Clone)]
pub struct Readings {
    pub deviceid: DeviceIds,
    /// ISO `YYYY-MM-DDTHH:MM:SS` when the source was an Arrow timestamp or date; strings
    /// pass through as written.
    pub timestamp: StringArray,
    pub temperature: Float64Array,
    pub humidity: Float64Array,
    pub batterylevel: Float64Array,
    pub latitude: Float64Array,
    pub longitude: Float64Array,
}

impl Readings {
    /// Finds and normalises the seven columns; `bucket`/`key` only name the object in errors.
    pub fn from_batch(batch: &RecordBatch, bucket: &str, key: &str) -> Result<Self, WorkerError> {
        let col = |name: &'static str| -> Result<&ArrayRef, WorkerError> {
            find_column(&batch.schema(), name)
                .map(|i| batch.column(i))
                .ok_or_else(|| WorkerError::MissingColumn {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    column: name,
                })
        };
        let unsupported =
            |name: &'static str, data_type: String| WorkerError::UnsupportedColumnType {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                column: name,
                data_type,
            };
        let metric = |name: &'static str| -> Result<Float64Array, WorkerError> {
            to_f64(col(name)?).map_err(|t| unsupported(name, t))
        };
        let deviceid = DeviceIds::new(col(DEVICEID)?).map_err(|t| unsupported(DEVICEID, t))?;
        let timestamp =
            to_timestamp_utf8(col(TIMESTAMP)?).map_err(|t| unsupported(TIMESTAMP, t))?;
        Ok(Readings {
            deviceid,
            timestamp,
            temperature: metric(TEMPERATURE)?,
            humidity: metric(HUMIDITY)?,
            batterylevel: metric(BATTERYLEVEL)?,
            latitude: metric(LATITUDE)?,
            longitude: metric(LONGITUDE)?,
        })
    }

    pub fn len(&self) -> usize {
        self.deviceid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Only what the rules and a per-device summary read: the device id and the three
/// checked metrics. For jobs that report counts without writing records (and the B1
/// benchmark), so the other four columns need not even be decoded.
#[derive(Debug, Clone)]
pub struct SummaryColumns {
    pub deviceid: DeviceIds,
    pub temperature: Float64Array,
    pub humidity: Float64Array,
    pub batterylevel: Float64Array,
}

/// The columns [`SummaryColumns`] reads, for a projection.
pub const SUMMARY_COLUMNS: [&str; 4] = [DEVICEID, TEMPERATURE, HUMIDITY, BATTERYLEVEL];

impl SummaryColumns {
    /// Finds and normalises the four columns, as [`Readings::from_batch`] does.
    pub fn from_batch(batch: &RecordBatch, bucket: &str, key: &str) -> Result<Self, WorkerError> {
        let col = |name: &'static str| -> Result<&ArrayRef, WorkerError> {
            find_column(&batch.schema(), name)
                .map(|i| batch.column(i))
                .ok_or_else(|| WorkerError::MissingColumn {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    column: name,
                })
        };
        let unsupported =
            |name: &'static str, data_type: String| WorkerError::UnsupportedColumnType {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                column: name,
                data_type,
            };
        let metric = |name: &'static str| -> Result<Float64Array, WorkerError> {
            to_f64(col(name)?).map_err(|t| unsupported(name, t))
        };
        Ok(SummaryColumns {
            deviceid: DeviceIds::new(col(DEVICEID)?).map_err(|t| unsupported(DEVICEID, t))?,
            temperature: metric(TEMPERATURE)?,
            humidity: metric(HUMIDITY)?,
            batterylevel: metric(BATTERYLEVEL)?,
        })
    }

    /// The kernel over these columns: the same mask and counts [`detect`] gives.
    pub fn detect(&self, t: &Thresholds) -> Detection {
        detect_metrics(&self.temperature, &self.humidity, &self.batterylevel, t)
    }
}

/// A batch's device ids, as keys into a dictionary of distinct ids when the column came as
/// one. Parquet writers dictionary-encode a column like this (thousands of devices over
/// millions of readings) and the reader keeps it so ([`crate::reader`]): then no id is
/// copied per row, and grouping readings by device counts per key instead of comparing and
/// hashing strings. Any other string column is used as it is.
#[derive(Debug, Clone)]
pub struct DeviceIds {
    values: StringArray,
    /// Row `i`'s id is `values[keys[i]]`; without keys it is `values[i]`.
    keys: Option<Int32Array>,
}

impl DeviceIds {
    /// Takes a string-like column (plain, large, view or a dictionary of them). The error
    /// is the offending type's description.
    pub fn new(array: &ArrayRef) -> Result<DeviceIds, String> {
        if let DataType::Dictionary(_, v) = array.data_type()
            && is_string(v)
        {
            // Keys of any integer type fit Int32 for any dictionary a batch can hold; if
            // not, the plain cast below still gives every row its id.
            let keyed = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
            if let Ok(cast) = cast(array, &keyed)
                && let Some(dict) = cast.as_dictionary_opt::<Int32Type>()
                && let Some(values) = dict.values().as_string_opt::<i32>()
            {
                return Ok(DeviceIds {
                    values: values.clone(),
                    keys: Some(dict.keys().clone()),
                });
            }
        }
        Ok(DeviceIds {
            values: to_utf8(array)?,
            keys: None,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(self.values.len(), Array::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`'s id; `None` when it is null.
    #[inline]
    pub fn value(&self, i: usize) -> Option<&str> {
        let k = match &self.keys {
            Some(keys) if keys.is_null(i) => return None,
            Some(keys) => keys.value(i) as usize,
            None => i,
        };
        (!self.values.is_null(k)).then(|| self.values.value(k))
    }

    /// Every distinct id (with keys) or every row's (without): what an encoder scans once
    /// to learn whether any id needs escaping.
    pub fn values(&self) -> &StringArray {
        &self.values
    }

    /// Whether the ids are keys into a dictionary.
    pub fn is_dictionary(&self) -> bool {
        self.keys.is_some()
    }
}

/// One device's anomalous readings in a batch: with any breach, with a temperature, a
/// humidity and a battery breach.
pub type DeviceTally = [u64; 4];

#[inline]
fn tally(c: &mut DeviceTally, m: u8) {
    c[0] += 1;
    c[1] += u64::from(m & bits::TEMPERATURE != 0);
    c[2] += u64::from(m & bits::HUMIDITY != 0);
    c[3] += u64::from(m & bits::BATTERY != 0);
}

/// Counts each device's anomalous readings (rows whose `mask` byte is not 0) and hands every
/// device with any to `emit`, a null id as `""` so the per-device numbers add up to the
/// batch's. A device may be emitted more than once per batch (a dictionary holding an id
/// twice, or unsorted plain ids), so `emit` adds.
///
/// Dictionary ids are counted per key, in one array the dictionary's size; when the
/// dictionary is larger than the batch, or the ids are plain, a run of rows of one device
/// (files are usually sorted by device) is counted locally and emitted once.
pub fn tally_devices(ids: &DeviceIds, mask: &[u8], mut emit: impl FnMut(&str, &DeviceTally)) {
    let n = ids.len().min(mask.len());
    let mask = &mask[..n];
    let id_of = |k: usize| {
        if ids.values.is_null(k) {
            ""
        } else {
            ids.values.value(k)
        }
    };
    match &ids.keys {
        Some(keys) if ids.values.len() <= n => {
            let dict = ids.values.len();
            // The last slot counts null keys.
            let mut counts = vec![[0u64; 4]; dict + 1];
            let raw = &keys.values()[..n];
            match keys.nulls().filter(|nulls| nulls.null_count() > 0) {
                None => {
                    for (&k, &m) in raw.iter().zip(mask) {
                        if m != 0 {
                            tally(&mut counts[k as usize], m);
                        }
                    }
                }
                Some(nulls) => {
                    for (i, (&k, &m)) in raw.iter().zip(mask).enumerate() {
                        if m != 0 {
                            let slot = if nulls.is_valid(i) { k as usize } else { dict };
                            tally(&mut counts[slot], m);
                        }
                    }
                }
            }
            for (k, c) in counts.iter().enumerate() {
                if c[0] > 0 {
                    emit(if k == dict { "" } else { id_of(k) }, c);
                }
            }
        }
        // Runs compare ids, not keys: a key costs a lookup either way, and a dictionary
        // that holds an id twice then still makes one run.
        _ => {
            let mut run: Option<(&str, DeviceTally)> = None;
            for (i, &m) in mask.iter().enumerate() {
                if m == 0 {
                    continue;
                }
                let id = ids.value(i).unwrap_or("");
                match &mut run {
                    Some((current, c)) if *current == id => tally(c, m),
                    _ => {
                        if let Some((prev, c)) = run.take() {
                            emit(prev, &c);
                        }
                        tally(&mut run.insert((id, [0; 4])).1, m);
                    }
                }
            }
            if let Some((prev, c)) = run {
                emit(prev, &c);
            }
        }
    }
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Null)
}

fn is_string(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
    )
}

/// Casts any numeric (or dictionary of numeric) column to `Float64`. The error is the
/// offending type's description.
fn to_f64(array: &ArrayRef) -> Result<Float64Array, String> {
    let ok = match array.data_type() {
        DataType::Dictionary(_, v) => is_numeric(v),
        t => is_numeric(t),
    };
    if !ok {
        return Err(array.data_type().to_string());
    }
    let cast =
        cast(array, &DataType::Float64).map_err(|e| format!("{} ({e})", array.data_type()))?;
    cast.as_primitive_opt()
        .cloned()
        .ok_or_else(|| array.data_type().to_string())
}

/// Casts any string-like column (plain, large, view, dictionary) to `Utf8`.
fn to_utf8(array: &ArrayRef) -> Result<StringArray, String> {
    let ok = match array.data_type() {
        DataType::Dictionary(_, v) => is_string(v),
        t => is_string(t),
    };
    if !ok {
        return Err(array.data_type().to_string());
    }
    let cast = cast(array, &DataType::Utf8).map_err(|e| format!("{} ({e})", array.data_type()))?;
    cast.as_string_opt::<i32>()
        .cloned()
        .ok_or_else(|| array.data_type().to_string())
}

/// A timestamp column as ISO strings: strings pass through, Arrow timestamps and dates are
/// formatted in UTC as the sample's data writes them (`2024-01-15T03:00:00`, fractional
/// seconds only when non-zero).
fn to_timestamp_utf8(array: &ArrayRef) -> Result<StringArray, String> {
    let t = array.data_type();
    let (to_nanos, values): (fn(i64) -> Option<i64>, ArrayRef) = match t {
        DataType::Timestamp(unit, _) => {
            let f: fn(i64) -> Option<i64> = match unit {
                TimeUnit::Second => |v| v.checked_mul(1_000_000_000),
                TimeUnit::Millisecond => |v| v.checked_mul(1_000_000),
                TimeUnit::Microsecond => |v| v.checked_mul(1_000),
                TimeUnit::Nanosecond => Some,
            };
            (
                f,
                cast(array, &DataType::Int64).map_err(|e| format!("{t} ({e})"))?,
            )
        }
        DataType::Date32 => (
            |d| d.checked_mul(86_400_000_000_000),
            cast(array, &DataType::Int32)
                .and_then(|a| cast(&a, &DataType::Int64))
                .map_err(|e| format!("{t} ({e})"))?,
        ),
        DataType::Date64 => (
            |ms| ms.checked_mul(1_000_000),
            cast(array, &DataType::Int64).map_err(|e| format!("{t} ({e})"))?,
        ),
        _ => return to_utf8(array),
    };
    let ints = values
        .as_primitive_opt::<arrow::datatypes::Int64Type>()
        .ok_or_else(|| t.to_string())?;
    let mut out = StringBuilder::with_capacity(ints.len(), ints.len() * 19);
    for v in ints.iter() {
        match v.and_then(to_nanos) {
            Some(nanos) => {
                let dt = DateTime::from_timestamp_nanos(nanos).naive_utc();
                // Writing into the builder cannot fail; a failure would only lose the value.
                let _ = write!(out, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.f"));
                out.append_value("");
            }
            None => out.append_null(),
        }
    }
    Ok(out.finish())
}

/// The kernel's answer for one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// One byte per row, bits from [`bits`]; 0 means healthy.
    pub mask: Vec<u8>,
    pub readings: u64,
    pub counts: AnomalyCounts,
}

/// Applies the thresholds to every row.
pub fn detect(r: &Readings, t: &Thresholds) -> Detection {
    detect_metrics(&r.temperature, &r.humidity, &r.batterylevel, t)
}

fn detect_metrics(
    temperature: &Float64Array,
    humidity: &Float64Array,
    batterylevel: &Float64Array,
    t: &Thresholds,
) -> Detection {
    let mut mask = vec![0u8; temperature.len()];
    flag_range(
        &mut mask,
        temperature,
        bits::TEMPERATURE_HIGH,
        t.temperature_high,
        bits::TEMPERATURE_LOW,
        t.temperature_low,
    );
    flag_range(
        &mut mask,
        humidity,
        bits::HUMIDITY_HIGH,
        t.humidity_high,
        bits::HUMIDITY_LOW,
        t.humidity_low,
    );
    flag_below(&mut mask, batterylevel, bits::BATTERY_LOW, t.battery_low);
    let counts = count_mask(&mask);
    Detection {
        readings: mask.len() as u64,
        mask,
        counts,
    }
}

/// Per-type and any-type counts of a mask. Summed per 8-bit lane in blocks short enough
/// not to overflow, which the compiler vectorises.
fn count_mask(mask: &[u8]) -> AnomalyCounts {
    let mut counts = AnomalyCounts::default();
    for block in mask.chunks(255) {
        let (mut t, mut h, mut b, mut any) = (0u8, 0u8, 0u8, 0u8);
        for &m in block {
            t += u8::from(m & bits::TEMPERATURE != 0);
            h += u8::from(m & bits::HUMIDITY != 0);
            b += u8::from(m & bits::BATTERY != 0);
            any += u8::from(m != 0);
        }
        counts.temperature_spike += u64::from(t);
        counts.humidity_anomaly += u64::from(h);
        counts.low_battery += u64::from(b);
        counts.readings_with_anomalies += u64::from(any);
    }
    counts
}

/// ORs in `high_bit` where the value is above `high`, else `low_bit` where it is below
/// `low` (the same answer as [`Thresholds::temperature`] / [`Thresholds::humidity`], but
/// without branches so it vectorises), then clears both where the value is null: the slot
/// behind a null holds arbitrary data, and a missing value is never an anomaly. NaN
/// compares false both ways.
fn flag_range(
    mask: &mut [u8],
    column: &Float64Array,
    high_bit: u8,
    high: f64,
    low_bit: u8,
    low: f64,
) {
    for (m, &v) in mask.iter_mut().zip(column.values().iter()) {
        let above = v > high;
        let below = v < low && !above;
        *m |= (u8::from(above) * high_bit) | (u8::from(below) * low_bit);
    }
    clear_nulls(mask, column, high_bit | low_bit);
}

/// ORs in `bit` where the value is below `low`, then clears it for nulls.
fn flag_below(mask: &mut [u8], column: &Float64Array, bit: u8, low: f64) {
    for (m, &v) in mask.iter_mut().zip(column.values().iter()) {
        *m |= u8::from(v < low) * bit;
    }
    clear_nulls(mask, column, bit);
}

fn clear_nulls(mask: &mut [u8], column: &Float64Array, column_bits: u8) {
    if let Some(nulls) = column.nulls().filter(|n| n.null_count() > 0) {
        for (m, valid) in mask.iter_mut().zip(nulls.iter()) {
            if !valid {
                *m &= !column_bits;
            }
        }
    }
}

/// Adds each device's anomalous readings to `into`. A null device id counts under `""`
/// so that the per-device numbers still add up to the batch's count (see
/// [`tally_devices`]).
pub fn count_devices(r: &Readings, mask: &[u8], into: &mut BTreeMap<String, u64>) {
    tally_devices(&r.deviceid, mask, |id, c| match into.get_mut(id) {
        Some(total) => *total += c[0],
        None => {
            into.insert(id.to_owned(), c[0]);
        }
    });
}

#[cfg(test)]
mod tests;
