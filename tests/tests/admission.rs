//! Open-map-run admission on the real broker: with a limit of 3, ten runs started at once
//! show 3 open and 7 PENDING in the API and the Prometheus gauges, then all ten succeed,
//! opened in FIFO order. Its own test binary, since the metrics recorder is process-wide.

use std::time::Duration;

use fleetmap_coordinator::{ItemSource, PageRequest, RunStatus, Tolerance};
use fleetmap_sample::GenConfig;
use fleetmap_tests::{DATA, Harness};

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_beyond_the_open_limit_wait_in_fifo_order_and_all_succeed() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("install recorder");
    // No workers yet: open runs stay open, so the backlog is observable.
    let mut h = Harness::start_with_limit(0, 2, 3).await;
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &GenConfig::default())
        .await
        .unwrap();
    let source = ItemSource::AthenaManifest {
        uri: format!("s3://{DATA}/{}", generated.manifest),
    };
    let handle = h.handle();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            handle
                .start_run(Harness::spec(source.clone(), 5, Tolerance::default()))
                .await
                .unwrap(),
        );
    }
    let a = handle.admission().await.unwrap();
    assert_eq!(
        (a.open_map_run_limit, a.open_map_runs, a.backlog_size),
        (3, 3, 7)
    );
    assert_eq!(
        a.backlog,
        ids[3..].iter().map(|i| i.0.clone()).collect::<Vec<_>>()
    );
    let text = metrics.render();
    assert_eq!(gauge(&text, "fleetmap_open_map_run_limit"), 3.0);
    assert_eq!(gauge(&text, "fleetmap_open_map_runs"), 3.0);
    assert_eq!(gauge(&text, "fleetmap_map_run_backlog_size"), 7.0);
    let pending = handle
        .list(Some(RunStatus::Pending), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(pending.items.len(), 7);
    for (i, id) in ids.iter().enumerate() {
        let d = handle.describe(id).await.unwrap();
        if i < 3 {
            assert_eq!(d.status, RunStatus::Running);
        } else {
            assert_eq!(d.status, RunStatus::Pending);
            assert_eq!(d.backlog_position, Some(i - 2));
        }
    }

    h.add_worker("worker-1", 4);
    h.add_worker("worker-2", 4);
    let mut order = Vec::new();
    for id in &ids {
        let d = handle
            .wait(id, Duration::from_millis(20), |_| {})
            .await
            .unwrap();
        assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
        order.push(d.open_order.expect("opened"));
    }
    assert_eq!(
        order,
        (1..=10).collect::<Vec<u64>>(),
        "runs opened in FIFO order"
    );
    let a = handle.admission().await.unwrap();
    assert_eq!(
        (a.open_map_runs, a.backlog_size, a.runs_finished),
        (0, 0, 10)
    );
    let text = metrics.render();
    assert_eq!(gauge(&text, "fleetmap_open_map_runs"), 0.0);
    assert_eq!(gauge(&text, "fleetmap_map_run_backlog_size"), 0.0);
    h.stop().await;
}
