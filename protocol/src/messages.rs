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

/// Several small child executions of one run, in one broker message.
///
/// A message costs RabbitMQ, the coordinator and the worker a fixed amount each — a
/// persistent write, a publisher confirm, a delivery, an ack — that for a file of a few
/// dozen readings is most of what its child execution costs. The coordinator packs only
/// children it knows to be small, so a pack is still a few seconds of work at most. Each
/// child keeps its own attempt, outcome, result object and retries; only the transport is
/// shared. What the children of a run have in common travels once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemPack {
    pub run_id: String,
    pub input_type: InputType,
    pub result: ResultTarget,
    pub analysis_time_ms: i64,
    pub thresholds: Thresholds,
    pub children: Vec<PackedChild>,
}

/// What differs between the children of an [`ItemPack`]; see [`ItemMessage`] for each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedChild {
    pub execution: u32,
    pub attempt: u32,
    pub bucket: String,
    pub key: String,
    pub row_groups: Option<(u32, u32)>,
    pub first_index: u64,
}

impl ItemPack {
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        envelope::encode(Kind::ItemPack, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        envelope::decode(Kind::ItemPack, bytes)
    }

    /// Each child as the [`ItemMessage`] it would have been on its own.
    pub fn items(&self) -> impl Iterator<Item = ItemMessage> + '_ {
        self.children.iter().map(|c| ItemMessage {
            run_id: self.run_id.clone(),
            execution: c.execution,
            attempt: c.attempt,
            input_type: self.input_type,
            bucket: c.bucket.clone(),
            key: c.key.clone(),
            row_groups: c.row_groups,
            first_index: c.first_index,
            result: self.result.clone(),
            analysis_time_ms: self.analysis_time_ms,
            thresholds: self.thresholds,
        })
    }
}

/// What one delivery from the items queue carries: one child execution or a pack of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Items {
    One(ItemMessage),
    Pack(ItemPack),
}

impl Items {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match envelope::kind_of(bytes)? {
            Kind::ItemPack => ItemPack::decode(bytes).map(Items::Pack),
            // An outcome (or an item) gets the item decoder's own error.
            _ => ItemMessage::decode(bytes).map(Items::One),
        }
    }

    /// The child executions, in message order.
    pub fn into_items(self) -> Vec<ItemMessage> {
        match self {
            Items::One(item) => vec![item],
            Items::Pack(pack) => pack.items().collect(),
        }
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

/// Encodes outcomes for the outcomes queue: in one message when they fit
/// [`MAX_MESSAGE_BYTES`](crate::MAX_MESSAGE_BYTES), which is nearly always, else halved
/// until each part fits (an outcome may list 256 devices or carry a 32 KiB cause). A lone
/// outcome goes as a plain [`OutcomeMessage`]. Each outcome is encoded once on the common
/// path: this runs for every pack a worker finishes.
pub fn encode_outcomes(outcomes: &[OutcomeMessage]) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut messages = Vec::new();
    if !outcomes.is_empty() {
        encode_fitting(outcomes, &mut messages)?;
    }
    Ok(messages)
}

fn encode_fitting(group: &[OutcomeMessage], out: &mut Vec<Vec<u8>>) -> Result<(), EncodeError> {
    let encoded = match group {
        [one] => one.encode(),
        _ => envelope::encode(Kind::OutcomePack, &group),
    };
    match encoded {
        Ok(message) => out.push(message),
        // Over the limit (bincode's own or the envelope's): each half on its own. A single
        // outcome that still fails reports why.
        Err(_) if group.len() > 1 => {
            let (first, second) = group.split_at(group.len() / 2);
            encode_fitting(first, out)?;
            encode_fitting(second, out)?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Decodes a delivery from the outcomes queue: one outcome or a pack of them.
pub fn decode_outcomes(bytes: &[u8]) -> Result<Vec<OutcomeMessage>, DecodeError> {
    match envelope::kind_of(bytes)? {
        Kind::OutcomePack => envelope::decode(Kind::OutcomePack, bytes),
        _ => OutcomeMessage::decode(bytes).map(|o| vec![o]),
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

    fn pack() -> ItemPack {
        let one = item();
        ItemPack {
            run_id: one.run_id.clone(),
            input_type: one.input_type,
            result: one.result.clone(),
            analysis_time_ms: one.analysis_time_ms,
            thresholds: one.thresholds,
            children: (0..16)
                .map(|i| PackedChild {
                    execution: i,
                    attempt: 1,
                    bucket: one.bucket.clone(),
                    key: format!("tiny/part-{i:05}.parquet"),
                    row_groups: None,
                    first_index: u64::from(i) * 24,
                })
                .collect(),
        }
    }

    #[test]
    fn a_pack_carries_each_child_as_its_own_item_in_less_room() {
        let p = pack();
        let bytes = p.encode().unwrap();
        // What the children share travels once: 16 items alone are ~16 × 150 bytes.
        assert!(bytes.len() < 16 * 60, "pack of 16 is {} bytes", bytes.len());
        let Items::Pack(decoded) = Items::decode(&bytes).unwrap() else {
            panic!("a pack decoded as one item");
        };
        assert_eq!(decoded, p);
        let items = Items::Pack(decoded).into_items();
        assert_eq!(items.len(), 16);
        assert_eq!(items[3].execution, 3);
        assert_eq!(items[3].key, "tiny/part-00003.parquet");
        assert_eq!(items[3].first_index, 72);
        assert_eq!(items[3].thresholds, item().thresholds);
        assert_eq!(
            Items::decode(&item().encode().unwrap()).unwrap(),
            Items::One(item())
        );
        // A pack is no outcome, and an outcome no item.
        assert!(matches!(
            decode_outcomes(&bytes).unwrap_err(),
            DecodeError::WrongKind { got: 3, .. }
        ));
        assert!(matches!(
            ItemMessage::decode(&bytes).unwrap_err(),
            DecodeError::WrongKind { got: 3, .. }
        ));
        let mut unknown = bytes.clone();
        unknown[3] = 9;
        assert_eq!(
            Items::decode(&unknown).unwrap_err(),
            DecodeError::UnknownKind { got: 9 }
        );
    }

    fn failed(execution: u32, cause_bytes: usize) -> OutcomeMessage {
        OutcomeMessage {
            run_id: "r".into(),
            execution,
            attempt: 1,
            worker_id: "w".into(),
            started_ms: 0,
            finished_ms: 1,
            bytes_read: 0,
            status: ItemStatus::Failed {
                error: "States.TaskFailed".into(),
                cause: "x".repeat(cause_bytes),
            },
        }
    }

    #[test]
    fn outcomes_share_messages_as_far_as_the_limit_allows() {
        let small: Vec<_> = (0..16).map(|i| failed(i, 10)).collect();
        let messages = encode_outcomes(&small).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(decode_outcomes(&messages[0]).unwrap(), small);

        // Five outcomes of ~20 KiB do not fit one message; two and three do.
        let big: Vec<_> = (0..5).map(|i| failed(i, 20 * 1024)).collect();
        let messages = encode_outcomes(&big).unwrap();
        assert_eq!(messages.len(), 2);
        let back: Vec<_> = messages
            .iter()
            .flat_map(|m| {
                assert!(m.len() <= MAX_MESSAGE_BYTES);
                decode_outcomes(m).unwrap()
            })
            .collect();
        assert_eq!(back, big);

        // Alone, an outcome travels as a plain one, which every consumer reads.
        let one = encode_outcomes(&big[..1]).unwrap();
        assert_eq!(OutcomeMessage::decode(&one[0]).unwrap(), big[0]);
        assert!(encode_outcomes(&[]).unwrap().is_empty());
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
