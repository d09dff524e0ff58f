//! Flags describing a map run, shared by `fleetmap run` (one-shot) and `fleetmap start`
//! (against a running coordinator). Both turn them into the API's `StartRequest`, so the
//! two paths validate and behave identically.

use anyhow::Context;
use clap::Args;
use fleetmap_coordinator::api::{ItemReaderRequest, Location, StartRequest};
use fleetmap_coordinator::batcher::ItemBatcher;
use fleetmap_coordinator::retry::Retrier;
use fleetmap_protocol::Thresholds;

#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifest", "source_prefix", "objects"])))]
pub struct SourceArgs {
    /// Athena UNLOAD manifest (`s3://bucket/key`), one object URI per line.
    #[arg(long)]
    pub manifest: Option<String>,
    /// Process every object under this `s3://bucket/prefix/`.
    #[arg(long)]
    pub source_prefix: Option<String>,
    /// Process these objects (`s3://bucket/key`, repeatable).
    #[arg(long, num_args = 1..)]
    pub objects: Vec<String>,
    /// Encoding of every object: PARQUET, CSV (with header), JSONL or JSON (one array).
    #[arg(long, default_value = "PARQUET")]
    pub input_type: String,
}

#[derive(Args, Debug, Clone)]
pub struct ThresholdArgs {
    /// Temperature above this is a spike (°C).
    #[arg(long, default_value_t = Thresholds::default().temperature_high)]
    pub temperature_high: f64,
    /// Temperature below this is a spike (°C).
    #[arg(long, default_value_t = Thresholds::default().temperature_low, allow_hyphen_values = true)]
    pub temperature_low: f64,
    /// Humidity above this is an anomaly (%).
    #[arg(long, default_value_t = Thresholds::default().humidity_high)]
    pub humidity_high: f64,
    /// Humidity below this is an anomaly (%).
    #[arg(long, default_value_t = Thresholds::default().humidity_low)]
    pub humidity_low: f64,
    /// Battery below this is low (%).
    #[arg(long, default_value_t = Thresholds::default().battery_low)]
    pub battery_low: f64,
}

impl ThresholdArgs {
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            temperature_high: self.temperature_high,
            temperature_low: self.temperature_low,
            humidity_high: self.humidity_high,
            humidity_low: self.humidity_low,
            battery_low: self.battery_low,
        }
    }
}

/// The Map state's settings.
#[derive(Args, Debug, Clone)]
pub struct MapArgs {
    /// Child executions of the run in flight at once; 0 = up to 10,000.
    #[arg(long, default_value_t = 0)]
    pub max_concurrency: u32,
    /// Fail the run when more than this many child executions fail.
    #[arg(long)]
    pub tolerated_failure_count: Option<u64>,
    /// Fail the run when more than this percentage of child executions fail.
    #[arg(long)]
    pub tolerated_failure_percentage: Option<f64>,
    /// ItemBatcher: at most this many readings per child execution (row groups are kept whole).
    #[arg(long)]
    pub max_items_per_batch: Option<u64>,
    /// ItemBatcher: at most this many compressed Parquet bytes per child execution.
    #[arg(long)]
    pub max_input_bytes_per_batch: Option<u64>,
    /// Retry policy as Step Functions JSON, e.g.
    /// '[{"ErrorEquals":["FleetMap.StorageError"],"IntervalSeconds":1,"MaxAttempts":3,"BackoffRate":2,"JitterStrategy":"FULL"}]'.
    #[arg(long)]
    pub retry: Option<String>,
    /// Bucket for the analytics records.
    #[arg(
        long,
        env = "FLEETMAP_RESULTS_BUCKET",
        default_value = "fleetmap-results"
    )]
    pub results_bucket: String,
    /// Key prefix of the analytics records (the Athena table's location).
    #[arg(long, env = "FLEETMAP_RESULTS_PREFIX", default_value = "analytics")]
    pub results_prefix: String,
    /// ResultWriter location (`s3://bucket/prefix/`); default `s3://<results bucket>/mapruns/`.
    #[arg(long)]
    pub result_writer: Option<String>,
    /// A label for the run (at most 40 characters).
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

impl MapArgs {
    pub fn request(&self, source: &SourceArgs) -> anyhow::Result<StartRequest> {
        let item_reader = ItemReaderRequest {
            manifest_type: source.manifest.as_ref().map(|_| "ATHENA_DATA".to_owned()),
            input_type: Some(source.input_type.clone()),
            manifest: source.manifest.clone(),
            prefix: source.source_prefix.clone(),
            items: (!source.objects.is_empty()).then(|| source.objects.clone()),
        };
        let item_batcher = (self.max_items_per_batch.is_some()
            || self.max_input_bytes_per_batch.is_some())
        .then_some(ItemBatcher {
            max_items_per_batch: self.max_items_per_batch,
            max_input_bytes_per_batch: self.max_input_bytes_per_batch,
        });
        let retry: Vec<Retrier> = match &self.retry {
            Some(json) => serde_json::from_str(json)
                .with_context(|| format!("--retry is not a valid Retry array: {json}"))?,
            None => Vec::new(),
        };
        let result_writer = match &self.result_writer {
            Some(uri) => {
                let u = fleetmap_objstore::S3Uri::parse_prefix(uri)
                    .with_context(|| format!("--result-writer {uri:?}"))?;
                Some(Location {
                    bucket: u.bucket,
                    prefix: u.key,
                })
            }
            None => None,
        };
        Ok(StartRequest {
            item_reader,
            max_concurrency: self.max_concurrency,
            tolerated_failure_percentage: self.tolerated_failure_percentage,
            tolerated_failure_count: self.tolerated_failure_count,
            item_batcher,
            retry,
            results: Location {
                bucket: self.results_bucket.clone(),
                prefix: self.results_prefix.clone(),
            },
            result_writer,
            label: self.label.clone(),
            thresholds: Some(self.thresholds.thresholds()),
        })
    }
}
