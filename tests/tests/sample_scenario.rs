//! The AWS IoT sample end to end: Athena manifest → coordinator → RabbitMQ → workers → S3.
//!
//! Totals are checked against counts this test computes itself from the generated readings
//! with the reference rules written out in `oracle`, never by calling the kernel under test.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fleetmap_coordinator::{ItemSource, RunStatus, Tolerance};
use fleetmap_sample::{GenConfig, Reading};
use fleetmap_tests::{DATA, Harness, oracle};
use serde_json::Value;

const RECORD_KEYS: [&str; 9] = [
    "deviceid",
    "analysisdate",
    "readingtimestamp",
    "readingscount",
    "metrics",
    "anomalies",
    "anomalycount",
    "healthstatus",
    "timestamp",
];

#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    readings: u64,
    with_anomalies: u64,
    by_type: BTreeMap<String, u64>,
    by_device: BTreeMap<String, u64>,
}

fn expected_totals(readings: &[Reading]) -> Totals {
    let mut t = Totals::default();
    for r in readings {
        t.readings += 1;
        let a = oracle::anomalies(Some(r.temperature), Some(r.humidity), Some(r.batterylevel));
        if !a.is_empty() {
            t.with_anomalies += 1;
            *t.by_device.entry(r.deviceid.clone()).or_default() += 1;
        }
        for (ty, _) in a {
            *t.by_type.entry(ty.to_owned()).or_default() += 1;
        }
    }
    t
}

/// Checks every record against the reading it came from; returns the totals seen.
fn check_records(records: &[Value], readings: &[Reading]) -> Totals {
    let by_key: HashMap<(&str, &str), &Reading> = readings
        .iter()
        .map(|r| ((r.deviceid.as_str(), r.timestamp.as_str()), r))
        .collect();
    assert_eq!(
        by_key.len(),
        readings.len(),
        "generator keys must be unique"
    );
    let mut seen = Totals::default();
    let mut matched = std::collections::HashSet::new();
    for rec in records {
        let obj = rec.as_object().expect("record is an object");
        let keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
        for k in RECORD_KEYS {
            assert!(keys.contains(&k), "record lacks {k}: {rec}");
        }
        let dev = rec["deviceid"].as_str().expect("deviceid");
        let ts = rec["readingtimestamp"].as_str().expect("readingtimestamp");
        let r = by_key
            .get(&(dev, ts))
            .unwrap_or_else(|| panic!("record for unknown reading {dev} {ts}"));
        assert!(
            matched.insert((dev.to_owned(), ts.to_owned())),
            "reading {dev} {ts} written twice"
        );
        assert_eq!(rec["readingscount"], 1);
        let m = &rec["metrics"];
        for (name, v) in [
            ("temperature", r.temperature),
            ("humidity", r.humidity),
            ("batterylevel", r.batterylevel),
            ("latitude", r.latitude),
            ("longitude", r.longitude),
        ] {
            let got = m[name]
                .as_f64()
                .unwrap_or_else(|| panic!("metrics.{name} missing in {rec}"));
            assert_eq!(got, oracle::round2(v), "metrics.{name} of {dev} {ts}");
            assert_eq!(
                oracle::round2(got),
                got,
                "metrics.{name} has more than 2 decimals"
            );
        }
        let want = oracle::anomalies(Some(r.temperature), Some(r.humidity), Some(r.batterylevel));
        let got: Vec<(String, String, f64)> = rec["anomalies"]
            .as_array()
            .expect("anomalies array")
            .iter()
            .map(|a| {
                (
                    a["type"].as_str().expect("type").to_owned(),
                    a["threshold"].as_str().expect("threshold").to_owned(),
                    a["value"].as_f64().expect("value"),
                )
            })
            .collect();
        assert_eq!(
            got.iter()
                .map(|(t, th, _)| (t.as_str(), th.as_str()))
                .collect::<Vec<_>>(),
            want,
            "anomalies of {dev} {ts}"
        );
        for (ty, _, value) in &got {
            let src = match ty.as_str() {
                "temperature_spike" => r.temperature,
                "humidity_anomaly" => r.humidity,
                _ => r.batterylevel,
            };
            assert_eq!(*value, oracle::round2(src));
        }
        assert_eq!(rec["anomalycount"], got.len());
        let health = if got.is_empty() {
            "healthy"
        } else {
            "anomalies_detected"
        };
        assert_eq!(rec["healthstatus"], health);
        assert!(rec["analysisdate"].as_str().is_some_and(|s| s.len() == 10));
        assert!(rec["timestamp"].as_str().is_some_and(|s| s.ends_with('Z')));

        seen.readings += 1;
        if !got.is_empty() {
            seen.with_anomalies += 1;
            *seen.by_device.entry(dev.to_owned()).or_default() += 1;
        }
        for (ty, _, _) in got {
            *seen.by_type.entry(ty).or_default() += 1;
        }
    }
    seen
}

/// The Map context in each record's `metadata`: `Index` is the reading's position in the
/// run (manifest order, then row order) and `Source` the object it came from. Readings are
/// generated in that same order, so index `i` must be reading `i`, from the file holding it.
fn check_map_context(records: &[Value], generated: &fleetmap_sample::GenReport) {
    let mut file_of = Vec::with_capacity(generated.readings.len());
    for (file, &rows) in generated.files.iter().zip(&generated.rows_per_file) {
        file_of.extend(std::iter::repeat_n(
            format!("s3://{DATA}/{file}"),
            rows as usize,
        ));
    }
    let mut seen = vec![false; generated.readings.len()];
    for rec in records {
        let index = rec["metadata"]["index"]
            .as_u64()
            .unwrap_or_else(|| panic!("metadata.index missing in {rec}"))
            as usize;
        let r = generated
            .readings
            .get(index)
            .unwrap_or_else(|| panic!("index {index} beyond the run's readings: {rec}"));
        assert_eq!(
            rec["metadata"]["source"].as_str(),
            Some(file_of[index].as_str())
        );
        assert_eq!(
            (rec["deviceid"].as_str(), rec["readingtimestamp"].as_str()),
            (Some(r.deviceid.as_str()), Some(r.timestamp.as_str())),
            "index {index} names another reading"
        );
        assert!(
            !std::mem::replace(&mut seen[index], true),
            "index {index} twice"
        );
    }
    assert!(seen.iter().all(|&s| s), "some indexes are missing");
}

fn type_totals(d: &fleetmap_coordinator::RunDescription) -> BTreeMap<String, u64> {
    [
        ("humidity_anomaly", d.anomalies.humidity_anomaly),
        ("low_battery", d.anomalies.low_battery),
        ("temperature_spike", d.anomalies.temperature_spike),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| (k.to_owned(), n))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sample_scenario_writes_one_correct_record_per_reading() {
    let h = Harness::start(2, 4).await;
    let cfg = GenConfig {
        keep_readings: true,
        ..GenConfig::default()
    };
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &cfg)
        .await
        .unwrap();
    assert_eq!(generated.files.len(), 5);
    assert_eq!(generated.readings.len(), 120);

    let source = ItemSource::AthenaManifest {
        uri: format!("s3://{DATA}/{}", generated.manifest),
    };
    let (_, d) = h
        .run_to_end(
            Harness::spec(source, 50, Tolerance::default()),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    let c = d.execution_counts;
    assert_eq!(
        (c.total, c.succeeded, c.failed, c.results_written),
        (5, 5, 0, 5)
    );

    let records = h.result_records().await;
    assert_eq!(records.len(), 120);
    let seen = check_records(&records, &generated.readings);
    check_map_context(&records, &generated);
    let want = expected_totals(&generated.readings);
    assert_eq!(seen, want);
    assert!(
        want.with_anomalies > 0,
        "the sample data must contain anomalies"
    );

    assert_eq!(d.readings, want.readings);
    assert_eq!(d.anomalies.readings_with_anomalies, want.with_anomalies);
    assert_eq!(type_totals(&d), want.by_type);
    assert_eq!(d.devices_with_anomalies, want.by_device);

    // ResultWriter: manifest.json lists SUCCEEDED_0.json with one entry per file.
    let manifest_uri = d
        .result_writer_manifest
        .clone()
        .expect("ResultWriter manifest");
    let manifest = h.get_json(&manifest_uri).await;
    let succeeded = &manifest["ResultFiles"]["SUCCEEDED"];
    assert_eq!(succeeded.as_array().map(Vec::len), Some(1));
    let key = succeeded[0]["Key"].as_str().unwrap();
    let entries = h
        .get_json(&format!(
            "s3://{}/{key}",
            manifest["DestinationBucket"].as_str().unwrap()
        ))
        .await;
    assert_eq!(entries.as_array().map(Vec::len), Some(5));
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["Status"] == "SUCCEEDED")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn larger_run_is_shared_by_two_workers_and_totals_match() {
    let h = Harness::start(2, 2).await;
    let cfg = GenConfig {
        devices: 50,
        days: 30,
        files: Some(20),
        keep_readings: true,
        seed: 7,
        ..GenConfig::default()
    };
    let generated = fleetmap_sample::generate_to_s3(&h.client, DATA, &cfg)
        .await
        .unwrap();
    assert_eq!(generated.files.len(), 20);
    assert_eq!(generated.readings.len(), 50 * 30 * 24);

    let source = ItemSource::AthenaManifest {
        uri: format!("s3://{DATA}/{}", generated.manifest),
    };
    let (_, d) = h
        .run_to_end(
            Harness::spec(source, 50, Tolerance::default()),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    assert_eq!(d.execution_counts.succeeded, 20);
    assert_eq!(
        d.executions_by_worker.len(),
        2,
        "both workers must take items: {:?}",
        d.executions_by_worker
    );
    assert_eq!(d.executions_by_worker.values().sum::<u64>(), 20);

    let want = expected_totals(&generated.readings);
    assert!(
        want.by_type.contains_key("low_battery"),
        "30 days drain batteries"
    );
    assert_eq!(d.readings, want.readings);
    assert_eq!(d.anomalies.readings_with_anomalies, want.with_anomalies);
    assert_eq!(type_totals(&d), want.by_type);
    assert_eq!(d.devices_with_anomalies, want.by_device);

    let records = h.result_records().await;
    assert_eq!(records.len() as u64, want.readings);
    assert_eq!(check_records(&records, &generated.readings), want);
    check_map_context(&records, &generated);
    h.stop().await;
}
