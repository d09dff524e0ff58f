//! The two messages of fleetmap: an item (a child execution to run) and its outcome.
//!
//! Both are descriptors. Bulk data — Parquet pages, analytics records — moves between workers
//! and the object store directly and never crosses the broker, so a message stays a few
//! hundred bytes however large the file it points at.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, DecodeError, EncodeError, Kind};
use crate::rules::Thresholds;

/// How the objects of a run are encoded (Step Functions' `InputType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputType {
    Parquet,
    /// CSV with a header row naming the columns.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// One JSON array of objects (Step Functions' `JSON` ItemReader input). Added after the
    /// others so earlier variants keep their wire encoding.
    Json,
}

impl InputType {
    pub fn as_str(self) -> &'static str {
        match self {
            InputType::Parquet => "PARQUET",
            InputType::Csv => "CSV",
            InputType::Jsonl => "JSONL",
            InputType::Json => "JSON",
        }
    }
}

impl std::str::FromStr for InputType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "PARQUET" => Ok(InputType::Parquet),
            "CSV" => Ok(InputType::Csv),
            "JSONL" | "JSON_LINES" => Ok(InputType::Jsonl),
            "JSON" => Ok(InputType::Json),
            other => Err(format!(
                "unknown InputType {other:?}: expected PARQUET, CSV, JSONL or JSON"
            )),
        }
    }
}

/// Where a child execution writes its analytics records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultTarget {
    pub bucket: String,
    /// Key prefix without a trailing slash, e.g. `analytics`; empty for the bucket root.
    pub prefix: String,
}

/// One child execution: a range of one object for a worker to process.
///
/// Everything a worker needs travels here — thresholds included — so workers hold no
/// per-run configuration and any worker can take any item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemMessage {
    pub run_id: String,
    /// The child execution's index within its run (0-based).
    pub execution: u32,
    /// 1 for the first dispatch; incremented by retries and redrives.
    pub attempt: u32,
    pub input_type: InputType,
    pub bucket: String,
    pub key: String,
    /// Row groups `[start, end)` of a Parquet object; `None` means the whole object.
    pub row_groups: Option<(u32, u32)>,
    /// Map context `Index` of the first reading of this item within the run.
    pub first_index: u64,
    pub result: ResultTarget,
    /// The run's start time (Unix ms). Used as the analysis time of every record and for
    /// the `YYYY/MM/DD/HH/` result partition, so a redelivered item writes the same bytes
    /// to the same key.
    pub analysis_time_ms: i64,
    pub thresholds: Thresholds,
}

impl ItemMessage {
    /// The object's URI, the Map context's `Source`.
    pub fn source_uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        envelope::encode(Kind::Item, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        envelope::decode(Kind::Item, bytes)
    }
}

/// Counts of anomalies by type, as the reference job names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyCounts {
    pub temperature_spike: u64,
    pub humidity_anomaly: u64,
    pub low_battery: u64,
    /// Readings with at least one anomaly (`healthstatus = anomalies_detected`).
    pub readings_with_anomalies: u64,
}

impl AnomalyCounts {
    pub fn add(&mut self, other: &AnomalyCounts) {
        self.temperature_spike += other.temperature_spike;
        self.humidity_anomaly += other.humidity_anomaly;
        self.low_battery += other.low_battery;
        self.readings_with_anomalies += other.readings_with_anomalies;
    }

    /// Anomalies of all types (a reading may carry several).
    pub fn total(&self) -> u64 {
        self.temperature_spike + self.humidity_anomaly + self.low_battery
    }
}

/// How many anomalous readings one device had in one child execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAnomalies {
    pub deviceid: String,
    pub readings_with_anomalies: u64,
}

/// At most this many devices are listed per outcome, to keep outcomes small; the rest is
/// still counted in [`AnomalyCounts`] and flagged by `devices_truncated`.
pub const MAX_DEVICES_PER_OUTCOME: usize = 256;

/// Longest `cause` an outcome carries, in bytes — Step Functions' own limit for a cause. A
/// cause built from a remote error body or a long key list could otherwise push an outcome
/// past [`MAX_MESSAGE_BYTES`](crate::MAX_MESSAGE_BYTES) and make the failure unreportable.
pub const MAX_CAUSE_BYTES: usize = 32 * 1024;

/// Cuts `cause` to at most [`MAX_CAUSE_BYTES`] on a character boundary, saying so at the end.
pub fn bounded_cause(mut cause: String) -> String {
    const MARK: &str = " … (truncated)";
    if cause.len() <= MAX_CAUSE_BYTES {
        return cause;
    }
    let mut cut = MAX_CAUSE_BYTES - MARK.len();
    while !cause.is_char_boundary(cut) {
        cut -= 1;
    }
    cause.truncate(cut);
    cause.push_str(MARK);
    cause
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ItemStatus {
    Succeeded {
        readings: u64,
        anomalies: AnomalyCounts,
        devices: Vec<DeviceAnomalies>,
        devices_truncated: bool,
        /// Key (in the run's result bucket) of the analytics records written.
        result_key: String,
    },
    Failed {
        /// A Step Functions style error name, see [`crate::errors`].
        error: String,
        /// Human-readable cause naming the object, column or line concerned.
        cause: String,
    },
}

/// What became of one attempt of one child execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeMessage {
    pub run_id: String,
    pub execution: u32,
    pub attempt: u32,
    pub worker_id: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// Bytes fetched from the object store for this item.
    pub bytes_read: u64,
    pub status: ItemStatus,
}

impl OutcomeMessage {
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        envelope::encode(Kind::Outcome, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        envelope::decode(Kind::Outcome, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{MAX_MESSAGE_BYTES, WIRE_VERSION};

    #[test]
    fn a_long_cause_is_cut_on_a_character_boundary() {
        assert_eq!(bounded_cause("short".into()), "short");
        let long = "é".repeat(MAX_CAUSE_BYTES);
        let cut = bounded_cause(long);
        assert!(cut.len() <= MAX_CAUSE_BYTES, "{}", cut.len());
        assert!(cut.ends_with("(truncated)"));
        let outcome = OutcomeMessage {
            run_id: "r".into(),
            execution: 1,
            attempt: 1,
            worker_id: "w".into(),
            started_ms: 0,
            finished_ms: 0,
            bytes_read: 0,
            status: ItemStatus::Failed {
                error: "States.TaskFailed".into(),
                cause: cut,
            },
        };
        let bytes = outcome.encode().expect("a bounded cause fits an outcome");
        assert_eq!(OutcomeMessage::decode(&bytes).unwrap(), outcome);
    }

    fn item() -> ItemMessage {
        ItemMessage {
            run_id: "run-1".into(),
            execution: 7,
            attempt: 1,
            input_type: InputType::Parquet,
            bucket: "data".into(),
            key: "unload/deviceid_partition=sensor-001/part-0".into(),
            row_groups: Some((0, 3)),
            first_index: 1234,
            result: ResultTarget {
                bucket: "results".into(),
                prefix: "analytics".into(),
            },
            analysis_time_ms: 1_700_000_000_000,
            thresholds: Thresholds::default(),
        }
    }

    #[test]
    fn item_round_trips_and_stays_small() {
        let bytes = item().encode().unwrap();
        assert!(bytes.len() < 300, "item message is {} bytes", bytes.len());
        assert_eq!(ItemMessage::decode(&bytes).unwrap(), item());
    }

    #[test]
    fn outcome_round_trips() {
        let o = OutcomeMessage {
            run_id: "r".into(),
            execution: 1,
            attempt: 2,
            worker_id: "w-1".into(),
            started_ms: 1,
            finished_ms: 2,
            bytes_read: 4096,
            status: ItemStatus::Failed {
                error: "States.TaskFailed".into(),
                cause: "boom".into(),
            },
        };
        assert_eq!(OutcomeMessage::decode(&o.encode().unwrap()).unwrap(), o);
    }

    #[test]
    fn outcome_bytes_are_not_an_item() {
        let o = OutcomeMessage {
            run_id: "r".into(),
            execution: 1,
            attempt: 1,
            worker_id: "w".into(),
            started_ms: 0,
            finished_ms: 0,
            bytes_read: 0,
            status: ItemStatus::Failed {
                error: "e".into(),
                cause: "c".into(),
            },
        };
        let err = ItemMessage::decode(&o.encode().unwrap()).unwrap_err();
        assert!(
            matches!(err, DecodeError::WrongKind { got: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_unknown_versions_are_rejected_with_reasons() {
        assert_eq!(
            ItemMessage::decode(b"hi").unwrap_err(),
            DecodeError::TooShort { len: 2 }
        );
        assert!(matches!(
            ItemMessage::decode(b"{\"json\": true}").unwrap_err(),
            DecodeError::BadMagic { .. }
        ));
        let mut bytes = item().encode().unwrap();
        bytes[2] = WIRE_VERSION + 1;
        assert_eq!(
            ItemMessage::decode(&bytes).unwrap_err(),
            DecodeError::UnsupportedVersion {
                got: WIRE_VERSION + 1
            }
        );
        let mut truncated = item().encode().unwrap();
        truncated.truncate(truncated.len() - 5);
        assert!(matches!(
            ItemMessage::decode(&truncated).unwrap_err(),
            DecodeError::Body { .. }
        ));
        let mut trailing = item().encode().unwrap();
        trailing.push(0);
        assert!(matches!(
            ItemMessage::decode(&trailing).unwrap_err(),
            DecodeError::Body { .. }
        ));
        let huge = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            ItemMessage::decode(&huge).unwrap_err(),
            DecodeError::TooLarge { .. }
        ));
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate_unbounded() {
        // Header, then a varint claiming a string of ~2^62 bytes.
        let mut bytes = b"FM".to_vec();
        bytes.push(WIRE_VERSION);
        bytes.push(Kind::Item as u8);
        bytes.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f]);
        assert!(matches!(
            ItemMessage::decode(&bytes).unwrap_err(),
            DecodeError::Body { .. }
        ));
    }
}
