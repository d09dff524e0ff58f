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
//! - [`batcher`]: pure `ItemBatcher` planning of child executions over row groups.
//! - [`retry`]: pure Step Functions `Retry` rules.
//! - [`spec`]: a run request and its validation.
//! - [`handle`]: the API as Rust — commands and the documents they return.
//! - [`state`]: the checkpoint in the object store (persist before ack).
//! - [`engine`]: the event loop tying them to RabbitMQ.
//! - [`metrics`]: metric names and updates.

pub mod admission;
mod alloc;
pub mod api;
pub mod batcher;
pub mod engine;
pub mod error;
pub mod handle;
pub mod manifest;
pub mod metrics;
pub mod reader;
pub mod result_writer;
pub mod retry;
pub mod run;
pub mod spec;
pub mod state;

pub use engine::{Coordinator, CoordinatorConfig};
pub use error::CoordinatorError;
pub use handle::{
    AdmissionView, ChildExecution, CoordinatorHandle, Page, PageRequest, RunDescription,
    UpdateRequest,
};
pub use reader::ItemSource;
pub use run::{Counts, ExecState, RunId, RunStatus, Tolerance};
pub use spec::RunSpec;
