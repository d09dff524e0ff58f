//! The AWS sample's analytics record, as JSON lines written straight from Arrow arrays.
//!
//! The Athena table the sample creates over these records must read fleetmap's output
//! unchanged, so field names, order and types follow the sample exactly:
//!
//! ```json
//! {"deviceid":"sensor-001","analysisdate":"2026-11-27","readingtimestamp":"2024-01-15T03:00:00",
//!  "readingscount":1,"metrics":{"temperature":42.13,"humidity":55.1,"batterylevel":98.5,
//!  "latitude":47.61,"longitude":-122.33},"anomalies":[{"type":"temperature_spike",
//!  "value":42.13,"threshold":">35°C"}],"anomalycount":1,"healthstatus":"anomalies_detected",
//!  "timestamp":"2026-11-27T20:45:00.123Z",
//!  "metadata":{"index":1041,"source":"s3://data/unload/deviceid_partition=3/20260101_x_00003"}}
//! ```
//!
//! `metadata` is fleetmap's addition: the Map context's `Index` (the reading's position in
//! the run, in manifest then row order; for CSV and JSONL objects, whose row counts are
//! unknown until read, its position within its object) and `Source` (the object it was read
//! from), so a record can be traced back to its input. It comes last, and Athena's JSON SerDe ignores fields a table does not declare,
//! so the sample's table reads these records unchanged.
//!
//! A record is a few hundred bytes and a file holds millions of readings, so nothing is
//! built per row: a hand-written writer appends into one pre-sized buffer. Pure, like the
//! kernel.
//!
//! Numbers: metrics are rounded to 2 decimals, half away from zero on the binary value
//! (`(v * 100).round() / 100`), so `23.456` → `23.46`, and `-10.005` — stored as
//! -10.00499…, but whose product with 100 rounds to -1000.5000000000001 — → `-10.01`
//! (Python's `round(-10.005, 2)` looks at the exact binary value and gives `-10.0`). A
//! finite value is always written with a decimal point (`23.0`) so Athena types the field as
//! double; `-0.0` is written `0.0`. Null, NaN and infinities are written `null`: JSON has no
//! spelling for the latter two.

use std::io::Write as _;

use arrow::array::{Array, Float64Array, StringArray};
use chrono::DateTime;
use fleetmap_protocol::rules::{Breach, Thresholds};

use crate::kernel::{DeviceIds, Readings, breaches};

/// What every record of an item shares: the run's start time, formatted once, and the
/// Map context's `Source`. Taken from the item rather than the clock so a redelivered item
/// writes identical bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordContext {
    /// `YYYY-MM-DD` (UTC).
    pub analysisdate: String,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-27T20:45:00.123Z`.
    pub timestamp: String,
    /// The input object's URI (`s3://bucket/key`).
    pub source: String,
}

impl RecordContext {
    /// `None` when the time is outside chrono's range (a corrupt item).
    pub fn new(analysis_time_ms: i64, source: impl Into<String>) -> Option<Self> {
        let t = DateTime::from_timestamp_millis(analysis_time_ms)?;
        Some(RecordContext {
            analysisdate: t.format("%Y-%m-%d").to_string(),
            timestamp: t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            source: source.into(),
        })
    }
}

/// Rounds to 2 decimals, half away from zero on the binary value. Values too large for
/// the scaling to stay finite have no fractional digits anyway and come back unchanged.
pub fn round2(v: f64) -> f64 {
    let scaled = v * 100.0;
    if !scaled.is_finite() {
        return v;
    }
    let r = scaled.round() / 100.0;
    if r == 0.0 { 0.0 } else { r }
}

/// A rough record size, so a batch's output is allocated once.
const BYTES_PER_RECORD: usize = 500;

/// Appends one JSON line per reading of `r` to `out`. `mask` is the kernel's breach mask
/// for the same rows; `first_index` is the Map context `Index` of the first row.
///
/// Per row this is only copies of pre-built fragments and integer formatting: the parts of
/// a record that do not depend on the row (field names, the analysis date and timestamp,
/// each breach's type and threshold, the tail for each anomaly count) are assembled once
/// per call, strings whose column holds nothing to escape are copied as they are, and
/// metrics are written from their rounded value in hundredths.
pub fn encode_records(
    r: &Readings,
    mask: &[u8],
    thresholds: &Thresholds,
    ctx: &RecordContext,
    first_index: u64,
    out: &mut Vec<u8>,
) {
    let n = r.len().min(mask.len());
    let parts = Parts::new(thresholds, ctx);
    let ids = Ids::new(&r.deviceid);
    let timestamps = Strings::new(&r.timestamp);
    out.reserve(n * BYTES_PER_RECORD);
    for (i, &m) in mask.iter().enumerate().take(n) {
        out.extend_from_slice(b"{\"deviceid\":");
        ids.write(out, i);
        out.extend_from_slice(&parts.after_deviceid);
        timestamps.write(out, i);
        out.extend_from_slice(b",\"readingscount\":1,\"metrics\":{\"temperature\":");
        write_metric(out, &r.temperature, i);
        out.extend_from_slice(b",\"humidity\":");
        write_metric(out, &r.humidity, i);
        out.extend_from_slice(b",\"batterylevel\":");
        write_metric(out, &r.batterylevel, i);
        out.extend_from_slice(b",\"latitude\":");
        write_metric(out, &r.latitude, i);
        out.extend_from_slice(b",\"longitude\":");
        write_metric(out, &r.longitude, i);
        out.extend_from_slice(b"},\"anomalies\":[");
        let mut count = 0usize;
        for breach in breaches(m) {
            let column = match breach {
                Breach::TemperatureHigh | Breach::TemperatureLow => &r.temperature,
                Breach::HumidityHigh | Breach::HumidityLow => &r.humidity,
                Breach::BatteryLow => &r.batterylevel,
            };
            let (open, close) = parts.breach(breach);
            if count > 0 {
                out.push(b',');
            }
            count += 1;
            out.extend_from_slice(open);
            write_metric(out, column, i);
            out.extend_from_slice(close);
        }
        out.extend_from_slice(parts.tail(count));
        write_u64(out, first_index + i as u64);
        out.extend_from_slice(&parts.after_index);
    }
}

/// The row-independent fragments of a record, escaped and quoted once per call.
struct Parts {
    /// `,"analysisdate":"…","readingtimestamp":`
    after_deviceid: Vec<u8>,
    /// Per breach: `{"type":"…","value":` and `,"threshold":"…"}`.
    breaches: [(Vec<u8>, Vec<u8>); 5],
    /// Per anomaly count 0..=5:
    /// `],"anomalycount":N,"healthstatus":"…","timestamp":"…","metadata":{"index":`.
    tails: [Vec<u8>; 6],
    /// `,"source":"…"}}\n`
    after_index: Vec<u8>,
}

impl Parts {
    fn new(t: &Thresholds, ctx: &RecordContext) -> Self {
        let mut after_deviceid = b",\"analysisdate\":".to_vec();
        write_str(&mut after_deviceid, &ctx.analysisdate);
        after_deviceid.extend_from_slice(b",\"readingtimestamp\":");
        let breach = |b: Breach| {
            let mut open = b"{\"type\":\"".to_vec();
            open.extend_from_slice(b.anomaly_type().as_str().as_bytes());
            open.extend_from_slice(b"\",\"value\":");
            let mut close = b",\"threshold\":".to_vec();
            write_str(&mut close, &t.label(b));
            close.push(b'}');
            (open, close)
        };
        let tail = |count: usize| {
            let mut v = Vec::with_capacity(100);
            let _ = write!(v, "],\"anomalycount\":{count}");
            v.extend_from_slice(if count == 0 {
                b",\"healthstatus\":\"healthy\",\"timestamp\":"
            } else {
                b",\"healthstatus\":\"anomalies_detected\",\"timestamp\":"
            });
            write_str(&mut v, &ctx.timestamp);
            v.extend_from_slice(b",\"metadata\":{\"index\":");
            v
        };
        let mut after_index = b",\"source\":".to_vec();
        write_str(&mut after_index, &ctx.source);
        after_index.extend_from_slice(b"}}\n");
        Parts {
            after_deviceid,
            breaches: [
                breach(Breach::TemperatureHigh),
                breach(Breach::TemperatureLow),
                breach(Breach::HumidityHigh),
                breach(Breach::HumidityLow),
                breach(Breach::BatteryLow),
            ],
            tails: std::array::from_fn(tail),
            after_index,
        }
    }

    fn breach(&self, b: Breach) -> (&[u8], &[u8]) {
        let i = match b {
            Breach::TemperatureHigh => 0,
            Breach::TemperatureLow => 1,
            Breach::HumidityHigh => 2,
            Breach::HumidityLow => 3,
            Breach::BatteryLow => 4,
        };
        let (open, close) = &self.breaches[i];
        (open, close)
    }

    fn tail(&self, count: usize) -> &[u8] {
        &self.tails[count.min(self.tails.len() - 1)]
    }
}

/// A string column, checked once for bytes JSON needs escaped: when there are none (the
/// usual case: ids and ISO timestamps), each value is copied between quotes as it is.
struct Strings<'a> {
    column: &'a StringArray,
    plain: bool,
}

impl<'a> Strings<'a> {
    fn new(column: &'a StringArray) -> Self {
        Strings {
            column,
            plain: nothing_to_escape(column),
        }
    }

    #[inline]
    fn write(&self, out: &mut Vec<u8>, i: usize) {
        let value =
            (i < self.column.len() && !self.column.is_null(i)).then(|| self.column.value(i));
        write_json_str(out, value, self.plain);
    }
}

/// The device ids, written as [`Strings`] writes a column: a dictionary's distinct ids are
/// scanned for characters to escape once, not every row's.
struct Ids<'a> {
    ids: &'a DeviceIds,
    plain: bool,
}

impl<'a> Ids<'a> {
    fn new(ids: &'a DeviceIds) -> Self {
        Ids {
            ids,
            plain: nothing_to_escape(ids.values()),
        }
    }

    #[inline]
    fn write(&self, out: &mut Vec<u8>, i: usize) {
        let value = (i < self.ids.len()).then(|| self.ids.value(i)).flatten();
        write_json_str(out, value, self.plain);
    }
}

fn nothing_to_escape(column: &StringArray) -> bool {
    !column.values().iter().any(|&b| needs_escape(b))
}

/// `value` as a JSON string, or `null`; `plain` when it is known to need no escaping.
#[inline]
fn write_json_str(out: &mut Vec<u8>, value: Option<&str>, plain: bool) {
    match value {
        None => out.extend_from_slice(b"null"),
        Some(v) if plain => {
            out.push(b'"');
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        }
        Some(v) => write_str(out, v),
    }
}

#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[inline]
fn write_metric(out: &mut Vec<u8>, column: &Float64Array, i: usize) {
    if i >= column.len() || column.is_null(i) {
        out.extend_from_slice(b"null");
        return;
    }
    write_rounded(out, column.value(i));
}

/// Below this many hundredths a rounded value has at most 15 significant digits, so its
/// shortest round-trip form is exactly its digits in hundredths (`f64` keeps 15 decimal
/// digits through a round trip): it can be printed as an integer with a decimal point.
const EXACT_HUNDREDTHS: f64 = 1e15;

/// Writes `round2(v)` exactly as [`write_f64`] would, without float formatting for every
/// value of ordinary size: the rounded value is a whole number of hundredths, printed as
/// integer digits with the point put in, trailing zeros dropped, `.0` kept for whole numbers.
#[inline]
fn write_rounded(out: &mut Vec<u8>, v: f64) {
    let hundredths = (v * 100.0).round();
    // NaN compares false, so it takes the general path along with infinities and huge values.
    let ordinary = hundredths.abs() < EXACT_HUNDREDTHS;
    if !ordinary {
        write_f64(out, round2(v));
        return;
    }
    // Exact: an integer below 1e15 converts without loss (and -0.0 becomes 0).
    let h = hundredths as i64;
    if h < 0 {
        out.push(b'-');
    }
    let h = h.unsigned_abs();
    write_u64(out, h / 100);
    let cents = (h % 100) as usize;
    let frac: &[u8] = if cents == 0 {
        b".0"
    } else if cents.is_multiple_of(10) {
        &DOT_TENTHS[cents / 10 * 2..cents / 10 * 2 + 2]
    } else {
        &DOT_HUNDREDTHS[cents * 3..cents * 3 + 3]
    };
    out.extend_from_slice(frac);
}

/// `.0` `.1` … `.9`, two bytes each.
const DOT_TENTHS: [u8; 20] = *b".0.1.2.3.4.5.6.7.8.9";

/// `.00` … `.99`, three bytes each.
const DOT_HUNDREDTHS: [u8; 300] = {
    let mut t = [0u8; 300];
    let mut i = 0;
    while i < 100 {
        t[i * 3] = b'.';
        t[i * 3 + 1] = b'0' + (i / 10) as u8;
        t[i * 3 + 2] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Decimal digits of `n`, no sign, no leading zeros.
#[inline]
fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    while n > 0 {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[at..]);
}

/// Shortest round-trip decimal (std's `Display`, which never uses an exponent), plus `.0`
/// when it would otherwise read as an integer.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let start = out.len();
    let _ = write!(out, "{v}");
    if !out.get(start..).is_some_and(|s| s.contains(&b'.')) {
        out.extend_from_slice(b".0");
    }
}

/// A JSON string: quotes, backslashes and control characters escaped; everything else,
/// non-ASCII included, copied as UTF-8.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(plain_from..i).unwrap_or_default());
        plain_from = i + 1;
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(bytes.get(plain_from..).unwrap_or_default());
    out.push(b'"');
}

#[cfg(test)]
mod tests;
