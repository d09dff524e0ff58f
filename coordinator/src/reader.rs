//! Item readers: turn a run's item source into the list of objects to process.
//!
//! Step Functions' `ItemReader` knows several sources; fleetmap reads an Athena manifest
//! (streamed line by line, so a million-line manifest costs only its parsed URIs), an S3
//! prefix (paginated `ListObjectsV2`) or an explicit list. Every failure here is
//! `States.ItemReaderFailed` and names the source.

use aws_sdk_s3::Client;
use fleetmap_objstore::DataClient;
use fleetmap_objstore::{S3Uri, list_keys};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::manifest::{MAX_LINE_BYTES, ManifestParser};

/// Where a run's items come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ItemSource {
    /// An Athena UNLOAD manifest (`ManifestType: ATHENA_DATA`): one object URI per line.
    AthenaManifest { uri: String },
    /// Every object under a prefix (`ListObjectsV2`), in key order; folder markers skipped.
    Prefix { uri: String },
    /// An explicit list of object URIs (a JSON array in the run input).
    Objects { uris: Vec<String> },
}

impl ItemSource {
    pub fn describe(&self) -> String {
        match self {
            ItemSource::AthenaManifest { uri } => format!("manifest {uri}"),
            ItemSource::Prefix { uri } => format!("prefix {uri}"),
            ItemSource::Objects { uris } => format!("{} listed objects", uris.len()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReaderError(pub String);

/// Reads the source into object URIs, in order. The error string is the run's `cause`.
pub async fn read_items(s3: &Client, source: &ItemSource) -> Result<Vec<S3Uri>, ReaderError> {
    match source {
        ItemSource::AthenaManifest { uri } => read_manifest(s3, uri).await,
        ItemSource::Prefix { uri } => {
            let prefix = S3Uri::parse_prefix(uri)
                .map_err(|e| ReaderError(format!("item source prefix {uri:?}: {e}")))?;
            let keys = list_keys(s3, &prefix.bucket, &prefix.key)
                .await
                .map_err(|e| ReaderError(format!("listing {uri}: {e}")))?;
            let uris: Vec<S3Uri> = keys
                .into_iter()
                .filter(|k| !k.ends_with('/'))
                .map(|key| S3Uri {
                    bucket: prefix.bucket.clone(),
                    key,
                })
                .collect();
            if uris.is_empty() {
                return Err(ReaderError(format!("no objects under prefix {uri}")));
            }
            Ok(uris)
        }
        ItemSource::Objects { uris } => {
            if uris.is_empty() {
                return Err(ReaderError("the item list is empty".into()));
            }
            uris.iter()
                .enumerate()
                .map(|(i, u)| {
                    S3Uri::parse(u).map_err(|e| ReaderError(format!("item {i} ({u:?}): {e}")))
                })
                .collect()
        }
    }
}

async fn read_manifest(s3: &Client, uri: &str) -> Result<Vec<S3Uri>, ReaderError> {
    let m = S3Uri::parse(uri).map_err(|e| ReaderError(format!("manifest URI {uri:?}: {e}")))?;
    let resp = s3
        .get_object()
        .bucket(&m.bucket)
        .key(&m.key)
        .send()
        .await
        .map_err(|e| {
            let missing = e.as_service_error().is_some_and(|se| se.is_no_such_key());
            if missing {
                ReaderError(format!("manifest {m} does not exist"))
            } else {
                ReaderError(format!(
                    "reading manifest {m}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ))
            }
        })?;
    let mut body = resp.body.into_async_read();
    let mut parser = ManifestParser::new(m.to_string());
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        // Bounded read: a line longer than any URI is rejected without buffering all of it.
        let mut limited = (&mut body).take(MAX_LINE_BYTES as u64 + 1);
        let n = limited
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| ReaderError(format!("reading manifest {m}: {e}")))?;
        if n == 0 {
            break;
        }
        parser
            .push_line(&line)
            .map_err(|e| ReaderError(e.to_string()))?;
    }
    parser.finish().map_err(|e| ReaderError(e.to_string()))
}

/// Footer reads in flight at once while planning a batched run.
const FOOTER_CONCURRENCY: usize = 16;
/// Bytes fetched from an object's end: usually the whole footer in one request.
const FOOTER_PREFETCH: u64 = 64 * 1024;

/// Reads each Parquet object's footer (two small ranged GETs at most, never data pages) to
/// learn its row groups, [`FOOTER_CONCURRENCY`] at a time, yielding the layouts in `uris`'
/// order as they come in. An unreadable footer is not the item reader's failure: that child
/// execution covers the whole object and its worker reports the problem with the object.
pub fn read_layouts(
    s3: DataClient,
    uris: Vec<S3Uri>,
) -> impl futures::Stream<Item = crate::batcher::FileLayout> {
    use futures::StreamExt;
    futures::stream::iter(uris)
        .map(move |u| {
            let s3 = s3.clone();
            async move {
                let row_groups = match footer_row_groups(&s3, &u).await {
                    Ok(g) => Some(g),
                    Err(e) => {
                        tracing::warn!(object = %u, error = %e, "footer unreadable; whole-object child execution");
                        None
                    }
                };
                crate::batcher::FileLayout {
                    bucket: u.bucket,
                    key: u.key,
                    row_groups,
                }
            }
        })
        .buffered(FOOTER_CONCURRENCY)
}

async fn footer_row_groups(s3: &DataClient, u: &S3Uri) -> Result<Vec<(u64, u64)>, String> {
    // One request for the length and the tail, which usually holds the whole footer.
    let (tail, size) = s3
        .get_suffix(&u.bucket, &u.key, FOOTER_PREFETCH)
        .await
        .map_err(|e| e.to_string())?;
    if size < 12 {
        return Err(format!("{u} is {size} bytes, too small to be Parquet"));
    }
    let n = tail.len();
    if n < 8 || &tail[n - 4..] != b"PAR1" {
        return Err(format!("{u} does not end with the Parquet magic bytes"));
    }
    let meta_len = u32::from_le_bytes([tail[n - 8], tail[n - 7], tail[n - 6], tail[n - 5]]) as u64;
    if meta_len + 8 > size {
        return Err(format!(
            "{u}: footer length {meta_len} exceeds the object size {size}"
        ));
    }
    let meta = if meta_len + 8 <= n as u64 {
        tail.slice(n - 8 - meta_len as usize..n - 8)
    } else {
        s3.get_range(&u.bucket, &u.key, size - 8 - meta_len..size - 8)
            .await
            .map_err(|e| e.to_string())?
    };
    let md = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&meta)
        .map_err(|e| format!("{u}: corrupt Parquet footer: {e}"))?;
    Ok(md
        .row_groups()
        .iter()
        .map(|rg| {
            (
                rg.num_rows().max(0) as u64,
                rg.compressed_size().max(0) as u64,
            )
        })
        .collect())
}
