//! Long items. RabbitMQ closes the channel of a consumer that holds a delivery unacked past
//! its consumer timeout (30 minutes by default) and redelivers the item: left to that, a
//! slow item loops through redeliveries until the delivery limit dead-letters it as a crash.
//! The worker's child execution timeout, below the broker's, ends it first: the child
//! execution fails once as `States.Timeout`, the delivery is acked, nothing comes back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetmap_coordinator::{ExecState, ItemSource, RunStatus, Tolerance};
use fleetmap_sample::GenConfig;
use fleetmap_tests::faultproxy::{FaultProxy, Faults};
use fleetmap_tests::{DATA, Harness, amqp_url};
use fleetmap_worker::config::WorkerConfig;
use fleetmap_worker::consumer::{self, WorkerStats};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_item_times_out_once_instead_of_looping_through_redeliveries() {
    let h = Harness::start(0, 1).await;
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &GenConfig::default())
        .await
        .unwrap();
    let key = generated.files[0].clone();

    // The worker reaches S3 through a proxy that holds every request 3 s, so the item
    // outlives the worker's 1 s child execution timeout on its first request.
    let proxy = FaultProxy::in_front_of(
        &h.s3,
        Faults {
            latency: Duration::from_secs(3),
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let slow_s3 = fleetmap_objstore::data_client(&proxy.config(&h.s3.config())).await;
    let mut cfg = WorkerConfig::new(amqp_url(), h.topology.clone(), "slow-worker");
    cfg.concurrency = 1;
    cfg.child_execution_timeout = Duration::from_secs(1);
    let stats = Arc::new(WorkerStats::default());
    let stop = CancellationToken::new();
    let worker = tokio::spawn(consumer::run(cfg, slow_s3, stats.clone(), stop.clone()));

    let spec = Harness::spec(
        ItemSource::Objects {
            uris: vec![format!("s3://{DATA}/{key}")],
        },
        1,
        Tolerance::default(),
    );
    let (id, d) = h.run_to_end(spec, Duration::from_secs(60)).await;
    assert_eq!(d.status, RunStatus::Failed, "{d:#?}");
    assert_eq!(
        d.error.as_deref(),
        Some("States.ExceedToleratedFailureThreshold")
    );
    let c = &d.execution_counts;
    assert_eq!((c.total, c.timed_out, c.failed, c.succeeded), (1, 1, 0, 0));

    let child = h.handle().execution(&id, 0).await.unwrap();
    assert_eq!(child.status, ExecState::TimedOut);
    assert_eq!(child.attempt, 1, "timed out on its first and only attempt");
    assert_eq!(child.error.as_deref(), Some("States.Timeout"));
    let cause = child.cause.clone().unwrap_or_default();
    assert!(
        cause.contains(&format!("s3://{DATA}/{key}")) && cause.contains("timeout of 1 s"),
        "{cause}"
    );

    // Longer than the proxy's delay: a redelivered item would have been taken again by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stats.items_failed.load(Ordering::Relaxed), 1, "taken once");
    assert_eq!(stats.items_succeeded.load(Ordering::Relaxed), 0);
    let kinds: Vec<String> = child
        .history
        .unwrap_or_default()
        .iter()
        .map(|e| e.kind.to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "ExecutionQueued",
            "ExecutionDispatched",
            "ExecutionStarted",
            "ExecutionTimedOut"
        ]
    );
    assert!(
        proxy.counts().requests >= 1,
        "the worker really went through the slow store"
    );

    stop.cancel();
    worker.await.unwrap().unwrap();
    h.stop().await;
}
