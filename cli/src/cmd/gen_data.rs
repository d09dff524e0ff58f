//! `fleetmap gen`: the AWS sample's IoT data set, as Athena UNLOAD would leave it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use fleetmap_sample::{Compression, GenConfig, GenReport};

use crate::common::S3Args;

/// The shape of the data set; shared with `fleetmap demo`.
#[derive(Args, Debug, Clone)]
pub struct GenShape {
    /// Devices (`sensor-001`, `sensor-002`, …).
    #[arg(long, default_value_t = 5)]
    pub devices: u32,
    /// Days of readings.
    #[arg(long, default_value_t = 1)]
    pub days: u32,
    /// Readings per device per day (24 = hourly).
    #[arg(long, default_value_t = 24)]
    pub readings_per_day: u32,
    /// Parquet files; default one per device under `deviceid_partition=<id>/`.
    #[arg(long)]
    pub files: Option<u32>,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = 128 * 1024)]
    pub rows_per_row_group: usize,
    /// Parquet compression: none, snappy or zstd (Athena UNLOAD often writes none).
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// Random seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" | "uncompressed" => Ok(Compression::None),
        "snappy" => Ok(Compression::Snappy),
        "zstd" => Ok(Compression::Zstd),
        other => Err(format!(
            "unknown compression {other:?}: expected none, snappy or zstd"
        )),
    }
}

impl GenShape {
    pub fn config(&self, prefix: &str) -> GenConfig {
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        GenConfig {
            devices: self.devices,
            days: self.days,
            readings_per_day: self.readings_per_day,
            files: self.files,
            rows_per_row_group: self.rows_per_row_group,
            compression: self.compression,
            seed: self.seed,
            manifest_key: format!("{prefix}manifest.csv"),
            prefix,
            ..GenConfig::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct GenArgs {
    #[command(flatten)]
    pub shape: GenShape,
    /// Bucket to write into (created if missing).
    #[arg(long, env = "FLEETMAP_DATA_BUCKET", default_value = "fleetmap-data")]
    pub bucket: String,
    /// Key prefix of the data files and the manifest.
    #[arg(long, default_value = "iot-unload/")]
    pub prefix: String,
    /// Write to this local folder instead of S3 (for benchmarks against local tools).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    #[command(flatten)]
    pub s3: S3Args,
}

pub async fn run(args: GenArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.shape.config(&args.prefix);
    if cfg.devices == 0 || cfg.days == 0 || cfg.readings_per_day == 0 {
        anyhow::bail!("--devices, --days and --readings-per-day must be at least 1");
    }
    let report = if let Some(dir) = &args.out_dir {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || fleetmap_sample::generate_to_dir(&dir, &cfg))
            .await
            .context("generator task")??
    } else {
        let s3 = fleetmap_objstore::try_client(&args.s3.config()).await?;
        fleetmap_objstore::ensure_bucket(&s3, &args.bucket).await?;
        fleetmap_sample::generate_to_s3(&s3, &args.bucket, &cfg).await?
    };
    print_report(
        &report,
        args.out_dir.as_ref().map(|d| d.display().to_string()),
        &args.bucket,
    );
    Ok(ExitCode::SUCCESS)
}

pub fn print_report(report: &GenReport, dir: Option<String>, bucket: &str) {
    let location = match dir {
        Some(d) => format!("{d}/{}", report.manifest),
        None => format!("s3://{bucket}/{}", report.manifest),
    };
    println!(
        "generated {} readings in {} Parquet files; manifest: {location}",
        report.readings_total,
        report.files.len()
    );
}
