//! Writing the data set: Parquet files plus an Athena-style manifest, to S3 or a folder.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use bytes::Bytes;
use fleetmap_objstore::put_bytes;
use tokio::sync::mpsc;

use crate::layout::{PlannedFile, plan_files};
use crate::parquet_out::write_parquet;
use crate::readings::{Reading, all_readings};
use crate::{GenConfig, SampleError};

/// Files encoded ahead of the upload; bounds memory to a few files.
const ENCODED_AHEAD: usize = 2;

/// What was generated.
#[derive(Debug, Clone)]
pub struct GenReport {
    /// Keys (S3) or paths relative to the output folder (local) of the data files, in
    /// manifest order.
    pub files: Vec<String>,
    /// Key (or relative path) of the manifest.
    pub manifest: String,
    /// Readings (rows) over all files.
    pub readings_total: u64,
    /// Rows of each file, parallel to `files`.
    pub rows_per_file: Vec<u64>,
    /// Every reading in file order then row order; empty unless `keep_readings`.
    pub readings: Vec<Reading>,
}

/// One encoded file on its way from the encoding thread to the uploader.
struct Encoded {
    key: String,
    rows: u64,
    bytes: Vec<u8>,
    readings: Vec<Reading>,
}

/// Writes each data file with PutObject, then the manifest (`s3://bucket/key` per line,
/// newline-terminated, no header, like Athena UNLOAD's).
///
/// Encoding runs on a blocking thread, a couple of files ahead of the uploads. Each file is
/// built in memory before its PutObject; that suits test and demo sizes; for multi-GB files a
/// multipart upload would be needed.
pub async fn generate_to_s3(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    cfg: &GenConfig,
) -> Result<GenReport, SampleError> {
    let plan = plan_files(cfg)?;
    let (tx, mut rx) = mpsc::channel::<Encoded>(ENCODED_AHEAD);
    let encoder = {
        let cfg = cfg.clone();
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || encode_all(&cfg, plan, &tx))
    };

    let mut report = empty_report(cfg);
    while let Some(file) = rx.recv().await {
        put_bytes(
            client,
            bucket,
            &file.key,
            Bytes::from(file.bytes),
            "application/octet-stream",
        )
        .await?;
        record(&mut report, file.key, file.rows, file.readings);
    }
    // The channel closes when the encoder is done; an early close means it failed.
    encoder.await.map_err(|e| SampleError::EncoderStopped {
        reason: e.to_string(),
    })??;

    let manifest: String = report
        .files
        .iter()
        .map(|key| format!("s3://{bucket}/{key}\n"))
        .collect();
    put_bytes(
        client,
        bucket,
        &report.manifest,
        Bytes::from(manifest),
        "text/csv",
    )
    .await?;
    tracing::info!(
        bucket,
        files = report.files.len(),
        readings = report.readings_total,
        "sample data set written"
    );
    Ok(report)
}

/// Encodes every planned file in order and hands each to the uploader; stops quietly if the
/// uploader has gone away (it failed and reports its own error).
fn encode_all(
    cfg: &GenConfig,
    plan: Vec<PlannedFile>,
    tx: &mpsc::Sender<Encoded>,
) -> Result<(), SampleError> {
    let mut readings = all_readings(cfg);
    for file in plan {
        let mut kept = Vec::new();
        let rows = readings
            .by_ref()
            .take(file.rows as usize)
            .inspect(|r| keep(cfg, &mut kept, r));
        let (bytes, rows) = write_parquet(Vec::new(), rows, cfg, &file.key)?;
        let encoded = Encoded {
            key: file.key,
            rows,
            bytes,
            readings: kept,
        };
        if tx.blocking_send(encoded).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Writes the same files under `dir` (streaming each straight to disk), plus a manifest at
/// `dir/<manifest_key>` listing the files' paths relative to `dir`, one per line; for
/// benchmarks against tools that read local Parquet.
pub fn generate_to_dir(dir: &Path, cfg: &GenConfig) -> Result<GenReport, SampleError> {
    let plan = plan_files(cfg)?;
    let mut readings = all_readings(cfg);
    let mut report = empty_report(cfg);
    for file in plan {
        let path = dir.join(&file.key);
        let io_err = |source| SampleError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let out = BufWriter::new(File::create(&path).map_err(io_err)?);
        let mut kept = Vec::new();
        let rows = readings
            .by_ref()
            .take(file.rows as usize)
            .inspect(|r| keep(cfg, &mut kept, r));
        let (out, rows) = write_parquet(out, rows, cfg, &path.display().to_string())?;
        out.into_inner()
            .map_err(|e| io_err(e.into_error()))?
            .sync_all()
            .map_err(io_err)?;
        record(&mut report, file.key, rows, kept);
    }

    let path = dir.join(&report.manifest);
    let io_err = |source| SampleError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let mut manifest = BufWriter::new(File::create(&path).map_err(io_err)?);
    for key in &report.files {
        writeln!(manifest, "{key}").map_err(io_err)?;
    }
    manifest.flush().map_err(io_err)?;
    Ok(report)
}

fn keep(cfg: &GenConfig, kept: &mut Vec<Reading>, r: &Reading) {
    if cfg.keep_readings {
        kept.push(r.clone());
    }
}

fn empty_report(cfg: &GenConfig) -> GenReport {
    GenReport {
        files: Vec::new(),
        manifest: cfg.manifest_key.clone(),
        readings_total: 0,
        rows_per_file: Vec::new(),
        readings: Vec::new(),
    }
}

fn record(report: &mut GenReport, key: String, rows: u64, readings: Vec<Reading>) {
    report.files.push(key);
    report.rows_per_file.push(rows);
    report.readings_total += rows;
    report.readings.extend(readings);
}
