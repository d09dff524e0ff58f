//! The fleetmap worker: stateless, horizontally scaled, one of many.
//!
//! A worker takes item messages from RabbitMQ, reads the object range each names from S3
//! with ranged GETs, runs the anomaly kernel over Arrow batches, writes the analytics
//! records to the results bucket under a deterministic key, publishes the item's outcome
//! with a publisher confirm and only then acks the item. Nothing in it must survive it.
//!
//! # Layout
//! - [`kernel`]: pure anomaly detection over Arrow arrays.
//! - [`encode`]: the sample's analytics record schema as JSON lines, straight from arrays.
//! - [`reader`]: Parquet over aws-sdk-s3 ranged GETs, CSV and JSONL streams.
//! - [`process`]: one item end to end: read, detect, encode, write.
//! - [`consumer`]: the AMQP loop: prefetch, bounded concurrency, confirm-then-ack, drain.
//! - [`config`]: typed worker configuration.

pub mod config;
pub mod consumer;
pub mod encode;
pub mod error;
pub mod kernel;
pub mod process;
pub mod reader;

pub use error::WorkerError;
