//! CSV (with a header row) and JSON-lines objects, decoded as the GET body streams in.
//!
//! arrow's push decoders take arbitrary byte slices, so each network chunk is fed as it
//! arrives and a batch is flushed whenever the decoder has a full one: memory stays at one
//! chunk plus one batch of rows, however large the object.
//!
//! The schema is explicit, not inferred: `deviceid` and `timestamp` as text, the metrics as
//! `Float64`. A CSV header may name the columns in any order and case and carry others,
//! which are skipped; a required column absent from the header is a
//! [`WorkerError::MissingColumn`]. JSON objects are matched by exact (lower-case) key; a key
//! absent from a line reads as null, since a JSON line has no header to check.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::csv;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::json;
use arrow::record_batch::RecordBatch;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Buf, Bytes, BytesMut};
use fleetmap_protocol::{InputType, ItemMessage};

use super::BATCH_SIZE;
use crate::error::WorkerError;
use crate::kernel::{COLUMNS, DEVICEID, TIMESTAMP, find_column};

/// A CSV header longer than this is not a header of this job's data.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The canonical type of one of the job's columns, by name.
fn column_type(name: &str) -> DataType {
    if name.eq_ignore_ascii_case(DEVICEID) || name.eq_ignore_ascii_case(TIMESTAMP) {
        DataType::Utf8
    } else if COLUMNS.iter().any(|c| c.eq_ignore_ascii_case(name)) {
        DataType::Float64
    } else {
        DataType::Utf8
    }
}

/// The seven columns with their canonical types, in record order.
pub fn readings_schema() -> SchemaRef {
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|c| Field::new(*c, column_type(c), true))
            .collect::<Vec<_>>(),
    ))
}

enum Decoder {
    Csv(Box<csv::reader::Decoder>),
    Json(json::reader::Decoder),
}

impl Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, ArrowError> {
        match self {
            Decoder::Csv(d) => d.decode(buf),
            Decoder::Json(d) => d.decode(buf),
        }
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        match self {
            Decoder::Csv(d) => d.flush(),
            Decoder::Json(d) => d.flush(),
        }
    }
}

/// A streaming reader of one CSV or JSONL object.
pub struct TextReader {
    body: ByteStream,
    /// `None` for an empty object: no header, no rows.
    decoder: Option<Decoder>,
    /// Bytes received but not yet consumed by the decoder.
    pending: Bytes,
    eof: bool,
    done: bool,
    bytes_read: Arc<AtomicU64>,
    bucket: String,
    key: String,
    format: InputType,
}

impl TextReader {
    /// Starts the GET and, for CSV, reads the header to learn the column order.
    pub async fn open(
        client: &Client,
        item: &ItemMessage,
        bytes_read: Arc<AtomicU64>,
    ) -> Result<Self, WorkerError> {
        let (bucket, key) = (item.bucket.as_str(), item.key.as_str());
        let out = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| WorkerError::from_read(e, bucket, key, "GetObject"))?;
        let mut reader = TextReader {
            body: out.body,
            decoder: None,
            pending: Bytes::new(),
            eof: false,
            done: false,
            bytes_read,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            format: item.input_type,
        };
        reader.decoder = match item.input_type {
            InputType::Csv => reader.read_csv_header().await?,
            _ => Some(Decoder::Json(
                json::ReaderBuilder::new(readings_schema())
                    .with_batch_size(BATCH_SIZE)
                    .with_coerce_primitive(true)
                    .build_decoder()
                    .map_err(|e| reader.invalid(e))?,
            )),
        };
        Ok(reader)
    }

    fn invalid(&self, e: ArrowError) -> WorkerError {
        WorkerError::InvalidInput {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            format: self.format.as_str(),
            source: Box::new(e),
        }
    }

    /// The next network chunk into `pending`; false at the end of the body.
    async fn fill(&mut self) -> Result<bool, WorkerError> {
        match self.body.try_next().await {
            Ok(Some(chunk)) => {
                self.bytes_read
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                self.pending = chunk;
                Ok(true)
            }
            Ok(None) => {
                self.eof = true;
                Ok(false)
            }
            Err(e) => Err(WorkerError::Storage {
                bucket: self.bucket.clone(),
                key: self.key.clone(),
                op: "GetObject",
                // The connection broke mid-body; a fresh request may well succeed.
                retryable: true,
                source: Box::new(e),
            }),
        }
    }

    /// Buffers up to the first newline, maps the header's names to the job's columns and
    /// leaves the header in `pending` for the decoder to skip.
    async fn read_csv_header(&mut self) -> Result<Option<Decoder>, WorkerError> {
        let mut head = BytesMut::new();
        let line_end = loop {
            if let Some(i) = head.iter().position(|&b| b == b'\n') {
                break i;
            }
            if head.len() > MAX_HEADER_BYTES {
                return Err(self.invalid(ArrowError::CsvError(format!(
                    "no header line in the first {MAX_HEADER_BYTES} bytes"
                ))));
            }
            if !self.fill().await? {
                break head.len();
            }
            head.extend_from_slice(&std::mem::take(&mut self.pending));
        };
        if head.starts_with(b"\xEF\xBB\xBF") {
            head.advance(3);
        }
        if head.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let line = head.get(..line_end.min(head.len())).unwrap_or_default();
        let (header, _) = csv::reader::Format::default()
            .with_header(true)
            .infer_schema(Cursor::new(line), Some(0))
            .map_err(|e| self.invalid(e))?;
        let schema = Schema::new(
            header
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), column_type(f.name()), true))
                .collect::<Vec<_>>(),
        );
        let projection = COLUMNS
            .iter()
            .map(|&column| {
                find_column(&schema, column).ok_or_else(|| WorkerError::MissingColumn {
                    bucket: self.bucket.clone(),
                    key: self.key.clone(),
                    column,
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        self.pending = head.freeze();
        Ok(Some(Decoder::Csv(Box::new(
            csv::ReaderBuilder::new(Arc::new(schema))
                .with_header(true)
                .with_batch_size(BATCH_SIZE)
                .with_projection(projection)
                .build_decoder(),
        ))))
    }

    /// The next batch of rows, `None` once the object is exhausted.
    pub async fn next_batch(&mut self) -> Result<Option<RecordBatch>, WorkerError> {
        let result = self.next_batch_inner().await;
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    async fn next_batch_inner(&mut self) -> Result<Option<RecordBatch>, WorkerError> {
        if self.done {
            return Ok(None);
        }
        loop {
            if self.pending.is_empty() && !self.eof {
                self.fill().await?;
                continue;
            }
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(None);
            };
            if self.pending.is_empty() {
                // End of body: an empty slice tells the decoder so, completing a last line
                // that has no newline. Repeated until the decoder has nothing left, since
                // a full batch may still be holding that line back.
                let flushed = decoder
                    .decode(&[])
                    .and_then(|_| decoder.flush())
                    .map_err(|e| self.invalid(e))?;
                if flushed.is_none() {
                    self.decoder = None;
                }
                return Ok(flushed);
            }
            let used = decoder.decode(&self.pending).map_err(|e| self.invalid(e))?;
            self.pending.advance(used.min(self.pending.len()));
            if !self.pending.is_empty() {
                // The decoder stopped short: its batch is full (or it skipped the header).
                let decoder = self.decoder.as_mut();
                let flushed = decoder
                    .map(|d| d.flush())
                    .transpose()
                    .map_err(|e| self.invalid(e))?
                    .flatten();
                if let Some(batch) = flushed {
                    return Ok(Some(batch));
                }
                if used == 0 {
                    return Err(
                        self.invalid(ArrowError::ParseError("decoder made no progress".into()))
                    );
                }
            }
        }
    }
}
