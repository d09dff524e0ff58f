//! The one error type of the sample generator; each variant names the file it concerns.

use std::path::PathBuf;

use fleetmap_objstore::ObjStoreError;

/// Everything that can go wrong generating the sample data set.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A [`crate::GenConfig`] field makes no data set (zero devices, empty files, ...).
    #[error("invalid sample config: {field} {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// Building a record batch or encoding Parquet failed for this file.
    #[error("encoding Parquet for {file} failed")]
    Encode {
        file: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// Building an Arrow record batch for this file failed.
    #[error("building a record batch for {file} failed")]
    Batch {
        file: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    /// Uploading a file or the manifest failed; the inner error names bucket and key.
    #[error(transparent)]
    Store(#[from] ObjStoreError),

    /// Writing a local file failed.
    #[error("writing {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The encoding thread stopped without reporting an error (it panicked).
    #[error("the Parquet encoding task stopped unexpectedly: {reason}")]
    EncoderStopped { reason: String },
}
