//! Reading an item's object from S3: Parquet by ranged GETs, CSV and JSONL as streams.
//!
//! Parquet is never downloaded whole. [`S3FileReader`] implements parquet's
//! [`AsyncFileReader`] over S3 ranged GETs (the [`DataClient`]'s direct lane, which skips the
//! SDK's per-call overhead; see `fleetmap_objstore::direct`): one suffix GET of the last
//! 64 KiB, which tells the length and usually holds the whole footer (and all of a small
//! file, which then costs no other request), then only the column chunks of the seven needed
//! columns in the item's row groups, nearby ranges coalesced and fetched concurrently. Every byte fetched is counted, because outcomes report `bytes_read`.
//!
//! [`ItemReader`] hands work out a row group at a time as a [`Chunk`]: for Parquet the
//! row group's bytes are already in memory and the chunk is a synchronous decoder, so the
//! caller can decode it on a blocking thread rather than on the async runtime. CSV and
//! JSONL (see [`text`]) are decoded as their body streams in, holding at most one network
//! chunk and one batch of rows.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{DataType, FieldRef, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use fleetmap_objstore::DataClient;
use fleetmap_objstore::ObjStoreError;
use fleetmap_protocol::{InputType, ItemMessage};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderBuilder, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::async_reader::{
    AsyncFileReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::error::WorkerError;
use crate::kernel::{COLUMNS, DEVICEID, find_column};

pub mod text;

/// The tail fetched first: big enough for the footer of any ordinary file, so metadata
/// usually costs one request.
pub const FOOTER_PREFETCH: usize = 64 * 1024;
/// Ranges closer than this are fetched as one GET: a request costs more than ~1 MiB of
/// transfer on S3 (the same default as the `object_store` crate).
pub const COALESCE_GAP: u64 = 1024 * 1024;
/// At most this many GETs of one object in flight at once.
pub const MAX_CONCURRENT_FETCHES: usize = 8;
/// Rows per decoded batch.
pub const BATCH_SIZE: usize = 8192;
/// Default limit on the bytes of one row group's needed column chunks, which the worker
/// holds in memory while decoding it (Step Functions' limit is 256 MB too).
pub const DEFAULT_MAX_ROW_GROUP_BYTES: u64 = 256 * 1024 * 1024;

/// Parquet's async reader interface over S3 ranged GETs.
#[derive(Debug, Clone)]
pub struct S3FileReader {
    client: DataClient,
    bucket: String,
    key: String,
    size: u64,
    bytes_read: Arc<AtomicU64>,
    coalesce_gap: u64,
    /// The object's last bytes, from [`S3FileReader::open`], with the offset they start at:
    /// reads inside them are served without a request.
    tail: Option<(u64, Bytes)>,
}

impl S3FileReader {
    /// Reads the object's last [`FOOTER_PREFETCH`] bytes and its length with one GET and
    /// returns a reader that serves reads inside them from memory.
    pub async fn open(client: &DataClient, bucket: &str, key: &str) -> Result<Self, WorkerError> {
        let (tail, size) = client
            .get_suffix(bucket, key, FOOTER_PREFETCH as u64)
            .await
            .map_err(|e| from_store(e, "GetObject"))?;
        let mut reader = Self::new(client.clone(), bucket, key, size);
        reader
            .bytes_read
            .fetch_add(tail.len() as u64, Ordering::Relaxed);
        reader.tail = Some((size - tail.len() as u64, tail));
        Ok(reader)
    }

    /// A reader for an object whose length is already known.
    pub fn new(client: DataClient, bucket: &str, key: &str, size: u64) -> Self {
        S3FileReader {
            client,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            bytes_read: Arc::new(AtomicU64::new(0)),
            coalesce_gap: COALESCE_GAP,
            tail: None,
        }
    }

    /// Overrides [`COALESCE_GAP`].
    pub fn with_coalesce_gap(mut self, gap: u64) -> Self {
        self.coalesce_gap = gap;
        self
    }

    /// The shared counter of bytes fetched, which outlives the reader once a stream owns it.
    pub fn bytes_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes_read)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// One ranged GET, counted, checked for length. Errors travel through parquet as
    /// `ParquetError::External(WorkerError)` and are unwrapped again by [`parquet_error`].
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, parquet::errors::Result<Bytes>> {
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), self.key.clone());
        let counter = Arc::clone(&self.bytes_read);
        let size = self.size;
        let cached = self.tail.as_ref().and_then(|(start, tail)| {
            let end = start + tail.len() as u64;
            (range.start >= *start && range.end <= end && range.start <= range.end)
                .then(|| tail.slice((range.start - start) as usize..(range.end - start) as usize))
        });
        async move {
            if let Some(bytes) = cached {
                return Ok(bytes);
            }
            if range.end > size || range.start > range.end {
                // The footer promises pages the object does not hold: the file is truncated
                // or its metadata corrupt. Retrying reads the same bytes, so it is bad input,
                // not a storage fault.
                return Err(external(WorkerError::InvalidInput {
                    bucket,
                    key,
                    format: "PARQUET",
                    source: format!(
                        "the Parquet metadata points at bytes {}..{} but the object is {size} \
                         bytes long (truncated or corrupt file)",
                        range.start, range.end
                    )
                    .into(),
                }));
            }
            let want = range.end.saturating_sub(range.start);
            let bytes = client
                .get_range(&bucket, &key, range)
                .await
                .map_err(|e| external(from_store(e, "GetObject")))?;
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if bytes.len() as u64 != want {
                // The object changed or the store misbehaved; a fresh attempt may succeed.
                return Err(external(WorkerError::Storage {
                    bucket,
                    key,
                    op: "GetObject",
                    retryable: true,
                    source: format!("ranged GET returned {} bytes, expected {want}", bytes.len())
                        .into(),
                }));
            }
            Ok(bytes)
        }
        .boxed()
    }
}

impl AsyncFileReader for S3FileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.fetch(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let blocks = coalesce(&ranges, self.coalesce_gap);
        let fetches: Vec<_> = blocks.iter().map(|b| self.fetch(b.clone())).collect();
        async move {
            let data: Vec<Bytes> = futures::stream::iter(fetches)
                .buffered(MAX_CONCURRENT_FETCHES)
                .try_collect()
                .await?;
            ranges
                .iter()
                .map(|r| slice_from_blocks(&blocks, &data, r))
                .collect()
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_metadata_options(options.map(|o| o.metadata_options().clone()))
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Sorted, merged blocks covering `ranges`, merging ranges less than `gap` apart.
pub fn coalesce(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.end > r.start).cloned().collect();
    sorted.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(gap) => {
                last.end = last.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

/// The bytes of `r` cut out of the fetched block that contains it.
fn slice_from_blocks(
    blocks: &[Range<u64>],
    data: &[Bytes],
    r: &Range<u64>,
) -> parquet::errors::Result<Bytes> {
    if r.end <= r.start {
        return Ok(Bytes::new());
    }
    let i = blocks.partition_point(|b| b.end < r.end);
    let (block, bytes) = blocks
        .get(i)
        .zip(data.get(i))
        .filter(|(b, _)| b.start <= r.start)
        .ok_or_else(|| ParquetError::General(format!("range {r:?} was not fetched")))?;
    let from = usize::try_from(r.start - block.start).unwrap_or(usize::MAX);
    let to = usize::try_from(r.end - block.start).unwrap_or(usize::MAX);
    if to > bytes.len() {
        return Err(ParquetError::General(format!(
            "range {r:?} beyond fetched data"
        )));
    }
    Ok(bytes.slice(from..to))
}

fn external(e: WorkerError) -> ParquetError {
    ParquetError::External(Box::new(e))
}

/// Maps an objstore failure into the worker's error, keeping it as the source.
pub(crate) fn from_store(e: ObjStoreError, op: &'static str) -> WorkerError {
    match e {
        ObjStoreError::NotFound { bucket, key } => WorkerError::ObjectNotFound { bucket, key },
        // The object and the operation are named by the worker's error; keep only the
        // store's own reason (status, code, message) as the source.
        ObjStoreError::Get {
            bucket,
            key,
            retryable,
            source,
        }
        | ObjStoreError::Head {
            bucket,
            key,
            retryable,
            source,
        }
        | ObjStoreError::Put {
            bucket,
            key,
            retryable,
            source,
        } => WorkerError::Storage {
            bucket,
            key,
            op,
            retryable,
            source,
        },
        other => WorkerError::Storage {
            bucket: String::new(),
            key: String::new(),
            op,
            retryable: other.is_retryable(),
            source: Box::new(other),
        },
    }
}

/// A parquet failure: our own storage errors come back out as they went in; anything else
/// means the bytes are not the Parquet they claim to be.
fn parquet_error(e: ParquetError, bucket: &str, key: &str) -> WorkerError {
    let source: crate::error::BoxError = match e {
        ParquetError::External(inner) => match inner.downcast::<WorkerError>() {
            Ok(w) => return *w,
            Err(other) => other,
        },
        other => Box::new(other),
    };
    WorkerError::InvalidInput {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        format: InputType::Parquet.as_str(),
        source,
    }
}

/// A unit of work: one row group's decoder, or one already-decoded batch.
pub enum Chunk {
    /// A Parquet row group whose column chunks are in memory; decoding it is CPU work.
    RowGroup(ParquetRecordBatchReader),
    Batch(RecordBatch),
}

impl Chunk {
    /// The chunk's batches, decoding as it goes. Errors name the object.
    pub fn into_batches(
        self,
        bucket: &str,
        key: &str,
    ) -> impl Iterator<Item = Result<RecordBatch, WorkerError>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        let (reader, batch) = match self {
            Chunk::RowGroup(r) => (Some(r), None),
            Chunk::Batch(b) => (None, Some(Ok(b))),
        };
        batch.into_iter().chain(reader.into_iter().flatten().map(
            move |r: Result<RecordBatch, ArrowError>| {
                r.map_err(|e| WorkerError::InvalidInput {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    format: InputType::Parquet.as_str(),
                    source: Box::new(e),
                })
            },
        ))
    }
}

enum Source {
    Parquet(Box<ParquetRecordBatchStream<S3FileReader>>),
    Text(Box<text::TextReader>),
}

/// Reads the object (and row groups) one item names, whatever its input type.
pub struct ItemReader {
    source: Source,
    bucket: String,
    key: String,
    bytes_read: Arc<AtomicU64>,
}

impl ItemReader {
    /// Opens the item's object: for Parquet, reads the footer, checks the columns and row
    /// groups and sets up the projection; for CSV / JSONL, starts the GET.
    pub async fn open(client: &DataClient, item: &ItemMessage) -> Result<Self, WorkerError> {
        Self::open_with(client, item, DEFAULT_MAX_ROW_GROUP_BYTES).await
    }

    /// [`ItemReader::open`] with an explicit row group limit (see
    /// [`WorkerError::RowGroupTooLarge`]).
    pub async fn open_with(
        client: &DataClient,
        item: &ItemMessage,
        max_row_group_bytes: u64,
    ) -> Result<Self, WorkerError> {
        let (bucket, key) = (item.bucket.as_str(), item.key.as_str());
        let (source, bytes_read) = match item.input_type {
            InputType::Parquet => {
                let reader = S3FileReader::open(client, bucket, key).await?;
                let counter = reader.bytes_counter();
                let stream =
                    open_parquet_with(reader, bucket, key, item.row_groups, max_row_group_bytes)
                        .await?;
                (Source::Parquet(Box::new(stream)), counter)
            }
            InputType::Csv | InputType::Jsonl | InputType::Json => {
                let counter = Arc::new(AtomicU64::new(0));
                let reader = text::TextReader::open(client, item, Arc::clone(&counter)).await?;
                (Source::Text(Box::new(reader)), counter)
            }
        };
        Ok(ItemReader {
            source,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            bytes_read,
        })
    }

    /// The next chunk of work; `None` at the end of the item.
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>, WorkerError> {
        match &mut self.source {
            Source::Parquet(stream) => stream
                .next_row_group()
                .await
                .map(|r| r.map(Chunk::RowGroup))
                .map_err(|e| parquet_error(e, &self.bucket, &self.key)),
            Source::Text(t) => Ok(t.next_batch().await?.map(Chunk::Batch)),
        }
    }

    /// Bytes fetched from the object store so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
}

/// Reads the footer, then builds a stream over only the needed columns of the item's
/// row groups.
pub async fn open_parquet(
    reader: S3FileReader,
    bucket: &str,
    key: &str,
    row_groups: Option<(u32, u32)>,
) -> Result<ParquetRecordBatchStream<S3FileReader>, WorkerError> {
    open_parquet_with(reader, bucket, key, row_groups, DEFAULT_MAX_ROW_GROUP_BYTES).await
}

/// [`open_parquet`] with an explicit row group limit.
pub async fn open_parquet_with(
    reader: S3FileReader,
    bucket: &str,
    key: &str,
    row_groups: Option<(u32, u32)>,
    max_row_group_bytes: u64,
) -> Result<ParquetRecordBatchStream<S3FileReader>, WorkerError> {
    let mut reader = reader;
    let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
        .await
        .map_err(|e| parquet_error(e, bucket, key))?;
    let builder =
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader, keep_id_dictionary(meta));
    configure(
        builder,
        bucket,
        key,
        &COLUMNS,
        row_groups,
        max_row_group_bytes,
    )?
    .build()
    .map_err(|e| parquet_error(e, bucket, key))
}

/// The same projection, row groups and batch size as [`open_parquet`], over a local file
/// and decoded synchronously: what the benchmarks drive to measure the data path without
/// the network.
pub fn open_local_parquet(path: &Path) -> Result<ParquetRecordBatchReader, WorkerError> {
    open_local_parquet_columns(path, &COLUMNS)
}

/// [`open_local_parquet`] decoding only `columns` (e.g. [`crate::kernel::SUMMARY_COLUMNS`]).
pub fn open_local_parquet_columns(
    path: &Path,
    columns: &[&'static str],
) -> Result<ParquetRecordBatchReader, WorkerError> {
    let key = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| WorkerError::Storage {
        bucket: String::new(),
        key: key.clone(),
        op: "open",
        retryable: false,
        source: Box::new(e),
    })?;
    let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
        .map_err(|e| parquet_error(e, "", &key))?;
    let builder =
        ParquetRecordBatchReaderBuilder::new_with_metadata(file, keep_id_dictionary(meta));
    configure(
        builder,
        "",
        &key,
        columns,
        None,
        DEFAULT_MAX_ROW_GROUP_BYTES,
    )?
    .build()
    .map_err(|e| parquet_error(e, "", &key))
}

/// Has the decoder hand `deviceid` over as the dictionary the file stores it in rather than
/// as one string per row (see [`crate::kernel::DeviceIds`]): on the generated data that
/// was a third of the decoding time (copying every row's id out of the dictionary). Only
/// when every row group's chunk of the column has a dictionary page; a column written
/// plain would otherwise be hashed into a dictionary. A file whose schema does not take
/// the hint reads as it did.
fn keep_id_dictionary(meta: ArrowReaderMetadata) -> ArrowReaderMetadata {
    let schema = meta.schema();
    let Some(i) = find_column(schema, DEVICEID) else {
        return meta;
    };
    let field = schema.field(i);
    if !matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8) {
        return meta;
    }
    let parquet = meta.metadata();
    let leaf = parquet
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [field.name().as_str()]);
    let Some(leaf) = leaf else {
        return meta;
    };
    let all_dictionary = parquet
        .row_groups()
        .iter()
        .all(|rg| rg.column(leaf).dictionary_page_offset().is_some());
    if !all_dictionary {
        return meta;
    }
    let keyed = DataType::Dictionary(
        Box::new(DataType::Int32),
        Box::new(field.data_type().clone()),
    );
    let mut fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
    fields[i] = Arc::new(field.as_ref().clone().with_data_type(keyed));
    let hinted = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    ArrowReaderMetadata::try_new(
        Arc::clone(parquet),
        ArrowReaderOptions::new().with_schema(hinted),
    )
    .unwrap_or(meta)
}

/// Projects `columns`, selects the item's row groups and refuses any of them whose needed
/// column chunks exceed `max_row_group_bytes`.
fn configure<T>(
    builder: ArrowReaderBuilder<T>,
    bucket: &str,
    key: &str,
    columns: &[&'static str],
    row_groups: Option<(u32, u32)>,
    max_row_group_bytes: u64,
) -> Result<ArrowReaderBuilder<T>, WorkerError> {
    let roots = columns
        .iter()
        .map(|&column| {
            find_column(builder.schema(), column).ok_or_else(|| WorkerError::MissingColumn {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                column,
            })
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let available = builder.metadata().num_row_groups();
    let groups: Vec<usize> = match row_groups {
        None => (0..available).collect(),
        Some((start, end)) => {
            let (s, e) = (start as usize, end as usize);
            if s > e || e > available {
                return Err(WorkerError::RowGroupsOutOfRange {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    start,
                    end,
                    available,
                });
            }
            (s..e).collect()
        }
    };
    for &g in &groups {
        let bytes = projected_bytes(builder.metadata(), g, &roots);
        if bytes > max_row_group_bytes {
            return Err(WorkerError::RowGroupTooLarge {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                row_group: g,
                bytes,
                limit: max_row_group_bytes,
            });
        }
    }
    Ok(builder
        .with_projection(mask)
        .with_row_groups(groups)
        .with_batch_size(BATCH_SIZE))
}

/// Bytes of row group `g`'s column chunks under the projected root columns: what is
/// fetched and held while the row group is decoded (pages are decompressed one at a time).
fn projected_bytes(metadata: &ParquetMetaData, g: usize, roots: &[usize]) -> u64 {
    let schema = metadata.file_metadata().schema_descr();
    metadata
        .row_group(g)
        .columns()
        .iter()
        .enumerate()
        .filter(|(leaf, _)| roots.contains(&schema.get_column_root_idx(*leaf)))
        .map(|(_, c)| u64::try_from(c.compressed_size()).unwrap_or(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_ranges_merge_and_far_ones_stay_apart() {
        let blocks = coalesce(&[20..30, 0..10, 12..15, 100..200, 5..8], 5);
        assert_eq!(blocks, vec![0..30, 100..200]);
        assert_eq!(coalesce(&[0..10, 10..20], 0), vec![0..20]);
        assert_eq!(coalesce(&[0..10, 11..20], 0), vec![0..10, 11..20]);
        assert!(coalesce(&[5..5, 9..9], 10).is_empty());
    }

    #[test]
    fn requested_ranges_are_cut_from_their_blocks() {
        let ranges = vec![20..30, 0..10, 100..150, 7..7];
        let blocks = coalesce(&ranges, 50);
        assert_eq!(blocks, vec![0..30, 100..150]);
        let data = vec![
            Bytes::from((0u8..30).collect::<Vec<_>>()),
            Bytes::from((100u8..150).collect::<Vec<_>>()),
        ];
        let out: Vec<Bytes> = ranges
            .iter()
            .map(|r| slice_from_blocks(&blocks, &data, r).unwrap())
            .collect();
        assert_eq!(out[0].as_ref(), (20u8..30).collect::<Vec<_>>());
        assert_eq!(out[1].as_ref(), (0u8..10).collect::<Vec<_>>());
        assert_eq!(out[2].as_ref(), (100u8..150).collect::<Vec<_>>());
        assert!(out[3].is_empty());
        assert!(slice_from_blocks(&blocks, &data, &(40..60)).is_err());
    }

    /// Writes `ids` as a one-column Parquet file, dictionary-encoded or plain, and reads
    /// the column back through the worker's projection.
    fn read_ids_back(ids: &[&str], dictionary: bool) -> arrow::array::ArrayRef {
        use arrow::array::StringArray;
        use parquet::arrow::ArrowWriter;
        use parquet::file::properties::WriterProperties;

        let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
            "DeviceId",
            DataType::Utf8,
            false,
        )]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from(ids.to_vec()))],
        )
        .unwrap();
        let path = std::env::temp_dir().join(format!(
            "fleetmap-reader-ids-{}-{dictionary}.parquet",
            std::process::id()
        ));
        let props = WriterProperties::builder()
            .set_dictionary_enabled(dictionary)
            .set_max_row_group_row_count(Some(2))
            .build();
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, Some(props))
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let batches: Vec<RecordBatch> = open_local_parquet_columns(&path, &[DEVICEID])
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let arrays: Vec<&dyn arrow::array::Array> =
            batches.iter().map(|b| b.column(0).as_ref()).collect();
        arrow::compute::concat(&arrays).unwrap()
    }

    #[test]
    fn dictionary_encoded_device_ids_stay_a_dictionary() {
        let ids = ["s-2", "s-1", "s-2", "s-2", "s-3"];
        let dict = read_ids_back(&ids, true);
        assert!(matches!(dict.data_type(), DataType::Dictionary(..)));
        let plain = read_ids_back(&ids, false);
        assert_eq!(plain.data_type(), &DataType::Utf8);
        for column in [dict, plain] {
            let got = crate::kernel::DeviceIds::new(&column).unwrap();
            let got: Vec<Option<&str>> = (0..got.len()).map(|i| got.value(i)).collect();
            assert_eq!(got, ids.map(Some));
        }
    }
}
