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
//!  "timestamp":"2026-11-27T20:45:00.123Z"}
//! ```
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

use crate::kernel::{Readings, breaches};

/// What every record of a run shares: the run's start time, formatted once. Taken from the
/// item rather than the clock so a redelivered item writes identical bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordContext {
    /// `YYYY-MM-DD` (UTC).
    pub analysisdate: String,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-27T20:45:00.123Z`.
    pub timestamp: String,
}

impl RecordContext {
    /// `None` when the time is outside chrono's range (a corrupt item).
    pub fn new(analysis_time_ms: i64) -> Option<Self> {
        let t = DateTime::from_timestamp_millis(analysis_time_ms)?;
        Some(RecordContext {
            analysisdate: t.format("%Y-%m-%d").to_string(),
            timestamp: t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
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
const BYTES_PER_RECORD: usize = 420;

/// Appends one JSON line per reading of `r` to `out`. `mask` is the kernel's breach mask
/// for the same rows.
pub fn encode_records(
    r: &Readings,
    mask: &[u8],
    thresholds: &Thresholds,
    ctx: &RecordContext,
    out: &mut Vec<u8>,
) {
    let labels = Labels::new(thresholds);
    out.reserve(r.len().min(mask.len()) * BYTES_PER_RECORD);
    for (i, &m) in mask.iter().enumerate().take(r.len()) {
        out.extend_from_slice(b"{\"deviceid\":");
        write_str_or_null(out, &r.deviceid, i);
        out.extend_from_slice(b",\"analysisdate\":");
        write_str(out, &ctx.analysisdate);
        out.extend_from_slice(b",\"readingtimestamp\":");
        write_str_or_null(out, &r.timestamp, i);
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
        let mut count = 0u32;
        for breach in breaches(m) {
            if count > 0 {
                out.push(b',');
            }
            count += 1;
            let column = match breach {
                Breach::TemperatureHigh | Breach::TemperatureLow => &r.temperature,
                Breach::HumidityHigh | Breach::HumidityLow => &r.humidity,
                Breach::BatteryLow => &r.batterylevel,
            };
            out.extend_from_slice(b"{\"type\":\"");
            out.extend_from_slice(breach.anomaly_type().as_str().as_bytes());
            out.extend_from_slice(b"\",\"value\":");
            write_metric(out, column, i);
            out.extend_from_slice(b",\"threshold\":");
            out.extend_from_slice(labels.get(breach));
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"anomalycount\":");
        let _ = write!(out, "{count}");
        out.extend_from_slice(if count == 0 {
            b",\"healthstatus\":\"healthy\",\"timestamp\":"
        } else {
            b",\"healthstatus\":\"anomalies_detected\",\"timestamp\":"
        });
        write_str(out, &ctx.timestamp);
        out.extend_from_slice(b"}\n");
    }
}

/// The five threshold labels, already escaped and quoted, built once per batch.
struct Labels([Vec<u8>; 5]);

impl Labels {
    fn new(t: &Thresholds) -> Self {
        let quoted = |b: Breach| {
            let mut v = Vec::with_capacity(12);
            write_str(&mut v, &t.label(b));
            v
        };
        Labels([
            quoted(Breach::TemperatureHigh),
            quoted(Breach::TemperatureLow),
            quoted(Breach::HumidityHigh),
            quoted(Breach::HumidityLow),
            quoted(Breach::BatteryLow),
        ])
    }

    fn get(&self, b: Breach) -> &[u8] {
        let [th, tl, hh, hl, bl] = &self.0;
        match b {
            Breach::TemperatureHigh => th,
            Breach::TemperatureLow => tl,
            Breach::HumidityHigh => hh,
            Breach::HumidityLow => hl,
            Breach::BatteryLow => bl,
        }
    }
}

fn write_metric(out: &mut Vec<u8>, column: &Float64Array, i: usize) {
    if i >= column.len() || column.is_null(i) {
        out.extend_from_slice(b"null");
        return;
    }
    write_f64(out, round2(column.value(i)));
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

fn write_str_or_null(out: &mut Vec<u8>, column: &StringArray, i: usize) {
    if i >= column.len() || column.is_null(i) {
        out.extend_from_slice(b"null");
    } else {
        write_str(out, column.value(i));
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
