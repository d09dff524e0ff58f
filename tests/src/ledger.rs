//! The results-bucket ledger every fault-injection test ends with, and the reliability
//! report it feeds: `tests/reliability.sh` runs those tests with
//! `FLEETMAP_RELIABILITY_REPORT` set and renders the lines into `docs/reliability.md`.
//!
//! A test records its ledger *before* asserting on it, so a run that loses or doubles a
//! reading shows up in the table as well as failing.

use std::collections::HashSet;
use std::io::Write;

use aws_sdk_s3::Client;
use serde_json::Value;

/// Names the file the report lines go to; unset, [`Ledger::report`] writes nothing.
pub const REPORT_ENV: &str = "FLEETMAP_RELIABILITY_REPORT";

/// Analytics records found in a results bucket against the readings expected there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    pub expected: u64,
    /// Records found, duplicates included.
    pub records: u64,
    /// Distinct readings among them, by (deviceid, readingtimestamp).
    pub distinct: u64,
}

impl Ledger {
    /// Counts `records` (analytics records, one per reading) by reading identity.
    pub fn count<'a>(expected: u64, records: impl IntoIterator<Item = &'a Value>) -> Ledger {
        let mut seen = HashSet::new();
        let mut n = 0;
        for r in records {
            n += 1;
            seen.insert(format!("{}|{}", r["deviceid"], r["readingtimestamp"]));
        }
        Ledger {
            expected,
            records: n,
            distinct: seen.len() as u64,
        }
    }

    /// Two ledgers of disjoint runs as one.
    pub fn and(self, other: Ledger) -> Ledger {
        Ledger {
            expected: self.expected + other.expected,
            records: self.records + other.records,
            distinct: self.distinct + other.distinct,
        }
    }

    /// Expected readings with no record.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.distinct)
    }

    /// Records beyond the first of their reading.
    pub fn doubled(&self) -> u64 {
        self.records - self.distinct
    }

    /// Appends this ledger as one line of the reliability report, when one is being made.
    /// `runs` counts the map runs the fault hit; `injection` says how it was caused.
    pub fn report(&self, fault: &str, injection: &str, runs: u64) {
        let Ok(path) = std::env::var(REPORT_ENV) else {
            return;
        };
        let line = serde_json::json!({
            "fault": fault,
            "injection": injection,
            "runs": runs,
            "expected": self.expected,
            "processed": self.records,
            "lost": self.lost(),
            "doubled": self.doubled(),
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{REPORT_ENV}={path}: {e}"));
        writeln!(f, "{line}").unwrap_or_else(|e| panic!("{REPORT_ENV}={path}: {e}"));
    }

    /// Every expected reading exactly once, nothing else.
    pub fn assert_exact(&self) {
        assert_eq!(
            (self.lost(), self.doubled(), self.distinct),
            (0, 0, self.expected),
            "readings lost, doubled, found: {self:?}"
        );
    }
}

/// Every analytics record under `bucket/prefix` whose key passes `keep`, read through the
/// S3 API.
pub async fn results(
    client: &Client,
    bucket: &str,
    prefix: &str,
    keep: impl Fn(&str) -> bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    for key in fleetmap_objstore::list_keys(client, bucket, prefix)
        .await
        .unwrap()
    {
        if !keep(&key) {
            continue;
        }
        let body = fleetmap_objstore::get_bytes(client, bucket, &key)
            .await
            .unwrap();
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!("s3://{bucket}/{key}: a line that is not a JSON record: {e}")
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lost_and_doubled_readings() {
        let r = |d: &str, t: &str| serde_json::json!({"deviceid": d, "readingtimestamp": t});
        let recs = [r("a", "1"), r("a", "2"), r("a", "2"), r("b", "1")];
        let l = Ledger::count(5, &recs);
        assert_eq!((l.records, l.distinct, l.lost(), l.doubled()), (4, 3, 2, 1));
        let exact = Ledger::count(
            3,
            &recs[..2]
                .iter()
                .chain(&recs[3..])
                .cloned()
                .collect::<Vec<_>>(),
        );
        exact.assert_exact();
    }
}
