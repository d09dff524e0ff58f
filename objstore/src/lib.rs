//! The S3 adapter shared by the coordinator, the worker, the CLI and the tests.
//!
//! fleetmap reads Athena UNLOAD manifests and Parquet files from, and writes results to, any
//! S3-protocol store. This crate is the one place that knows how to reach such a store.
//!
//! # Layout
//! - [`config`] — [`S3Config`] (endpoint, region, keys, path style) and [`client()`], which
//!   fixes the retry policy for every process.
//! - [`direct`] — [`DataClient`]: the SDK client plus a direct lane for the data path's small
//!   GETs and PUTs, which skips the SDK's per-call orchestration.
//! - [`uri`] — [`S3Uri`], strict `s3://bucket/key` parsing.
//! - [`ops`] — one-call helpers (get, ranged get, head, put, paginated list, ensure bucket) with
//!   uniform error mapping.
//! - [`local`] — [`local::LocalS3`], a real S3-protocol server on loopback (s3s-fs) for tests
//!   and the demo.
//! - [`error`] — [`ObjStoreError`], naming bucket and key and whether a retry may help.

pub mod config;
pub mod direct;
pub mod error;
pub mod local;
pub mod ops;
pub mod uri;

pub use config::{S3Config, client, data_client, try_client, try_data_client};
pub use direct::DataClient;
pub use error::ObjStoreError;
pub use ops::{
    ensure_bucket, get_bytes, get_range, get_suffix, head_size, list_keys, list_keys_paged,
    put_bytes,
};
pub use uri::S3Uri;
