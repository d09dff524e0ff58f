//! `fleetmap coordinator`: the long-running control plane with its HTTP API.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use fleetmap_coordinator::{Coordinator, CoordinatorConfig, api};

use crate::common::{AmqpArgs, S3Args, shutdown_on_signals};
use crate::ops;

#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// Address of the API, `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "FLEETMAP_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Bearer token the API requires; unset means no authentication (loopback use only).
    #[arg(long, env = "FLEETMAP_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Open map runs allowed at once; more wait in a FIFO backlog.
    #[arg(long, env = "FLEETMAP_OPEN_MAP_RUN_LIMIT", default_value_t = fleetmap_coordinator::admission::DEFAULT_OPEN_MAP_RUN_LIMIT)]
    pub open_map_run_limit: usize,
    /// Where the coordinator checkpoints its state (`s3://bucket/prefix/`). Set it in
    /// production: a restarted coordinator resumes every run from there. Unset keeps state
    /// in memory only.
    #[arg(long, env = "FLEETMAP_STATE_URI")]
    pub state_uri: Option<String>,
    /// Small child executions (files of at most 10,000 readings) of one run sent to workers
    /// together in one message, at most; 1 sends each alone. Each child keeps its own
    /// attempt, outcome and result object.
    #[arg(long, env = "FLEETMAP_CHILDREN_PER_MESSAGE", default_value_t = CoordinatorConfig::DEFAULT_CHILDREN_PER_MESSAGE)]
    pub children_per_message: usize,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub s3: S3Args,
}

pub async fn run(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    if args.open_map_run_limit == 0 {
        anyhow::bail!("--open-map-run-limit must be at least 1");
    }
    if !(1..=256).contains(&args.children_per_message) {
        anyhow::bail!(
            "--children-per-message {}: must be between 1 and 256",
            args.children_per_message
        );
    }
    let state = match &args.state_uri {
        Some(uri) => Some(
            fleetmap_objstore::S3Uri::parse_prefix(uri)
                .map_err(|e| anyhow::anyhow!("--state-uri {uri:?}: {e}"))?,
        ),
        None => {
            tracing::warn!("no --state-uri: map runs live in memory only and a restart loses them");
            None
        }
    };
    let shutdown = shutdown_on_signals();
    let metrics = ops::install_metrics()?;
    let s3 = fleetmap_objstore::try_data_client(&args.s3.config()).await?;
    let coordinator = Coordinator::start(
        CoordinatorConfig {
            amqp_url: args.amqp.amqp_url.clone(),
            topology: args.amqp.topology(),
            open_map_run_limit: args.open_map_run_limit,
            state,
            children_per_message: args.children_per_message,
        },
        s3,
        shutdown.clone(),
    )
    .await?;
    // Ready only while connected to RabbitMQ: a coordinator riding out a broker restart
    // still answers the API, but dispatches nothing and must not count for a rollout.
    let ready = {
        let connected = coordinator.broker_connected();
        ops::Ready::with_probe(move || *connected.borrow())
    };
    let token = args.api_token.filter(|t| !t.is_empty());
    if token.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "the API has no bearer token and listens beyond loopback; set FLEETMAP_API_TOKEN");
    }
    let routes = api::router(coordinator.handle(), token);
    let addr = ops::serve(
        args.listen,
        metrics,
        ready.clone(),
        routes,
        shutdown.clone(),
    )
    .await?;
    ready.set(true);
    // A plain line on stdout so scripts and tests can find a port chosen with `:0`.
    println!("fleetmap coordinator listening on http://{addr}");
    tracing::info!(%addr, "coordinator API listening");
    let result = coordinator.join().await;
    ready.set(false);
    result?;
    Ok(ExitCode::SUCCESS)
}
