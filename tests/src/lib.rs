//! Shared harness for fleetmap's integration tests.
//!
//! Every test gets a real loopback S3-protocol server (its own temporary folder) and its own
//! queue prefix on the real RabbitMQ, so tests run in parallel without seeing each other's
//! messages, and deletes its queues when done. Nothing here is mocked.

use std::sync::Arc;
use std::time::Duration;

use fleetmap_coordinator::{
    Coordinator, CoordinatorConfig, CoordinatorHandle, ItemSource, RunDescription, RunId, RunSpec,
    Tolerance,
};
use fleetmap_objstore::DataClient;
use fleetmap_objstore::local::LocalS3;
use fleetmap_protocol::{ResultTarget, Topology};
use fleetmap_worker::config::WorkerConfig;
use fleetmap_worker::consumer::{self, WorkerStats};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod faultproxy;
pub mod ledger;
pub mod tls;

pub const DATA: &str = "fleetmap-data";
pub const RESULTS: &str = "fleetmap-results";
pub const RESULTS_PREFIX: &str = "analytics";

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct Harness {
    pub s3: LocalS3,
    /// The coordinator's and the workers' client (direct lane included); it dereferences to
    /// the SDK client for everything else a test does.
    pub client: DataClient,
    pub topology: Topology,
    /// What the coordinator, the workers and the cleanup connect to.
    amqp_url: String,
    coordinator_stop: CancellationToken,
    coordinator: Option<Coordinator>,
    workers: Vec<(CancellationToken, JoinHandle<()>)>,
    /// Shared by every worker of the harness: counts for the whole fleet.
    pub stats: Arc<WorkerStats>,
}

impl Harness {
    /// A fresh S3 server with the data and results buckets, a coordinator, and `workers`
    /// workers running `concurrency` items each.
    pub async fn start(workers: usize, concurrency: usize) -> Harness {
        Self::start_with_limit(workers, concurrency, 1_000).await
    }

    pub async fn start_with_limit(
        workers: usize,
        concurrency: usize,
        open_limit: usize,
    ) -> Harness {
        init_logs();
        let s3 = LocalS3::start().await.expect("start loopback S3 server");
        let client = s3.data_client().await;
        Self::launch(s3, client, amqp_url(), workers, concurrency, open_limit).await
    }

    /// Like [`Harness::start`], but the coordinator and workers reach RabbitMQ at `amqp_url`
    /// and `s3` through `client` (e.g. both through TLS proxies).
    pub async fn start_on(
        s3: LocalS3,
        client: DataClient,
        amqp_url: String,
        workers: usize,
        concurrency: usize,
    ) -> Harness {
        init_logs();
        Self::launch(s3, client, amqp_url, workers, concurrency, 1_000).await
    }

    async fn launch(
        s3: LocalS3,
        client: DataClient,
        amqp_url: String,
        workers: usize,
        concurrency: usize,
        open_limit: usize,
    ) -> Harness {
        for b in [DATA, RESULTS] {
            fleetmap_objstore::ensure_bucket(&client, b)
                .await
                .expect("create bucket");
        }
        let topology = Topology::new(format!("fmtest-{}", uuid::Uuid::new_v4().simple()));
        let coordinator_stop = CancellationToken::new();
        let coordinator = Coordinator::start(
            CoordinatorConfig {
                amqp_url: amqp_url.clone(),
                topology: topology.clone(),
                open_map_run_limit: open_limit,
                state: None,
                children_per_message: CoordinatorConfig::DEFAULT_CHILDREN_PER_MESSAGE,
            },
            client.clone(),
            coordinator_stop.clone(),
        )
        .await
        .expect("start coordinator (is RabbitMQ running?)");
        let mut h = Harness {
            s3,
            client,
            topology,
            amqp_url,
            coordinator_stop,
            coordinator: Some(coordinator),
            workers: Vec::new(),
            stats: Arc::new(WorkerStats::default()),
        };
        for i in 1..=workers {
            h.add_worker(&format!("worker-{i}"), concurrency);
        }
        h
    }

    pub fn add_worker(&mut self, id: &str, concurrency: usize) {
        let mut cfg = WorkerConfig::new(self.amqp_url.clone(), self.topology.clone(), id);
        cfg.concurrency = concurrency;
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (s3, stats, stop) = (self.client.clone(), self.stats.clone(), stop.clone());
            async move {
                consumer::run(cfg, s3, stats, stop)
                    .await
                    .expect("worker runs");
            }
        });
        self.workers.push((stop, task));
    }

    pub fn handle(&self) -> CoordinatorHandle {
        self.coordinator
            .as_ref()
            .expect("coordinator running")
            .handle()
    }

    /// A run over `source` with the sample's settings and the given tolerance.
    pub fn spec(source: ItemSource, max_concurrency: u32, tolerance: Tolerance) -> RunSpec {
        let mut spec = RunSpec::new(
            source,
            ResultTarget {
                bucket: RESULTS.into(),
                prefix: RESULTS_PREFIX.into(),
            },
        );
        spec.max_concurrency = max_concurrency;
        spec.tolerance = tolerance;
        spec
    }

    /// Waits (bounded) until `cond` holds for the run's description.
    pub async fn wait_until(
        &self,
        id: &RunId,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&RunDescription) -> bool,
    ) -> RunDescription {
        let h = self.handle();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let d = h.describe(id).await.expect("describe");
            if cond(&d) {
                return d;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("run {id}: {what} did not happen within {timeout:?}: {d:#?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Starts a run and waits (bounded) for it to end.
    pub async fn run_to_end(&self, spec: RunSpec, timeout: Duration) -> (RunId, RunDescription) {
        let h = self.handle();
        let id = h.start_run(spec).await.expect("start run");
        let d = tokio::time::timeout(timeout, h.wait(&id, Duration::from_millis(50), |_| {}))
            .await
            .unwrap_or_else(|_| panic!("run {id} did not finish within {timeout:?}"))
            .expect("describe run");
        (id, d)
    }

    /// Every JSON line of every object under the results prefix.
    pub async fn result_records(&self) -> Vec<serde_json::Value> {
        ledger::results(&self.client, RESULTS, &format!("{RESULTS_PREFIX}/"), |_| {
            true
        })
        .await
    }

    pub async fn get_json(&self, uri: &str) -> serde_json::Value {
        let u = fleetmap_objstore::S3Uri::parse(uri).expect("uri");
        let body = fleetmap_objstore::get_bytes(&self.client, &u.bucket, &u.key)
            .await
            .expect("get");
        serde_json::from_slice(&body).expect("json")
    }

    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        fleetmap_objstore::put_bytes(
            &self.client,
            bucket,
            key,
            body.into(),
            "application/octet-stream",
        )
        .await
        .expect("put");
    }

    /// Stops workers and coordinator, deletes the test's queues and the S3 server.
    pub async fn stop(mut self) {
        for (stop, task) in self.workers.drain(..) {
            stop.cancel();
            let _ = task.await;
        }
        self.coordinator_stop.cancel();
        if let Some(c) = self.coordinator.take() {
            let _ = c.join().await;
        }
        if let Ok(conn) =
            fleetmap_protocol::amqp::connect(&self.amqp_url, "fleetmap-test-cleanup").await
            && let Ok(ch) = conn.create_channel().await
        {
            self.topology.delete(&ch).await;
            let _ = conn.close(200, "done".into()).await;
        }
        self.s3.shutdown().await;
    }
}

/// The reference rules, written out independently of the kernel under test.
pub mod oracle {
    /// `(type, threshold)` pairs a reading must carry, in record order.
    pub fn anomalies(
        t: Option<f64>,
        h: Option<f64>,
        b: Option<f64>,
    ) -> Vec<(&'static str, &'static str)> {
        let mut v = Vec::new();
        if let Some(t) = t.filter(|x| !x.is_nan()) {
            if t > 35.0 {
                v.push(("temperature_spike", ">35°C"));
            } else if t < -10.0 {
                v.push(("temperature_spike", "<-10°C"));
            }
        }
        if let Some(h) = h.filter(|x| !x.is_nan()) {
            if h > 95.0 {
                v.push(("humidity_anomaly", ">95%"));
            } else if h < 5.0 {
                v.push(("humidity_anomaly", "<5%"));
            }
        }
        if let Some(b) = b.filter(|x| !x.is_nan())
            && b < 20.0
        {
            v.push(("low_battery", "<20%"));
        }
        v
    }

    pub fn round2(v: f64) -> f64 {
        (v * 100.0).round() / 100.0
    }
}
