//! `fleetmap run`: a coordinator that runs one map run to completion and reports it.
//!
//! The long-running coordinator with its HTTP API serves many runs; this one-shot form is
//! what a batch job or a CI step wants: start, watch, exit 0 only on SUCCEEDED.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use fleetmap_coordinator::{
    Coordinator, CoordinatorConfig, ItemSource, RunSpec, RunStatus, Tolerance,
};
use fleetmap_protocol::{InputType, ResultTarget, Thresholds};

use crate::common::{AmqpArgs, S3Args, shutdown_on_signals};
use crate::{ops, report};

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

/// Map state settings shared by `run` and `demo`.
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
    /// ResultWriter prefix (`s3://bucket/prefix/`); default `s3://<results bucket>/mapruns/`.
    #[arg(long)]
    pub result_writer: Option<String>,
    /// A label for the run.
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

impl MapArgs {
    pub fn spec(&self, source: ItemSource, input_type: InputType) -> RunSpec {
        RunSpec {
            source,
            input_type,
            max_concurrency: self.max_concurrency,
            tolerance: Tolerance {
                count: self.tolerated_failure_count,
                percentage: self.tolerated_failure_percentage,
            },
            results: ResultTarget {
                bucket: self.results_bucket.clone(),
                prefix: self.results_prefix.trim_matches('/').to_owned(),
            },
            result_writer: self.result_writer.clone(),
            label: self.label.clone(),
            thresholds: self.thresholds.thresholds(),
        }
    }
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifest", "source_prefix", "objects"])))]
pub struct RunArgs {
    /// Athena UNLOAD manifest (`s3://bucket/key`), one object URI per line.
    #[arg(long)]
    pub manifest: Option<String>,
    /// Process every object under this `s3://bucket/prefix/`.
    #[arg(long)]
    pub source_prefix: Option<String>,
    /// Process these objects (`s3://bucket/key`, repeatable).
    #[arg(long, num_args = 1..)]
    pub objects: Vec<String>,
    /// Encoding of every object: PARQUET, CSV (with header) or JSONL.
    #[arg(long, default_value = "PARQUET")]
    pub input_type: InputType,
    #[command(flatten)]
    pub map: MapArgs,
    /// Open map runs allowed at once; more wait in a backlog.
    #[arg(long, env = "FLEETMAP_OPEN_MAP_RUN_LIMIT", default_value_t = fleetmap_coordinator::admission::DEFAULT_OPEN_MAP_RUN_LIMIT)]
    pub open_map_run_limit: usize,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// Address of `/metrics`, `/healthz` and `/readyz`; unset serves none.
    #[arg(long, env = "FLEETMAP_OPS_ADDR")]
    pub ops_addr: Option<SocketAddr>,
    /// Output format of the summary.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signals();
    if let Some(addr) = args.ops_addr {
        let metrics = ops::install_metrics()?;
        let ready = ops::Ready::default();
        ready.set(true);
        ops::serve(addr, metrics, ready, axum::Router::new(), shutdown.clone()).await?;
    }
    let source = if let Some(m) = &args.manifest {
        ItemSource::AthenaManifest { uri: m.clone() }
    } else if let Some(p) = &args.source_prefix {
        ItemSource::Prefix { uri: p.clone() }
    } else {
        ItemSource::Objects {
            uris: args.objects.clone(),
        }
    };
    let s3 = fleetmap_objstore::client(&args.s3.config()).await;
    let coordinator = Coordinator::start(
        CoordinatorConfig {
            amqp_url: args.amqp.amqp_url.clone(),
            topology: args.amqp.topology(),
            open_map_run_limit: args.open_map_run_limit,
        },
        s3,
        shutdown.clone(),
    )
    .await?;
    let handle = coordinator.handle();
    let id = handle
        .start_run(args.map.spec(source, args.input_type))
        .await?;
    let mut progress = report::Progress::new(args.output == Output::Text);
    let d = tokio::select! {
        d = handle.wait(&id, Duration::from_millis(200), |d| progress.update(d)) => d?,
        _ = shutdown.cancelled() => {
            anyhow::bail!("interrupted; map run {id} was left running (its state is lost with this one-shot coordinator)")
        }
    };
    progress.finish();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&d)?),
        Output::Text => print!("{}", report::summary(&d, None)),
    }
    shutdown.cancel();
    let _ = coordinator.join().await;
    Ok(if d.status == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
