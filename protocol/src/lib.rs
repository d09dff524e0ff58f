//! The contract between fleetmap's coordinator and its workers.
//!
//! Everything that crosses RabbitMQ is defined here and nowhere else: the item and outcome
//! messages, the envelope that versions them, the queue topology both sides declare, the
//! anomaly rules of the reference job and the Step Functions error names that travel in
//! outcomes. Keeping it in one small crate means a worker and a coordinator built from the
//! same commit can never disagree about a byte.
//!
//! # Layout
//! - [`envelope`]: magic, wire version and kind in front of every bincode payload, with a
//!   decode size limit, so garbage and future versions are rejected instead of misread.
//! - [`messages`]: [`ItemMessage`] (coordinator → worker) and [`OutcomeMessage`] (back),
//!   and their packs of several small child executions ([`ItemPack`], [`encode_outcomes`]).
//! - [`rules`]: the anomaly thresholds of the AWS sample, as configuration with defaults.
//! - [`errors`]: Step Functions error names (`States.*`) and fleetmap's own.
//! - [`topology`]: queue and exchange names and their declaration on a channel.

pub mod amqp;
pub mod envelope;
pub mod errors;
pub mod messages;
pub mod rules;
pub mod topology;

pub use envelope::{DecodeError, EncodeError, Kind, MAX_MESSAGE_BYTES, WIRE_VERSION};
pub use messages::{
    AnomalyCounts, DeviceAnomalies, InputType, ItemMessage, ItemPack, ItemStatus, Items,
    MAX_CAUSE_BYTES, OutcomeMessage, PackedChild, ResultTarget, bounded_cause, decode_outcomes,
    encode_outcomes,
};
pub use rules::{AnomalyType, Thresholds};
pub use topology::{Topology, TopologyError};
