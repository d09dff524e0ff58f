//! CSV (with a header row), JSON-lines and JSON-array objects, decoded as the GET body
//! streams in.
//!
//! arrow's push decoders take arbitrary byte slices, so each network chunk is fed as it
//! arrives and a batch is flushed whenever the decoder has a full one: memory stays at one
//! chunk plus one batch of rows, however large the object.
//!
//! The schema is explicit, not inferred: `deviceid` and `timestamp` as text, the metrics as
//! `Float64`. A CSV header may name the columns in any order and case and carry others,
//! which are skipped; a required column absent from the header is a
//! [`WorkerError::MissingColumn`]. JSON objects are matched by exact (lower-case) key; a key
//! absent from a line reads as null, since a JSON line has no header to check. A JSON array
//! (`[{…},{…}]`) is unwrapped on the fly by [`ArrayUnwrap`] into the objects the same
//! decoder reads, so it streams too.

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
    /// Set for [`InputType::Json`]: strips the array around the objects.
    unwrap: Option<ArrayUnwrap>,
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
            unwrap: (item.input_type == InputType::Json).then(ArrayUnwrap::default),
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
                self.pending = match self.unwrap.as_mut() {
                    Some(u) => {
                        let mut objects = Vec::with_capacity(chunk.len());
                        u.feed(&chunk, &mut objects)
                            .map_err(|m| self.invalid(ArrowError::JsonError(m)))?;
                        Bytes::from(objects)
                    }
                    None => chunk,
                };
                Ok(true)
            }
            Ok(None) => {
                if let Some(u) = &self.unwrap {
                    u.finish()
                        .map_err(|m| self.invalid(ArrowError::JsonError(m)))?;
                }
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

/// Where [`ArrayUnwrap`] is in the document.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ArrayPos {
    /// Before the opening `[` (whitespace or a UTF-8 byte order mark may come first).
    #[default]
    Before,
    Inside,
    /// After the closing `]`: only whitespace may follow.
    After,
}

/// Turns a JSON array of objects, fed in arbitrary chunks, into the objects alone, one per
/// line: the outer brackets are dropped and the commas between elements become newlines.
/// Only the array's own structure is checked here; what is inside each element is the JSON
/// decoder's to judge. Strings are tracked (with escapes) so brackets and commas inside
/// them are left alone.
#[derive(Debug, Default)]
pub(crate) struct ArrayUnwrap {
    pos: ArrayPos,
    /// Nesting below the array itself.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Bytes seen so far, for error messages.
    offset: u64,
}

impl ArrayUnwrap {
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        for &b in chunk {
            self.offset += 1;
            match self.pos {
                ArrayPos::Before => match b {
                    b'[' => self.pos = ArrayPos::Inside,
                    0xEF | 0xBB | 0xBF if self.offset <= 3 => {}
                    b if b.is_ascii_whitespace() => {}
                    _ => {
                        return Err(format!(
                            "a JSON input must be one array of readings; byte {} is {:?}, not '['",
                            self.offset,
                            char::from(b)
                        ));
                    }
                },
                ArrayPos::Inside => self.inside(b, out),
                ArrayPos::After if b.is_ascii_whitespace() => {}
                ArrayPos::After => {
                    return Err(format!(
                        "unexpected {:?} at byte {} after the JSON array's closing ']'",
                        char::from(b),
                        self.offset
                    ));
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn inside(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.in_string {
            out.push(b);
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                out.push(b);
            }
            b'{' | b'[' => {
                self.depth += 1;
                out.push(b);
            }
            b'}' | b']' if self.depth > 0 => {
                self.depth -= 1;
                out.push(b);
            }
            b']' => self.pos = ArrayPos::After,
            b',' if self.depth == 0 => out.push(b'\n'),
            _ => out.push(b),
        }
    }

    /// At the end of the body: an empty object holds no readings; an array must be closed.
    pub(crate) fn finish(&self) -> Result<(), String> {
        match self.pos {
            ArrayPos::Before | ArrayPos::After => Ok(()),
            ArrayPos::Inside => Err(format!(
                "the JSON array is not closed: the object ends after {} bytes without its ']'",
                self.offset
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unwrap_in_chunks(input: &[u8], chunk: usize) -> Result<String, String> {
        let mut u = ArrayUnwrap::default();
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            u.feed(c, &mut out)?;
        }
        u.finish()?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn array_elements_become_lines_whatever_the_chunking() {
        let input = br#" [ {"deviceid":"a,]}[","x":[1,2]} , {"deviceid":"b\"]"} ] "#;
        for chunk in 1..input.len() {
            let got = unwrap_in_chunks(input, chunk).unwrap();
            assert_eq!(
                got, " {\"deviceid\":\"a,]}[\",\"x\":[1,2]} \n {\"deviceid\":\"b\\\"]\"} ",
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn empty_input_and_empty_array_hold_no_readings() {
        assert_eq!(unwrap_in_chunks(b"", 4).unwrap(), "");
        assert_eq!(unwrap_in_chunks(b"\xEF\xBB\xBF[]\n", 4).unwrap(), "");
    }

    #[test]
    fn what_is_not_one_closed_array_is_refused_with_where() {
        let e = unwrap_in_chunks(br#"{"deviceid":"a"}"#, 3).unwrap_err();
        assert!(e.contains("byte 1") && e.contains("not '['"), "{e}");
        let e = unwrap_in_chunks(br#"[{"deviceid":"a"}"#, 3).unwrap_err();
        assert!(e.contains("not closed"), "{e}");
        let e = unwrap_in_chunks(b"[] []", 3).unwrap_err();
        assert!(e.contains("after the JSON array"), "{e}");
    }
}
