//! Benchmark driver. B1 and B2: the worker's own data path (projection, decoding, kernel,
//! encoder) over local Parquet files, on the calling thread only, so `taskset -c 0` pins
//! the whole measurement to one core. B4: a no-op worker ([`noop`]) that answers items
//! without touching S3, so a real coordinator's control plane can be timed alone.
//!
//! ```text
//! fleetmap-bench b1 FILE...          decode + per-device, per-type anomaly summary
//! fleetmap-bench b2 OUT FILE...      one JSON analytics record per reading into OUT
//! fleetmap-bench noop-worker [...]   B4: succeed every item at once (see noop.rs)
//! fleetmap-bench s3-requests [...]   B3: CPU per S3 request through the SDK (see s3req.rs)
//! ```
//!
//! b1 and b2 print one JSON line: `seconds` (the work alone, process start-up excluded, as
//! the DuckDB and pyarrow drivers measure theirs), `readings` and a result checksum that
//! `bench/run.sh` compares across tools.

mod noop;
mod s3req;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use fleetmap_protocol::{AnomalyCounts, Thresholds};
use fleetmap_worker::encode::{RecordContext, encode_records};
use fleetmap_worker::kernel::{
    DeviceIds, Readings, SUMMARY_COLUMNS, SummaryColumns, detect, tally_devices,
};
use fleetmap_worker::reader::{open_local_parquet, open_local_parquet_columns};

/// 2026-11-27T20:45:00.123Z, fixed so every run writes the same bytes.
const ANALYSIS_MS: i64 = 1_795_812_300_123;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("b1") => b1(&args[1..]),
        Some("b1-records") => b1_records(&args[1..]),
        Some("b2") if args.len() >= 2 => b2(&args[1], &args[2..]),
        Some("noop-worker") => noop::main(&args[1..]),
        Some("s3-requests") => s3req::main(&args[1..]),
        _ => Err(
            "usage: fleetmap-bench b1 FILE... | b2 OUT FILE... | noop-worker [--queue-prefix P] \
             | s3-requests --get s3://B/KEY --put s3://B/PREFIX"
                .into(),
        ),
    };
    if let Err(e) = result {
        eprintln!("fleetmap-bench: {e}");
        std::process::exit(1);
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

/// B1: readings with anomalies per device and per type, plus totals, decoding only the
/// four columns the summary reads (as DuckDB and pyarrow do).
fn b1(files: &[String]) -> Res {
    let t = Thresholds::default();
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let mut readings = 0u64;
    let mut totals = AnomalyCounts::default();
    let mut devices: HashMap<String, [u64; 4]> = HashMap::new();
    for f in files {
        let reader = open_local_parquet_columns(PathBuf::from(f).as_path(), &SUMMARY_COLUMNS)?;
        for batch in reader {
            let batch = batch?;
            let r = SummaryColumns::from_batch(&batch, "local", f)?;
            let d = r.detect(&t);
            device_counts_by_type(&r.deviceid, &d.mask, &mut devices);
            readings += d.readings;
            totals.add(&d.counts);
        }
    }
    summary_line("fleetmap", start, cpu0, readings, &totals, &devices);
    Ok(())
}

/// B1 through the worker's record path: all seven columns into [`Readings`], as an item
/// decodes them (no encoding).
fn b1_records(files: &[String]) -> Res {
    let t = Thresholds::default();
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let mut readings = 0u64;
    let mut totals = AnomalyCounts::default();
    // deviceid → [readings with anomalies, temperature, humidity, battery]
    let mut devices: HashMap<String, [u64; 4]> = HashMap::new();
    for f in files {
        let reader = open_local_parquet(PathBuf::from(f).as_path())?;
        for batch in reader {
            let batch = batch?;
            let r = Readings::from_batch(&batch, "local", f)?;
            let d = detect(&r, &t);
            device_counts_by_type(&r.deviceid, &d.mask, &mut devices);
            readings += d.readings;
            totals.add(&d.counts);
        }
    }
    summary_line("fleetmap-records", start, cpu0, readings, &totals, &devices);
    Ok(())
}

fn summary_line(
    tool: &str,
    start: Instant,
    cpu0: f64,
    readings: u64,
    totals: &AnomalyCounts,
    devices: &HashMap<String, [u64; 4]>,
) {
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let per_type = devices.values().fold([0u64; 4], |mut acc, c| {
        for (a, b) in acc.iter_mut().zip(c) {
            *a += b;
        }
        acc
    });
    assert_eq!(per_type[0], totals.readings_with_anomalies);
    println!(
        "{{\"tool\":\"{tool}\",\"bench\":\"B1\",\"seconds\":{seconds:.4},\"cpu_seconds\":{cpu:.2},\"readings\":{readings},\
         \"anomalous\":{},\"temperature_spike\":{},\"humidity_anomaly\":{},\"low_battery\":{},\
         \"devices_with_anomalies\":{}}}",
        totals.readings_with_anomalies,
        totals.temperature_spike,
        totals.humidity_anomaly,
        totals.low_battery,
        devices.len()
    );
}

/// B2: the sample-schema JSON lines, written to `out` batch by batch.
fn b2(out: &str, files: &[String]) -> Res {
    let t = Thresholds::default();
    let ctx = RecordContext::new(ANALYSIS_MS, "s3://bench/readings").ok_or("bad analysis time")?;
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let mut file = BufWriter::with_capacity(1 << 20, File::create(out)?);
    let mut buf = Vec::new();
    let (mut readings, mut bytes, mut anomalous) = (0u64, 0u64, 0u64);
    for f in files {
        let reader = open_local_parquet(PathBuf::from(f).as_path())?;
        for batch in reader {
            let batch = batch?;
            let r = Readings::from_batch(&batch, "local", f)?;
            let d = detect(&r, &t);
            buf.clear();
            encode_records(&r, &d.mask, &t, &ctx, 0, &mut buf);
            file.write_all(&buf)?;
            readings += d.readings;
            anomalous += d.counts.readings_with_anomalies;
            bytes += buf.len() as u64;
        }
    }
    file.flush()?;
    drop(file);
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "{{\"tool\":\"fleetmap\",\"bench\":\"B2\",\"seconds\":{seconds:.4},\"cpu_seconds\":{cpu:.2},\"readings\":{readings},\
         \"anomalous\":{anomalous},\"bytes\":{bytes}}}"
    );
    Ok(())
}

/// Adds each anomalous reading to its device's counters: any, temperature, humidity,
/// battery, through the worker's [`tally_devices`].
fn device_counts_by_type(ids: &DeviceIds, mask: &[u8], into: &mut HashMap<String, [u64; 4]>) {
    tally_devices(ids, mask, |id, c| {
        let total = match into.get_mut(id) {
            Some(t) => t,
            None => into.entry(id.to_owned()).or_default(),
        };
        for (t, n) in total.iter_mut().zip(c) {
            *t += n;
        }
    });
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`: on a
/// machine shared with other work, the per-core figure that wall time cannot give.
pub(crate) fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    ticks / 100.0
}
