//! Human-readable progress and summaries of map runs.

use std::fmt::Write;
use std::io::IsTerminal;

use fleetmap_coordinator::RunDescription;

/// A one-line progress display on stderr, redrawn in place on a terminal.
pub struct Progress {
    enabled: bool,
    tty: bool,
    last: String,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    pub fn update(&mut self, d: &RunDescription) {
        if !self.enabled {
            return;
        }
        let c = &d.execution_counts;
        let done = c.succeeded + c.failed + c.timed_out + c.aborted;
        let width = 30usize;
        let filled = (done as usize * width)
            .checked_div(c.total as usize)
            .unwrap_or(0);
        let line = format!(
            "{:<9} [{}{}] {done}/{} child executions  succeeded {}  failed {}  running {}  pending {}",
            d.status.as_str(),
            "#".repeat(filled),
            "-".repeat(width - filled.min(width)),
            c.total,
            c.succeeded,
            c.failed + c.timed_out,
            c.running,
            c.pending
        );
        if line != self.last {
            if self.tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
            self.last = line;
        }
    }

    pub fn finish(&self) {
        if self.enabled && self.tty && !self.last.is_empty() {
            eprintln!();
        }
    }
}

/// The end-of-run summary. `local_results` names the folder behind a loopback store.
pub fn summary(d: &RunDescription, local_results: Option<&str>) -> String {
    let mut s = String::new();
    let c = &d.execution_counts;
    let secs = match (&d.start_date, &d.stop_date) {
        (Some(a), Some(b)) => chrono::DateTime::parse_from_rfc3339(b)
            .ok()
            .zip(chrono::DateTime::parse_from_rfc3339(a).ok())
            .map(|(b, a)| (b - a).num_milliseconds() as f64 / 1000.0),
        _ => None,
    };
    let _ = writeln!(
        s,
        "Map run {} {}{}",
        d.map_run_id,
        d.status.as_str(),
        secs.map(|t| format!(" in {t:.2} s")).unwrap_or_default()
    );
    if let Some(label) = &d.label {
        let _ = writeln!(s, "  label:                   {label}");
    }
    let _ = writeln!(s, "  item source:             {}", d.item_source);
    let _ = writeln!(
        s,
        "  child executions:        {} succeeded, {} failed, {} timed out, {} aborted (of {})",
        c.succeeded, c.failed, c.timed_out, c.aborted, c.total
    );
    if !d.executions_by_worker.is_empty() {
        let by: Vec<String> = d
            .executions_by_worker
            .iter()
            .map(|(w, n)| format!("{w} {n}"))
            .collect();
        let _ = writeln!(s, "  by worker:               {}", by.join(", "));
    }
    let _ = writeln!(s, "  readings processed:      {}", d.readings);
    let pct = if d.readings > 0 {
        d.anomalies.readings_with_anomalies as f64 * 100.0 / d.readings as f64
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "  readings with anomalies: {} ({pct:.1} %)",
        d.anomalies.readings_with_anomalies
    );
    let _ = writeln!(
        s,
        "  anomalies by type:       temperature_spike {}, humidity_anomaly {}, low_battery {}",
        d.anomalies.temperature_spike, d.anomalies.humidity_anomaly, d.anomalies.low_battery
    );
    if d.devices_with_anomalies.is_empty() {
        let _ = writeln!(s, "  devices with anomalies:  none");
    } else {
        let devs: Vec<String> = d
            .devices_with_anomalies
            .iter()
            .map(|(dev, n)| format!("{dev} ({n})"))
            .collect();
        let _ = writeln!(
            s,
            "  devices with anomalies:  {} — {}",
            devs.len(),
            devs.join(", ")
        );
    }
    let _ = writeln!(s, "  analytics records:       {}", d.results);
    if let Some(local) = local_results {
        let _ = writeln!(s, "                           (on disk: {local})");
    }
    if let Some(m) = &d.result_writer_manifest {
        let _ = writeln!(s, "  ResultWriter manifest:   {m}");
    }
    if let Some(e) = &d.error {
        let _ = writeln!(s, "  error:                   {e}");
    }
    if let Some(cause) = &d.cause {
        let _ = writeln!(s, "  cause:                   {cause}");
    }
    s
}
