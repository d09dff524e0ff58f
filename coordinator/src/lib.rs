//! The fleetmap coordinator: the control plane of map runs.
//!
//! It reads a run's item source (an Athena UNLOAD manifest, a prefix, a list), creates the
//! map run, admits it under the account-wide open-run limit, publishes child executions to
//! RabbitMQ within the run's `MaxConcurrency`, applies each outcome exactly once, and writes
//! the Step Functions ResultWriter layout when the run ends. It never reads Parquet data.
//!
//! # Layout
//! - [`manifest`]: pure, streaming Athena manifest parser.
//! - [`run`]: the pure map run state machine and its Step Functions counters.
//! - [`admission`]: pure open-map-run admission control with a FIFO backlog.
//! - [`reader`]: item readers over S3 (manifest, prefix, list).
//! - [`result_writer`]: `manifest.json` / `SUCCEEDED_n.json` / `FAILED_n.json`.
//! - [`engine`]: the event loop tying them to RabbitMQ, and its handle.
//! - [`metrics`]: metric names and updates.

pub mod admission;
pub mod engine;
pub mod error;
pub mod manifest;
pub mod metrics;
pub mod reader;
pub mod result_writer;
pub mod run;

pub use engine::{Coordinator, CoordinatorConfig, CoordinatorHandle, RunDescription, RunSpec};
pub use error::CoordinatorError;
pub use reader::ItemSource;
pub use run::{Counts, RunId, RunStatus, Tolerance};
