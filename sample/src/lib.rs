//! The AWS sample's IoT data set, as Athena UNLOAD leaves it in S3.
//!
//! fleetmap's reference job reads sensor readings that the AWS Step Functions Distributed Map
//! sample unloads from Athena: Parquet files (no extension, often uncompressed) under
//! `deviceid_partition=` folders, plus a manifest of `s3://` URIs. This crate generates that
//! data set, seeded and byte-for-byte reproducible, for tests, the demo, load tests and
//! benchmarks.
//!
//! # Layout
//! - [`config`] — [`GenConfig`] and its defaults (5 devices, one day, hourly).
//! - [`readings`] — the pure sensor model (temperatures, spikes, battery drain, positions).
//! - [`layout`] — which file holds which readings, and their keys.
//! - [`parquet_out`] — the column schema and the Parquet writer.
//! - [`generate`] — writing files and manifest to S3 or to a folder.
//! - [`error`] — [`SampleError`].

pub mod config;
pub mod error;
pub mod generate;
pub mod layout;
pub mod parquet_out;
pub mod readings;

pub use config::{Compression, GenConfig};
pub use error::SampleError;
pub use generate::{GenReport, generate_to_dir, generate_to_s3};
pub use layout::{PlannedFile, generate_readings, plan_files};
pub use parquet_out::schema;
pub use readings::Reading;
