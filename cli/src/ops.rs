//! The operations endpoint every process serves: `/metrics`, `/healthz`, `/readyz`.
//!
//! `/healthz` answers as long as the process runs — it never checks RabbitMQ or S3, so a
//! broker outage does not turn into a fleet-wide restart loop. `/readyz` reflects whether
//! the process is doing its job (connected and not draining).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// A condition readiness also depends on, read at every probe (e.g. "consuming now").
type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Readiness shared between a role and its ops endpoint: the role's own flag (set once it
/// is started, cleared when it drains) and, optionally, a live probe of its dependencies.
#[derive(Clone, Default)]
pub struct Ready {
    flag: Arc<AtomicBool>,
    probe: Option<Probe>,
}

impl Ready {
    /// Ready only while `probe` also holds.
    pub fn with_probe(probe: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Ready {
            flag: Arc::default(),
            probe: Some(Arc::new(probe)),
        }
    }

    pub fn set(&self, ready: bool) {
        self.flag.store(ready, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.flag.load(Ordering::Relaxed) && self.probe.as_ref().is_none_or(|p| p())
    }
}

/// Bucket bounds (seconds) of every `*_seconds` histogram. Child executions take from a few
/// milliseconds (a tiny file) to the child execution timeout (a 2 GB file), so the bounds
/// span that range roughly ×2.5 apart.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 150.0, 300.0, 900.0,
    1800.0, 3600.0,
];

/// Installs the Prometheus recorder (once per process).
///
/// Durations are exported as histograms (`_bucket` series), not the exporter's default
/// summaries: workers run as many pods, and only buckets can be summed across pods before
/// `histogram_quantile` — a summary's quantiles cannot be aggregated at all.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .context("configuring histogram buckets")?
        .install_recorder()
        .context("installing the Prometheus metrics recorder")
}

/// Serves the ops endpoints on `addr` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: Ready,
    extra: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.get() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .merge(extra);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the ops endpoint to {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(bound)
}
