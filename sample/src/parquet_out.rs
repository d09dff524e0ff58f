//! Readings to Parquet, in the column layout of the sample's Athena table.

use std::io::Write;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Float64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use crate::readings::Reading;
use crate::{GenConfig, SampleError};

/// Rows per Arrow batch handed to the writer; bounds the memory of the columns being built.
/// The writer cuts row groups at `rows_per_row_group` independently of this.
const BATCH_ROWS: usize = 8192;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    // Athena columns are all nullable, so UNLOAD writes them as optional.
    let utf8 = |name| Field::new(name, DataType::Utf8, true);
    let f64 = |name| Field::new(name, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        utf8("deviceid"),
        utf8("timestamp"),
        f64("temperature"),
        f64("humidity"),
        f64("batterylevel"),
        f64("latitude"),
        f64("longitude"),
    ]))
});

/// The Arrow schema of every data file: `deviceid`, `timestamp` (Utf8, the writer
/// dictionary-encodes them), then five Float64 metrics.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Writes `rows` as one Parquet file into `out` through a single writer (so a large file gets
/// several row groups), returning `out` and the row count. `file` names the file in errors.
pub(crate) fn write_parquet<W: Write + Send>(
    out: W,
    rows: impl Iterator<Item = Reading>,
    cfg: &GenConfig,
    file: &str,
) -> Result<(W, u64), SampleError> {
    let encode_err = |source| SampleError::Encode {
        file: file.to_owned(),
        source,
    };
    let props = WriterProperties::builder()
        .set_compression(cfg.compression.to_parquet())
        .set_max_row_group_row_count(Some(cfg.rows_per_row_group.max(1)))
        .build();
    let mut writer = ArrowWriter::try_new(out, schema(), Some(props)).map_err(encode_err)?;

    let batch_rows = BATCH_ROWS.min(cfg.rows_per_row_group.max(1));
    let mut columns = Columns::with_capacity(batch_rows);
    let mut written = 0u64;
    for reading in rows {
        columns.push(&reading);
        if columns.len == batch_rows {
            writer.write(&columns.finish(file)?).map_err(encode_err)?;
            written += batch_rows as u64;
        }
    }
    if columns.len > 0 {
        written += columns.len as u64;
        writer.write(&columns.finish(file)?).map_err(encode_err)?;
    }
    let out = writer.into_inner().map_err(encode_err)?;
    Ok((out, written))
}

/// Column builders for one batch.
struct Columns {
    len: usize,
    deviceid: StringBuilder,
    timestamp: StringBuilder,
    metrics: [Float64Builder; 5],
}

impl Columns {
    fn with_capacity(rows: usize) -> Columns {
        Columns {
            len: 0,
            deviceid: StringBuilder::with_capacity(rows, rows * 10),
            timestamp: StringBuilder::with_capacity(rows, rows * 19),
            metrics: std::array::from_fn(|_| Float64Builder::with_capacity(rows)),
        }
    }

    fn push(&mut self, r: &Reading) {
        self.deviceid.append_value(&r.deviceid);
        self.timestamp.append_value(&r.timestamp);
        let values = [
            r.temperature,
            r.humidity,
            r.batterylevel,
            r.latitude,
            r.longitude,
        ];
        for (builder, value) in self.metrics.iter_mut().zip(values) {
            builder.append_value(value);
        }
        self.len += 1;
    }

    /// Takes the built columns as a batch and leaves the builders empty for the next one.
    fn finish(&mut self, file: &str) -> Result<RecordBatch, SampleError> {
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.deviceid.finish()),
            Arc::new(self.timestamp.finish()),
        ];
        arrays.extend(
            self.metrics
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        self.len = 0;
        RecordBatch::try_new(schema(), arrays).map_err(|source| SampleError::Batch {
            file: file.to_owned(),
            source,
        })
    }
}
