//! Object-store faults end to end, on the real RabbitMQ and the loopback S3 server with a
//! fault proxy in front of it for every process under test (coordinator and workers alike).
//!
//! Throttling and 5xx answers must be ridden out by the S3 client's retries: every reading
//! written exactly once and every counter exact. A permanent error must fail only the child
//! execution it concerns, with an error name and a cause naming the object, and not be
//! retried. Results are read straight from the server, never through the proxy. Missing
//! objects and corrupt Parquet are covered by `bad_input.rs`; here the permanent fault is
//! `403 AccessDenied`, which only a proxy can produce.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use fleetmap_coordinator::{
    Coordinator, CoordinatorConfig, ExecState, ItemSource, PageRequest, RunDescription, RunId,
    RunStatus, Tolerance,
};
use fleetmap_objstore::DataClient;
use fleetmap_objstore::local::LocalS3;
use fleetmap_objstore::{ObjStoreError, S3Uri};
use fleetmap_protocol::Topology;
use fleetmap_sample::{GenConfig, GenReport, Reading};
use fleetmap_tests::faultproxy::{FaultProxy, Faults};
use fleetmap_tests::ledger::{self, Ledger};
use fleetmap_tests::{DATA, Harness, RESULTS, RESULTS_PREFIX, amqp_url, init_logs, oracle};
use fleetmap_worker::config::WorkerConfig;
use fleetmap_worker::consumer::{self, WorkerStats};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(180);

/// The scenario of issue #4: one S3 request in five is throttled.
fn twenty_percent_slow_down() -> Faults {
    Faults {
        slow_down: 0.2,
        seed: 4,
        ..Faults::default()
    }
}

/// The loopback server with both buckets, and a client straight to it, for setting up input
/// before the fleet starts and for reading what it wrote.
async fn store() -> (LocalS3, Client) {
    init_logs();
    let s3 = LocalS3::start().await.expect("start loopback S3 server");
    let direct = s3.client().await;
    for b in [DATA, RESULTS] {
        fleetmap_objstore::ensure_bucket(&direct, b)
            .await
            .expect("create bucket");
    }
    (s3, direct)
}

/// Coordinator and workers reaching S3 only through a [`FaultProxy`]. Like the shared
/// `Harness`, except that every process gets the proxy's client and the coordinator
/// checkpoints, so its state writes meet the faults too.
struct Fleet {
    s3: LocalS3,
    direct: Client,
    proxy: FaultProxy,
    topology: Topology,
    /// The S3 client through the proxy, as every process under test has it.
    faulty: DataClient,
    coordinator: Option<Coordinator>,
    coordinator_stop: CancellationToken,
    workers: Vec<(CancellationToken, JoinHandle<()>)>,
}

impl Fleet {
    async fn start(
        (s3, direct): (LocalS3, Client),
        faults: Faults,
        workers: usize,
        concurrency: usize,
    ) -> Fleet {
        let proxy = FaultProxy::in_front_of(&s3, faults)
            .await
            .expect("start fault proxy");
        let faulty = fleetmap_objstore::data_client(&proxy.config(&s3.config())).await;
        assert!(faulty.is_direct());
        let topology = Topology::new(format!("fmfault-{}", uuid::Uuid::new_v4().simple()));
        let coordinator_stop = CancellationToken::new();
        let coordinator = start_coordinator(&topology, &faulty, &coordinator_stop).await;
        let stats = Arc::new(WorkerStats::default());
        let workers = (1..=workers)
            .map(|i| {
                let mut cfg = WorkerConfig::new(amqp_url(), topology.clone(), format!("w{i}"));
                cfg.concurrency = concurrency;
                let stop = CancellationToken::new();
                let task = tokio::spawn({
                    let (s3, stats, stop) = (faulty.clone(), stats.clone(), stop.clone());
                    async move { consumer::run(cfg, s3, stats, stop).await.expect("worker") }
                });
                (stop, task)
            })
            .collect();
        Fleet {
            s3,
            direct,
            proxy,
            topology,
            faulty,
            coordinator: Some(coordinator),
            coordinator_stop,
            workers,
        }
    }

    /// Stops the coordinator gracefully and starts another on the same checkpoint.
    async fn restart_coordinator(&mut self) {
        self.coordinator_stop.cancel();
        if let Some(c) = self.coordinator.take() {
            c.join().await.expect("coordinator stops cleanly");
        }
        self.coordinator_stop = CancellationToken::new();
        self.coordinator =
            Some(start_coordinator(&self.topology, &self.faulty, &self.coordinator_stop).await);
    }

    async fn run_to_end(
        &self,
        source: ItemSource,
        tolerance: Tolerance,
    ) -> (RunId, RunDescription) {
        let h = self.coordinator.as_ref().unwrap().handle();
        let id = h
            .start_run(Harness::spec(source, 50, tolerance))
            .await
            .unwrap();
        let d = self.wait_end(&id).await;
        (id, d)
    }

    /// Waits (at most [`LIMIT`]) until the run is reported terminal, on the coordinator
    /// running now.
    async fn wait_end(&self, id: &RunId) -> RunDescription {
        let h = self.coordinator.as_ref().unwrap().handle();
        tokio::time::timeout(LIMIT, h.wait(id, Duration::from_millis(50), |_| {}))
            .await
            .unwrap_or_else(|_| panic!("run {id} did not finish within {LIMIT:?}"))
            .unwrap()
    }

    async fn get_json(&self, uri: &str) -> Value {
        let u = S3Uri::parse(uri).unwrap();
        let body = fleetmap_objstore::get_bytes(&self.direct, &u.bucket, &u.key)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Every analytics record in the results bucket, read directly from the server.
    async fn result_records(&self) -> Vec<Value> {
        ledger::results(&self.direct, RESULTS, &format!("{RESULTS_PREFIX}/"), |_| {
            true
        })
        .await
    }

    async fn stop(mut self) {
        for (stop, task) in self.workers.drain(..) {
            stop.cancel();
            let _ = task.await;
        }
        self.coordinator_stop.cancel();
        if let Some(c) = self.coordinator.take() {
            let _ = c.join().await;
        }
        if let Ok(conn) =
            fleetmap_protocol::amqp::connect(&amqp_url(), "fleetmap-test-cleanup").await
            && let Ok(ch) = conn.create_channel().await
        {
            self.topology.delete(&ch).await;
            let _ = conn.close(200, "done".into()).await;
        }
        drop(self.proxy);
        self.s3.shutdown().await;
    }
}

/// A fault proxy in front of `s3`, and a client through it (direct lane included; the SDK
/// helpers of `fleetmap_objstore` called with it take the SDK lane).
async fn through(s3: &LocalS3, faults: Faults) -> (FaultProxy, DataClient) {
    let proxy = FaultProxy::in_front_of(s3, faults)
        .await
        .expect("start fault proxy");
    let via = fleetmap_objstore::data_client(&proxy.config(&s3.config())).await;
    (proxy, via)
}

/// The fleet's coordinator, checkpointing under `s3://{DATA}/coordinator/`.
async fn start_coordinator(
    topology: &Topology,
    s3: &DataClient,
    stop: &CancellationToken,
) -> Coordinator {
    let state = S3Uri::parse_prefix(&format!("s3://{DATA}/coordinator/")).unwrap();
    Coordinator::start(
        CoordinatorConfig {
            amqp_url: amqp_url(),
            topology: topology.clone(),
            open_map_run_limit: 10,
            state: Some(state),
            children_per_message: CoordinatorConfig::DEFAULT_CHILDREN_PER_MESSAGE,
        },
        s3.clone(),
        stop.clone(),
    )
    .await
    .expect("start coordinator (is RabbitMQ running?)")
}

async fn generate(direct: &Client, cfg: GenConfig) -> GenReport {
    let cfg = GenConfig {
        keep_readings: true,
        ..cfg
    };
    fleetmap_sample::generate_to_s3(direct, DATA, &cfg)
        .await
        .unwrap()
}

fn manifest(g: &GenReport) -> ItemSource {
    ItemSource::AthenaManifest {
        uri: format!("s3://{DATA}/{}", g.manifest),
    }
}

/// Asserts that the results bucket holds exactly one record per reading of `expected`, each
/// with the anomalies the reference rules give it, and that the run's counters agree.
async fn assert_results_exact(fleet: &Fleet, d: &RunDescription, expected: &[Reading]) {
    let mut want: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    let (mut with_anomalies, mut by_type, mut by_device) = (0, BTreeMap::new(), BTreeMap::new());
    for r in expected {
        let a = oracle::anomalies(Some(r.temperature), Some(r.humidity), Some(r.batterylevel));
        if !a.is_empty() {
            with_anomalies += 1;
            *by_device.entry(r.deviceid.clone()).or_default() += 1;
        }
        for (ty, _) in &a {
            *by_type.entry((*ty).to_owned()).or_default() += 1;
        }
        let types = a.into_iter().map(|(ty, _)| ty).collect();
        want.insert((r.deviceid.as_str(), r.timestamp.as_str()), types);
    }
    assert_eq!(want.len(), expected.len(), "generator keys must be unique");

    let records = fleet.result_records().await;
    let mut seen = HashSet::new();
    for rec in &records {
        let key = (
            rec["deviceid"].as_str().unwrap(),
            rec["readingtimestamp"].as_str().unwrap(),
        );
        let types = want
            .get(&key)
            .unwrap_or_else(|| panic!("record for no expected reading: {rec}"));
        assert!(seen.insert(key), "reading {key:?} written twice");
        let got: Vec<&str> = rec["anomalies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["type"].as_str().unwrap())
            .collect();
        assert_eq!(&got, types, "anomalies of {key:?}");
    }
    assert_eq!(seen.len(), want.len(), "readings missing from the results");

    assert_eq!(d.readings, expected.len() as u64);
    assert_eq!(d.anomalies.readings_with_anomalies, with_anomalies);
    let a = &d.anomalies;
    let run_types: BTreeMap<String, u64> = [
        ("humidity_anomaly", a.humidity_anomaly),
        ("low_battery", a.low_battery),
        ("temperature_spike", a.temperature_spike),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    assert_eq!(run_types, by_type);
    assert_eq!(d.devices_with_anomalies, by_device);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttled_store_still_yields_every_reading_exactly_once() {
    let started = Instant::now();
    let (s3, direct) = store().await;
    let cfg = GenConfig {
        devices: 40,
        days: 10,
        files: Some(40),
        seed: 404,
        ..GenConfig::default()
    };
    let generated = generate(&direct, cfg).await;
    let fleet = Fleet::start((s3, direct), twenty_percent_slow_down(), 2, 4).await;

    let (_, d) = fleet
        .run_to_end(manifest(&generated), Tolerance::default())
        .await;
    let faults = fleet.proxy.counts();
    assert_eq!(d.status, RunStatus::Succeeded, "{faults:?} {d:#?}");
    let files = generated.files.len() as u64;
    let c = &d.execution_counts;
    assert_eq!(
        (c.total, c.succeeded, c.failed, c.results_written),
        (files, files, 0, files)
    );
    let ledger = Ledger::count(
        generated.readings.len() as u64,
        &fleet.result_records().await,
    );
    ledger.report(
        "S3 answering 20 % of requests with 503 SlowDown",
        "a fault proxy in front of the S3-protocol server (tests/src/faultproxy.rs)",
        1,
    );
    ledger.assert_exact();
    assert_results_exact(&fleet, &d, &generated.readings).await;

    // The faults really happened, at about the rate asked for.
    assert!(
        faults.slow_down * 10 >= faults.requests,
        "fewer than 10 % of requests throttled: {faults:?}"
    );
    eprintln!(
        "throttled run: {faults:?}; {} readings in {files} files; {:?}",
        d.readings,
        started.elapsed()
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_denied_fails_only_its_child_execution_and_is_not_retried() {
    let (s3, direct) = store().await;
    let generated = generate(&direct, GenConfig::default()).await;
    let denied = 2;
    let denied_uri = format!("s3://{DATA}/{}", generated.files[denied]);
    // Transient faults on everything else, half of them 5xx, so the denied object is the
    // only failure only if the two kinds are told apart.
    let faults = Faults {
        deny: vec![format!("/{DATA}/{}", generated.files[denied])],
        slow_down: 0.1,
        internal_error: 0.1,
        seed: 4,
        ..Faults::default()
    };
    let fleet = Fleet::start((s3, direct), faults, 2, 2).await;

    // One bad of five: tolerated at 25 %, so the run goes on and succeeds.
    let tolerance = Tolerance {
        count: None,
        percentage: Some(25.0),
    };
    let (id, d) = fleet.run_to_end(manifest(&generated), tolerance).await;
    let faults = fleet.proxy.counts();
    assert_eq!(d.status, RunStatus::Succeeded, "{faults:?} {d:#?}");
    let c = &d.execution_counts;
    assert_eq!((c.total, c.succeeded, c.failed), (5, 4, 1));

    // The failure is visible where users look: the ResultWriter's FAILED entries.
    let manifest_doc = fleet
        .get_json(
            d.result_writer_manifest
                .as_deref()
                .expect("ResultWriter manifest"),
        )
        .await;
    let bucket = manifest_doc["DestinationBucket"].as_str().unwrap();
    let mut failed = Vec::new();
    for f in manifest_doc["ResultFiles"]["FAILED"].as_array().unwrap() {
        let uri = format!("s3://{bucket}/{}", f["Key"].as_str().unwrap());
        failed.extend(fleet.get_json(&uri).await.as_array().unwrap().clone());
    }
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["Error"], "FleetMap.StorageError", "{failed:#?}");
    let cause = failed[0]["Cause"].as_str().unwrap();
    assert!(cause.contains(&denied_uri), "{cause}");
    // …and says why: the store's status and error code, not the SDK's bare "service error".
    assert!(
        cause.contains("HTTP 403") && !cause.contains("service error"),
        "{cause}"
    );

    // A permanent error is not retried: the object is asked for twice in all — once by the
    // coordinator reading its Parquet footer (for the Map context Index), once by the worker
    // — each answered 403 once, and the child execution has one attempt.
    assert_eq!(faults.denied, 2, "{faults:?}");
    assert!(
        faults.slow_down > 0 && faults.internal_error > 0,
        "{faults:?}"
    );
    let h = fleet.coordinator.as_ref().unwrap().handle();
    let page = PageRequest {
        max_results: None,
        next_token: None,
    };
    let execs = h
        .executions(&id, Some(ExecState::Failed), page)
        .await
        .unwrap();
    assert_eq!(execs.items.len(), 1);
    assert_eq!(execs.items[0].source, denied_uri);
    assert_eq!(execs.items[0].attempt, 1);

    // Every other reading is there exactly once; none of the denied file's.
    let before: u64 = generated.rows_per_file[..denied].iter().sum();
    let skip = before as usize..(before + generated.rows_per_file[denied]) as usize;
    let expected: Vec<Reading> = generated
        .readings
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .map(|(_, r)| r.clone())
        .collect();
    assert_results_exact(&fleet, &d, &expected).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_forwards_signed_requests_and_s3_classifies_its_faults() {
    init_logs();
    let s3 = LocalS3::start().await.unwrap();
    let direct = s3.client().await;
    fleetmap_objstore::ensure_bucket(&direct, DATA)
        .await
        .unwrap();

    // No faults: SigV4-signed calls of every kind pass through and reach the server.
    let (clean, via) = through(&s3, Faults::default()).await;
    let body = bytes::Bytes::from_static(b"0123456789");
    fleetmap_objstore::put_bytes(&via, DATA, "p/k", body.clone(), "text/plain")
        .await
        .unwrap();
    assert_eq!(
        fleetmap_objstore::get_bytes(&direct, DATA, "p/k")
            .await
            .unwrap(),
        body
    );
    assert_eq!(
        fleetmap_objstore::head_size(&via, DATA, "p/k")
            .await
            .unwrap(),
        10
    );
    let range = fleetmap_objstore::get_range(&via, DATA, "p/k", 2..5)
        .await
        .unwrap();
    assert_eq!(&range[..], b"234");
    assert_eq!(
        fleetmap_objstore::list_keys(&via, DATA, "p/")
            .await
            .unwrap(),
        ["p/k"]
    );
    assert_eq!(clean.counts().requests, 4);

    // Always throttled: the client tries exactly MAX_ATTEMPTS times, then reports a
    // retryable error naming the object.
    let (throttled, via) = through(
        &s3,
        Faults {
            slow_down: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let err = fleetmap_objstore::get_bytes(&via, DATA, "p/k")
        .await
        .unwrap_err();
    assert!(matches!(err, ObjStoreError::Get { .. }), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("s3://fleetmap-data/p/k"), "{err}");
    let counts = throttled.counts();
    assert_eq!(
        (counts.requests, counts.slow_down),
        (
            u64::from(fleetmap_objstore::config::MAX_ATTEMPTS),
            u64::from(fleetmap_objstore::config::MAX_ATTEMPTS)
        )
    );

    // Access denied is permanent: one request each, a non-retryable error naming the object.
    let (denied, via) = through(
        &s3,
        Faults {
            deny: vec![format!("/{DATA}/p/k")],
            ..Faults::default()
        },
    )
    .await;
    for err in [
        fleetmap_objstore::head_size(&via, DATA, "p/k")
            .await
            .unwrap_err(),
        fleetmap_objstore::get_bytes(&via, DATA, "p/k")
            .await
            .unwrap_err(),
    ] {
        assert!(!err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("s3://fleetmap-data/p/k"), "{err}");
    }
    assert_eq!((denied.counts().requests, denied.counts().denied), (2, 2));
    s3.shutdown().await;
}

/// The direct lane (the workers' GETs and PUTs, the coordinator's footer reads) retries and
/// gives up exactly as the SDK path above does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_lane_retries_and_classifies_faults_like_the_sdk() {
    init_logs();
    let s3 = LocalS3::start().await.unwrap();
    let plain = s3.client().await;
    fleetmap_objstore::ensure_bucket(&plain, DATA)
        .await
        .unwrap();
    let body = bytes::Bytes::from_static(b"0123456789");
    fleetmap_objstore::put_bytes(&plain, DATA, "p/k", body.clone(), "text/plain")
        .await
        .unwrap();

    // Half the requests throttled or failing: every call still succeeds, through retries.
    let (flaky, via) = through(
        &s3,
        Faults {
            slow_down: 0.3,
            internal_error: 0.2,
            ..Faults::default()
        },
    )
    .await;
    assert!(via.is_direct());
    for i in 0..20 {
        let key = format!("p/flaky-{i}");
        via.put_bytes(DATA, &key, body.clone(), "text/plain")
            .await
            .unwrap();
        assert_eq!(
            via.get_suffix(DATA, &key, 64).await.unwrap(),
            (body.clone(), 10)
        );
        assert_eq!(&via.get_range(DATA, &key, 2..5).await.unwrap()[..], b"234");
    }
    let counts = flaky.counts();
    assert!(
        counts.slow_down > 0 && counts.internal_error > 0,
        "{counts:?}"
    );

    // Always throttled: exactly MAX_ATTEMPTS requests, then a retryable error naming the
    // object.
    let (throttled, via) = through(
        &s3,
        Faults {
            slow_down: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let err = via.get_suffix(DATA, "p/k", 64).await.unwrap_err();
    assert!(matches!(err, ObjStoreError::Get { .. }), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("s3://fleetmap-data/p/k"), "{err}");
    assert!(err.to_string().contains("SlowDown"), "{err}");
    let counts = throttled.counts();
    assert_eq!(
        (counts.requests, counts.slow_down),
        (
            u64::from(fleetmap_objstore::config::MAX_ATTEMPTS),
            u64::from(fleetmap_objstore::config::MAX_ATTEMPTS)
        )
    );

    // Access denied is permanent: one request each.
    let (denied, via) = through(
        &s3,
        Faults {
            deny: vec![format!("/{DATA}/p/k")],
            ..Faults::default()
        },
    )
    .await;
    for err in [
        via.get_suffix(DATA, "p/k", 64).await.unwrap_err(),
        via.put_bytes(DATA, "p/k", body.clone(), "text/plain")
            .await
            .unwrap_err(),
    ] {
        assert!(!err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("s3://fleetmap-data/p/k"), "{err}");
        assert!(err.to_string().contains("HTTP 403"), "{err}");
    }
    assert_eq!((denied.counts().requests, denied.counts().denied), (2, 2));
    s3.shutdown().await;
}

/// A run that finished is archived once under its redrive count; a redrive puts it back in
/// the checkpoint and its next end writes a new archive beside the first. A restarted
/// coordinator reads the newest back, with the denied child still failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_run_is_archived_again_under_its_new_redrive_count() {
    let (s3, direct) = store().await;
    let generated = generate(&direct, GenConfig::default()).await;
    let faults = Faults {
        deny: vec![format!("/{DATA}/{}", generated.files[1])],
        ..Faults::default()
    };
    let mut fleet = Fleet::start((s3, direct), faults, 1, 2).await;
    let (id, d) = fleet
        .run_to_end(manifest(&generated), Tolerance::default())
        .await;
    assert_eq!(d.status, RunStatus::Failed, "{d:#?}");
    let archives = fleet.s3.root().join(DATA).join("coordinator").join("runs");
    let archive = |redrive: u32| archives.join(format!("{id}.{redrive}.json"));
    let wait_for = |path: std::path::PathBuf| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !path.is_file() {
            assert!(
                Instant::now() < deadline,
                "{} never written",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(archive(0)).await;

    let h = fleet.coordinator.as_ref().unwrap().handle();
    h.redrive(&id).await.unwrap();
    let d = fleet.wait_end(&id).await;
    assert_eq!(
        (d.status, d.redrive_count),
        (RunStatus::Failed, 1),
        "{d:#?}"
    );
    wait_for(archive(1)).await;
    assert!(
        archive(0).is_file(),
        "an archive a checkpoint named is never rewritten"
    );

    fleet.restart_coordinator().await;
    let h = fleet.coordinator.as_ref().unwrap().handle();
    let back = h.describe(&id).await.unwrap();
    assert_eq!(
        (back.status, back.redrive_count, back.execution_counts),
        (d.status, 1, d.execution_counts),
        "{back:#?}"
    );
    let page = PageRequest {
        max_results: None,
        next_token: None,
    };
    let failed = h
        .executions(&id, Some(ExecState::Failed), page)
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 1, "{failed:#?}");
    assert!(failed.items[0].source.ends_with(&generated.files[1]));
    fleet.stop().await;
}

/// 160 one-file devices behind a proxy whose latency makes reading their footers take
/// about a second (16 at a time, 50 ms each), with a run over them started.
async fn slow_footer_run() -> (Fleet, GenReport, RunId) {
    let (s3, direct) = store().await;
    let cfg = GenConfig {
        devices: 160,
        days: 1,
        readings_per_day: 4,
        seed: 160,
        ..GenConfig::default()
    };
    let generated = generate(&direct, cfg).await;
    assert_eq!(generated.files.len(), 160);
    let faults = Faults {
        latency: Duration::from_millis(50),
        ..Faults::default()
    };
    let fleet = Fleet::start((s3, direct), faults, 2, 4).await;
    let h = fleet.coordinator.as_ref().unwrap().handle();
    let id = h
        .start_run(Harness::spec(
            manifest(&generated),
            50,
            Tolerance::default(),
        ))
        .await
        .unwrap();
    (fleet, generated, id)
}

/// Waits for the run's first children and asserts they came before the last footer.
async fn first_stretch(fleet: &Fleet, id: &RunId, files: u64) {
    let h = fleet.coordinator.as_ref().unwrap().handle();
    let deadline = Instant::now() + LIMIT;
    let first = loop {
        let d = h.describe(id).await.unwrap();
        if d.execution_counts.total > 0 {
            break d.execution_counts.total;
        }
        assert!(Instant::now() < deadline, "no child execution planned");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        first < files,
        "the first {first} children waited for all {files} footers"
    );
}

/// Every file ran as one child execution, once, every reading was written once with its
/// anomalies, and the readings' `Index` values are exactly 0..readings.
async fn assert_every_child_once(fleet: &Fleet, d: &RunDescription, generated: &GenReport) {
    let files = generated.files.len() as u64;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    let c = &d.execution_counts;
    assert_eq!(
        (c.total, c.succeeded, c.results_written),
        (files, files, files),
        "{d:#?}"
    );
    assert_results_exact(fleet, d, &generated.readings).await;
    let mut index: Vec<u64> = fleet
        .result_records()
        .await
        .iter()
        .map(|r| r["metadata"]["index"].as_u64().unwrap())
        .collect();
    index.sort_unstable();
    let want: Vec<u64> = (0..generated.readings.len() as u64).collect();
    assert!(index == want, "Index values are not 0..{}", want.len());
}

/// The coordinator hands a Parquet run its children as the footers come in, so the first
/// child executions start before the last footer is read; a coordinator restarted part way
/// through the footers resumes reading, and plans no child twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_restarted_while_reading_footers_plans_every_child_once() {
    let (mut fleet, generated, id) = slow_footer_run().await;
    first_stretch(&fleet, &id, generated.files.len() as u64).await;
    fleet.restart_coordinator().await;
    let d = fleet.wait_end(&id).await;
    assert_every_child_once(&fleet, &d, &generated).await;
    fleet.stop().await;
}

/// A run aborted while its footers are still being read stops reading them; its redrive
/// re-runs the aborted children and reads the files it had not reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_aborted_while_reading_footers_is_redriven_to_every_child_once() {
    let (fleet, generated, id) = slow_footer_run().await;
    let files = generated.files.len() as u64;
    first_stretch(&fleet, &id, files).await;
    let h = fleet.coordinator.as_ref().unwrap().handle();
    h.abort(&id).await.unwrap();
    let d = fleet.wait_end(&id).await;
    assert_eq!(d.status, RunStatus::Aborted, "{d:#?}");
    assert!(
        d.execution_counts.total < files,
        "children were added after the abort: {d:#?}"
    );
    h.redrive(&id).await.unwrap();
    let d = fleet.wait_end(&id).await;
    assert_eq!(d.redrive_count, 1);
    assert_every_child_once(&fleet, &d, &generated).await;
    fleet.stop().await;
}

/// The object store refuses the coordinator's checkpoints for a while: whatever waits for
/// durability waits (a `StartMapRun` is not answered, outcomes stay unacked), nothing is
/// lost, and once the store takes writes again the run finishes and a restarted
/// coordinator finds it exactly as it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_refused_for_a_while_delay_replies_and_lose_nothing() {
    let (s3, direct) = store().await;
    let generated = generate(&direct, GenConfig::default()).await;
    let files = generated.files.len() as u64;
    let mut fleet = Fleet::start((s3, direct), Faults::default(), 1, 2).await;
    fleet
        .proxy
        .deny_prefix(Some(&format!("/{DATA}/coordinator/")));
    let h = fleet.coordinator.as_ref().unwrap().handle();
    let spec = Harness::spec(manifest(&generated), 50, Tolerance::default());
    let start = tokio::spawn(async move { h.start_run(spec).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !start.is_finished(),
        "StartMapRun answered before its run was durable"
    );
    assert!(fleet.proxy.counts().denied > 0, "no checkpoint was tried");

    fleet.proxy.deny_prefix(None);
    let id = tokio::time::timeout(Duration::from_secs(30), start)
        .await
        .expect("StartMapRun answered once the store takes writes")
        .unwrap()
        .unwrap();
    let d = fleet.wait_end(&id).await;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    assert_eq!(d.execution_counts.succeeded, files);
    assert_results_exact(&fleet, &d, &generated.readings).await;

    fleet.restart_coordinator().await;
    let h = fleet.coordinator.as_ref().unwrap().handle();
    let back = h.describe(&id).await.unwrap();
    assert_eq!(
        (back.status, back.execution_counts, back.readings),
        (d.status, d.execution_counts, d.readings),
        "{back:#?}"
    );
    fleet.stop().await;
}
