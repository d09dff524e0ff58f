//! `fleetmap worker`: a stateless worker process.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use fleetmap_worker::config::WorkerConfig;
use fleetmap_worker::consumer::{self, WorkerStats};

use crate::common::{AmqpArgs, S3Args, shutdown_on_signals};
use crate::ops;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// This worker's name in outcomes and histories; defaults to the host name (the pod
    /// name on Kubernetes).
    #[arg(long, env = "FLEETMAP_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Messages processed at once (also the broker prefetch): each is one child execution
    /// or a pack of small ones, run side by side.
    #[arg(long, env = "FLEETMAP_CONCURRENCY", default_value_t = WorkerConfig::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Seconds a SIGTERM'd worker waits for in-flight items before handing them back.
    #[arg(long, env = "FLEETMAP_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// Largest Parquet row group (compressed bytes of the needed columns) a child execution
    /// may read; a larger one fails with FleetMap.InvalidInput instead of exhausting memory.
    #[arg(long, env = "FLEETMAP_MAX_ROW_GROUP_BYTES", default_value_t = fleetmap_worker::reader::DEFAULT_MAX_ROW_GROUP_BYTES)]
    pub max_row_group_bytes: u64,
    /// Child execution timeout in seconds: an item still running after this fails with
    /// States.Timeout. Keep it below RabbitMQ's consumer_timeout (30 min by default), or the
    /// broker redelivers the item instead.
    #[arg(long, env = "FLEETMAP_CHILD_EXECUTION_TIMEOUT_SECS", default_value_t = WorkerConfig::DEFAULT_CHILD_EXECUTION_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub child_execution_timeout_secs: u64,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "FLEETMAP_OPS_ADDR", default_value = "0.0.0.0:9091")]
    pub ops_addr: SocketAddr,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signals();
    let metrics = ops::install_metrics()?;
    let stats = Arc::new(WorkerStats::default());
    let ready = {
        let stats = Arc::clone(&stats);
        ops::Ready::with_probe(move || stats.is_consuming())
    };
    let addr = ops::serve(
        args.ops_addr,
        metrics,
        ready.clone(),
        axum::Router::new(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(%addr, "ops endpoint listening");
    let worker_id = args.worker_id.clone().unwrap_or_else(default_worker_id);
    let mut cfg = WorkerConfig::new(args.amqp.amqp_url.clone(), args.amqp.topology(), worker_id);
    cfg.concurrency = args.concurrency.max(1);
    cfg.drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    cfg.max_row_group_bytes = args.max_row_group_bytes;
    cfg.child_execution_timeout = Duration::from_secs(args.child_execution_timeout_secs);
    let s3 = fleetmap_objstore::try_data_client(&args.s3.config()).await?;
    ready.set(true);
    let result = consumer::run(cfg, s3, stats, shutdown).await;
    ready.set(false);
    result?;
    Ok(ExitCode::SUCCESS)
}

fn default_worker_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("worker-{}", std::process::id()))
}
