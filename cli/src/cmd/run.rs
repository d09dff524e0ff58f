//! `fleetmap run`: a coordinator that runs one map run to completion and reports it.
//!
//! The long-running `fleetmap coordinator` with its HTTP API serves many runs; this one-shot
//! form is what a batch job or a CI step wants: start, watch, exit 0 only on SUCCEEDED.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use fleetmap_coordinator::{Coordinator, CoordinatorConfig, RunSpec, RunStatus};

use crate::common::{AmqpArgs, S3Args, shutdown_on_signals};
use crate::runargs::{MapArgs, SourceArgs};
use crate::{ops, report};

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
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
}

pub async fn run(args: RunArgs, output: Output) -> anyhow::Result<ExitCode> {
    let spec = RunSpec::try_from(args.map.request(&args.source)?)?;
    let shutdown = shutdown_on_signals();
    if let Some(addr) = args.ops_addr {
        let metrics = ops::install_metrics()?;
        let ready = ops::Ready::default();
        ready.set(true);
        ops::serve(addr, metrics, ready, axum::Router::new(), shutdown.clone()).await?;
    }
    let s3 = fleetmap_objstore::try_data_client(&args.s3.config()).await?;
    let coordinator = Coordinator::start(
        CoordinatorConfig {
            amqp_url: args.amqp.amqp_url.clone(),
            topology: args.amqp.topology(),
            open_map_run_limit: args.open_map_run_limit,
            state: None,
            children_per_message: CoordinatorConfig::DEFAULT_CHILDREN_PER_MESSAGE,
        },
        s3,
        shutdown.clone(),
    )
    .await?;
    let handle = coordinator.handle();
    let id = handle.start_run(spec).await?;
    let mut progress = report::Progress::new(output == Output::Text);
    let d = tokio::select! {
        d = handle.wait(&id, Duration::from_millis(200), |d| progress.update(d)) => d?,
        _ = shutdown.cancelled() => {
            anyhow::bail!("interrupted; map run {id} was left unfinished (a one-shot coordinator keeps no state)")
        }
    };
    progress.finish();
    match output {
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
