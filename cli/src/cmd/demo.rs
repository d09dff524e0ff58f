//! `fleetmap demo`: the AWS IoT sample, end to end, on one machine.
//!
//! Starts a real S3-protocol server on loopback (unless `AWS_ENDPOINT_URL` points at one),
//! generates the sample data set into it, starts a coordinator and two workers against the
//! RabbitMQ at `AMQP_URL`, runs the map with `MaxConcurrency` 50 as the sample does, and
//! prints what happened. Exits 0 only when the run SUCCEEDED.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fleetmap_coordinator::{
    Coordinator, CoordinatorConfig, ItemSource, RunSpec, RunStatus, Tolerance,
};
use fleetmap_objstore::local::LocalS3;
use fleetmap_protocol::{InputType, ResultTarget, Topology, amqp};
use fleetmap_worker::config::WorkerConfig;
use fleetmap_worker::consumer::{self, WorkerStats};
use lapin::options::QueuePurgeOptions;
use tokio_util::sync::CancellationToken;

use crate::cmd::gen_data::GenShape;
use crate::cmd::run::Output;
use crate::common::{AmqpArgs, S3Args, shutdown_on_signals};
use crate::report;
use crate::runargs::ThresholdArgs;

const DATA_BUCKET: &str = "fleetmap-data";
const RESULTS_BUCKET: &str = "fleetmap-results";
const RESULTS_PREFIX: &str = "analytics";

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub shape: GenShape,
    /// MaxConcurrency of the run (the sample uses 50).
    #[arg(long, default_value_t = 50)]
    pub max_concurrency: u32,
    /// Worker processes (in-process, each with its own broker connection).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Child executions each worker runs at once.
    #[arg(long, default_value_t = WorkerConfig::DEFAULT_CONCURRENCY)]
    pub worker_concurrency: usize,
    /// Folder the loopback S3 server stores buckets in; results stay there after the demo.
    #[arg(long, default_value = "target/fleetmap-demo")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub s3: S3Args,
}

pub async fn run(args: DemoArgs, output: Output) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signals();
    // The demo's own queues, so it never touches a real deployment's items.
    let topology = Topology {
        prefix: format!("{}-demo", args.amqp.queue_prefix),
        delivery_limit: args.amqp.delivery_limit,
    };
    check_broker(&args.amqp.amqp_url, &topology).await?;

    let (s3_cfg, local) = if args.s3.endpoint.is_some() {
        (args.s3.config(), None)
    } else {
        std::fs::create_dir_all(&args.data_dir).with_context(|| {
            format!("creating the demo data folder {}", args.data_dir.display())
        })?;
        let dir = args.data_dir.canonicalize()?;
        let server = LocalS3::start_in(dir, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        eprintln!(
            "S3-protocol server on {} (data in {})",
            server.endpoint(),
            server.root().display()
        );
        (server.config(), Some(server))
    };
    let s3 = fleetmap_objstore::data_client(&s3_cfg).await;
    for b in [DATA_BUCKET, RESULTS_BUCKET] {
        fleetmap_objstore::ensure_bucket(&s3, b).await?;
    }

    let gen_cfg = args.shape.config("iot-unload/");
    let generated = fleetmap_sample::generate_to_s3(&s3, DATA_BUCKET, &gen_cfg).await?;
    eprintln!(
        "generated {} readings of {} devices in {} Parquet files; manifest s3://{DATA_BUCKET}/{}",
        generated.readings_total,
        args.shape.devices,
        generated.files.len(),
        generated.manifest
    );

    let coordinator = Coordinator::start(
        CoordinatorConfig {
            amqp_url: args.amqp.amqp_url.clone(),
            topology: topology.clone(),
            open_map_run_limit: fleetmap_coordinator::admission::DEFAULT_OPEN_MAP_RUN_LIMIT,
            state: None,
            children_per_message: CoordinatorConfig::DEFAULT_CHILDREN_PER_MESSAGE,
        },
        s3.clone(),
        shutdown.clone(),
    )
    .await?;
    let workers_stop = CancellationToken::new();
    let mut workers = Vec::new();
    for i in 1..=args.workers.max(1) {
        let mut cfg = WorkerConfig::new(
            args.amqp.amqp_url.clone(),
            topology.clone(),
            format!("worker-{i}"),
        );
        cfg.concurrency = args.worker_concurrency.max(1);
        workers.push(tokio::spawn(consumer::run(
            cfg,
            s3.clone(),
            Arc::new(WorkerStats::default()),
            workers_stop.child_token(),
        )));
    }

    let handle = coordinator.handle();
    let spec = RunSpec {
        source: ItemSource::AthenaManifest {
            uri: format!("s3://{DATA_BUCKET}/{}", generated.manifest),
        },
        input_type: InputType::Parquet,
        max_concurrency: args.max_concurrency,
        tolerance: Tolerance::default(),
        batcher: None,
        retry: Vec::new(),
        results: ResultTarget {
            bucket: RESULTS_BUCKET.into(),
            prefix: RESULTS_PREFIX.into(),
        },
        result_writer: None,
        label: Some("iot-sample".into()),
        thresholds: args.thresholds.thresholds(),
    };
    let id = handle.start_run(spec).await?;
    let mut progress = report::Progress::new(output == Output::Text);
    let outcome = tokio::select! {
        d = handle.wait(&id, Duration::from_millis(100), |d| progress.update(d)) => d,
        _ = shutdown.cancelled() => Err(fleetmap_coordinator::CoordinatorError::Stopped),
    };
    progress.finish();

    workers_stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    shutdown.cancel();
    let _ = coordinator.join().await;

    let d = outcome.context("waiting for the map run")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&d)?),
        Output::Text => {
            let on_disk = local.as_ref().map(|l| {
                l.root()
                    .join(RESULTS_BUCKET)
                    .join(RESULTS_PREFIX)
                    .display()
                    .to_string()
            });
            print!("{}", report::summary(&d, on_disk.as_deref()));
        }
    }
    if let Some(l) = local {
        l.shutdown().await;
    }
    Ok(if d.status == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Fails fast, before generating anything, when RabbitMQ is not there; and empties the
/// demo's own queues of anything an interrupted earlier demo left behind.
async fn check_broker(url: &str, topology: &Topology) -> anyhow::Result<()> {
    let conn = amqp::connect(url, "fleetmap-demo-setup").await?;
    let ch = conn.create_channel().await?;
    topology.declare(&ch).await?;
    for q in [
        topology.items_queue(),
        topology.outcomes_queue(),
        topology.dead_items_queue(),
    ] {
        ch.queue_purge(q.into(), QueuePurgeOptions::default())
            .await?;
    }
    let _ = conn.close(200, "demo setup done".into()).await;
    Ok(())
}
