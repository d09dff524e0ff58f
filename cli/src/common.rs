//! Flags and process plumbing shared by the subcommands.

use clap::Args;
use fleetmap_objstore::S3Config;
use fleetmap_protocol::Topology;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Logs as text to stderr; `RUST_LOG` filters (default `default_level` for fleetmap's own
/// crates, `warn` for dependencies), `FLEETMAP_LOG_FORMAT=json` switches to one JSON object
/// per line for log pipelines.
pub fn init_tracing(default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,fleetmap={default_level},fleetmap_coordinator={default_level},\
             fleetmap_worker={default_level},fleetmap_objstore={default_level}"
        ))
    });
    let json = std::env::var("FLEETMAP_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[derive(Args, Debug, Clone)]
pub struct AmqpArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Prefix of fleetmap's queue names (`<prefix>.items`, `<prefix>.outcomes`, …), so
    /// several deployments can share a vhost.
    #[arg(long, env = "FLEETMAP_QUEUE_PREFIX", default_value = "fleetmap")]
    pub queue_prefix: String,
    /// Deliveries of one item before it is dead-lettered as a poison item.
    #[arg(long, env = "FLEETMAP_DELIVERY_LIMIT", default_value_t = fleetmap_protocol::topology::DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,
}

impl AmqpArgs {
    pub fn topology(&self) -> Topology {
        Topology {
            prefix: self.queue_prefix.clone(),
            delivery_limit: self.delivery_limit,
        }
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// S3-compatible endpoint (MinIO, a loopback server); unset means AWS S3.
    #[arg(long = "s3-endpoint", env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// AWS region.
    #[arg(long = "s3-region", env = "AWS_REGION")]
    pub region: Option<String>,
}

impl S3Args {
    /// Flags over the standard AWS environment (credentials stay in the env/credential chain).
    pub fn config(&self) -> S3Config {
        let mut cfg = S3Config::from_env();
        if let Some(e) = &self.endpoint {
            cfg.endpoint = Some(e.clone());
            cfg.force_path_style = true;
        }
        if let Some(r) = &self.region {
            cfg.region = Some(r.clone());
        }
        cfg
    }
}

/// A token cancelled on SIGINT or SIGTERM: the start of every staged shutdown.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
