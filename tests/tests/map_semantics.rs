//! Distributed Map semantics on the real RabbitMQ and S3-protocol server: MaxConcurrency
//! (and its live update), ItemBatcher over row groups, failure tolerance and redrive.

use std::time::Duration;

use fleetmap_coordinator::batcher::ItemBatcher;
use fleetmap_coordinator::{ExecState, ItemSource, PageRequest, RunStatus, Tolerance};
use fleetmap_sample::GenConfig;
use fleetmap_tests::{DATA, Harness, RESULTS, RESULTS_PREFIX};

const LIMIT: Duration = Duration::from_secs(120);

fn manifest(report: &fleetmap_sample::GenReport) -> ItemSource {
    ItemSource::AthenaManifest {
        uri: format!("s3://{DATA}/{}", report.manifest),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrency_bounds_in_flight_executions_and_follows_an_update() {
    // Capacity (2 workers x 4) is well above the window, so the window is what binds.
    let h = Harness::start(2, 4).await;
    let cfg = GenConfig {
        devices: 80,
        days: 20,
        ..GenConfig::default()
    };
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &cfg)
        .await
        .unwrap();
    let handle = h.handle();
    let id = handle
        .start_run(Harness::spec(manifest(&generated), 3, Tolerance::default()))
        .await
        .unwrap();
    h.wait_until(&id, LIMIT, "20 succeeded", |d| {
        d.execution_counts.succeeded >= 20
    })
    .await;
    assert_eq!(
        h.stats.max_in_flight(&id.0),
        3,
        "in flight under MaxConcurrency 3"
    );

    handle.update_max_concurrency(&id, 6).await.unwrap();
    h.stats.reset_max_in_flight(&id.0);
    let d = h
        .wait_until(&id, LIMIT, "the run ends", |d| d.status.is_terminal())
        .await;
    assert_eq!(d.status, RunStatus::Succeeded);
    assert_eq!(d.max_concurrency, 6);
    assert_eq!(
        h.stats.max_in_flight(&id.0),
        6,
        "in flight after UpdateMapRun to 6"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn item_batcher_splits_a_two_million_reading_file_along_row_groups() {
    let h = Harness::start(2, 2).await;
    let cfg = GenConfig {
        devices: 100,
        days: 834,
        files: Some(1),
        rows_per_row_group: 200_160,
        ..GenConfig::default()
    };
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &cfg)
        .await
        .unwrap();
    assert_eq!(generated.readings_total, 2_001_600);
    let mut spec = Harness::spec(manifest(&generated), 4, Tolerance::default());
    spec.batcher = Some(ItemBatcher {
        max_items_per_batch: Some(250_000),
        max_input_bytes_per_batch: None,
    });
    let (id, d) = h.run_to_end(spec, Duration::from_secs(600)).await;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    // 200,160-row groups: two would exceed 250,000, so each child is one row group.
    assert_eq!(d.execution_counts.total, 10);
    assert_eq!(d.item_counts.total, 2_001_600);
    assert_eq!(d.item_counts.succeeded, 2_001_600);
    assert_eq!(d.readings, 2_001_600);

    let page = h
        .handle()
        .executions(&id, None, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 10);
    let mut total_lines = 0u64;
    for (i, c) in page.items.iter().enumerate() {
        let i = i as u32;
        assert_eq!(c.row_groups, Some((i, i + 1)));
        assert_eq!(c.index, u64::from(i) * 200_160);
        assert_eq!(c.items, Some(200_160));
        assert_eq!(c.readings, Some(200_160));
        assert_eq!(c.attempt, 1, "no child execution ran twice");
        // The child's result object holds exactly its own readings, once.
        let key = c.result_key.clone().expect("result key");
        assert!(key.starts_with(RESULTS_PREFIX));
        let body = fleetmap_objstore::get_bytes(&h.client, RESULTS, &key)
            .await
            .unwrap();
        let lines = body.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(lines, 200_160, "{key}");
        total_lines += lines;
    }
    assert_eq!(total_lines, 2_001_600);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tolerance_decides_the_run_and_redrive_reruns_only_the_failures() {
    let h = Harness::start(2, 2).await;
    let cfg = GenConfig {
        devices: 10,
        ..GenConfig::default()
    };
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &cfg)
        .await
        .unwrap();
    assert_eq!(generated.files.len(), 10);
    // Break three objects, keeping their bytes to repair them later.
    let bad: Vec<String> = generated.files[2..5].to_vec();
    let mut originals = Vec::new();
    for k in &bad {
        originals.push(
            fleetmap_objstore::get_bytes(&h.client, DATA, k)
                .await
                .unwrap(),
        );
        h.put(DATA, k, b"not parquet at all".to_vec()).await;
    }

    let pct = |p: f64| Tolerance {
        count: None,
        percentage: Some(p),
    };
    let (_, tolerated) = h
        .run_to_end(Harness::spec(manifest(&generated), 10, pct(30.0)), LIMIT)
        .await;
    assert_eq!(tolerated.status, RunStatus::Succeeded, "{tolerated:#?}");
    assert_eq!(
        (
            tolerated.execution_counts.succeeded,
            tolerated.execution_counts.failed
        ),
        (7, 3)
    );

    let (id, failed) = h
        .run_to_end(Harness::spec(manifest(&generated), 10, pct(20.0)), LIMIT)
        .await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(
        failed.error.as_deref(),
        Some("States.ExceedToleratedFailureThreshold")
    );
    let succeeded_before: Vec<u32> = h
        .handle()
        .executions(&id, Some(ExecState::Succeeded), PageRequest::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.execution)
        .collect();

    for (k, body) in bad.iter().zip(originals) {
        h.put(DATA, k, body.to_vec()).await;
    }
    let d = h.handle().redrive(&id).await.unwrap();
    assert_eq!(d.redrive_count, 1);
    let d = h
        .wait_until(&id, LIMIT, "the redriven run ends", |d| {
            d.status.is_terminal()
        })
        .await;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    assert_eq!(d.redrive_count, 1);
    assert_eq!(d.execution_counts.succeeded, 10);
    assert_eq!(d.readings, 240);
    for n in succeeded_before {
        let c = h.handle().execution(&id, n).await.unwrap();
        assert_eq!(c.attempt, 1, "succeeded execution {n} was run again");
        let kinds: Vec<&str> = c
            .history
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.kind.as_ref())
            .collect();
        assert!(!kinds.contains(&"ExecutionRedriven"), "{kinds:?}");
    }
    let redriven = h.handle().execution(&id, 2).await.unwrap();
    let kinds: Vec<&str> = redriven
        .history
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.kind.as_ref())
        .collect();
    assert!(
        kinds.contains(&"ExecutionFailed") && kinds.contains(&"ExecutionRedriven"),
        "{kinds:?}"
    );
    assert_eq!(redriven.status, ExecState::Succeeded);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_policy_recovers_a_failure_that_heals() {
    let h = Harness::start(1, 2).await;
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &GenConfig::default())
        .await
        .unwrap();
    let key = generated.files[0].clone();
    let original = fleetmap_objstore::get_bytes(&h.client, DATA, &key)
        .await
        .unwrap();
    h.put(DATA, &key, b"truncated".to_vec()).await;
    let mut spec = Harness::spec(manifest(&generated), 5, Tolerance::default());
    spec.retry = serde_json::from_str(
        r#"[{"ErrorEquals":["FleetMap.InvalidInput"],"IntervalSeconds":1,"MaxAttempts":5,"BackoffRate":1.0}]"#,
    )
    .unwrap();
    let id = h.handle().start_run(spec).await.unwrap();
    // The first attempt fails; repair the object while the retry waits.
    h.wait_until(&id, LIMIT, "four executions succeed", |d| {
        d.execution_counts.succeeded >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.put(DATA, &key, original.to_vec()).await;
    let d = h
        .wait_until(&id, LIMIT, "the run ends", |d| d.status.is_terminal())
        .await;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    let c = h.handle().execution(&id, 0).await.unwrap();
    assert!(
        c.attempt >= 2,
        "execution 0 needed a retry, attempt {}",
        c.attempt
    );
    let kinds: Vec<&str> = c
        .history
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.kind.as_ref())
        .collect();
    assert!(kinds.contains(&"ExecutionRetryScheduled"), "{kinds:?}");
    h.stop().await;
}
