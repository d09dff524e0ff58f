//! Coordinator crash recovery with real processes: `fleetmap coordinator --state-uri` is
//! SIGKILLed at three different moments and restarted; every run resumes in the same order
//! with exact counters, and the results bucket holds every reading exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{Env, spawn};
use fleetmap_tests::ledger::Ledger;
use serde_json::Value;

const STATE: &str = "s3://fleetmap-results/fleetmap-state/";
const FILES: u64 = 40;

fn wait_for(env: &Env, run: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d = env.json(&["describe", run]);
        if cond(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {d:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup(tag: &str) -> (tempfile::TempDir, common::Proc, Env) {
    let dir = tempfile::tempdir().unwrap();
    let (s3proc, env) = common::s3_server(
        dir.path(),
        &format!("fmrecover-{tag}-{}", std::process::id()),
    );
    let out = env
        .cmd(&[
            "gen",
            "--bucket",
            "fleetmap-data",
            "--devices",
            &FILES.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, s3proc, env)
}

fn start_run(env: &Env, max_concurrency: &str) -> String {
    let v = env.json(&[
        "start",
        "--manifest",
        "s3://fleetmap-data/iot-unload/manifest.csv",
        "--max-concurrency",
        max_concurrency,
    ]);
    v["mapRunId"].as_str().unwrap().to_owned()
}

fn worker(env: &Env, id: &str) -> common::Proc {
    spawn(
        &mut env.cmd(&[
            "worker",
            "--ops-addr",
            "127.0.0.1:0",
            "--worker-id",
            id,
            "--concurrency",
            "1",
        ]),
        0,
    )
    .0
}

/// Waits for `run` to succeed, checks its counters and returns its ledger.
fn check_complete(env: &Env, run: &str) -> Ledger {
    let d = wait_for(env, run, "the run succeeding", |d| {
        d["status"] == "SUCCEEDED"
    });
    let c = &d["executionCounts"];
    assert_eq!(
        (
            c["succeeded"].as_u64(),
            c["failed"].as_u64(),
            c["total"].as_u64()
        ),
        (Some(FILES), Some(0), Some(FILES)),
        "{d:#}"
    );
    assert_eq!(
        d["readings"],
        FILES * 24,
        "readings counted once each: {d:#}"
    );
    env.ledger(run, FILES * 24)
}

const KILL: &str = "SIGKILL the coordinator (`--state-uri` set), restart it on the same state";

#[test]
fn coordinator_killed_right_after_accepting_a_run_resumes_it() {
    let (_dir, _s3, env) = setup("accept");
    let (mut c, url) = env.coordinator(&["--state-uri", STATE]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url);
    let run = start_run(&env, "4");
    c.0.kill().unwrap(); // SIGKILL: no chance to save anything more.
    let _ = c.0.wait();
    let (_c2, url2) = env.coordinator(&["--state-uri", STATE]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url2);
    let _w = worker(&env, "w1");
    let l = check_complete(&env, &run);
    l.report("coordinator killed right after accepting a run", KILL, 1);
    l.assert_exact();
}

#[test]
fn coordinator_killed_mid_run_resumes_with_exact_counters() {
    let (_dir, _s3, env) = setup("midrun");
    let (mut c, url) = env.coordinator(&["--state-uri", STATE]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url);
    let _w1 = worker(&env, "w1");
    let _w2 = worker(&env, "w2");
    let run = start_run(&env, "3");
    let d = wait_for(&env, &run, "10 executions succeeding", |d| {
        d["executionCounts"]["succeeded"].as_u64() >= Some(10)
    });
    assert_eq!(d["status"], "RUNNING", "the kill must land mid-run: {d:#}");
    c.0.kill().unwrap();
    let _ = c.0.wait();
    // Workers go on meanwhile; their outcomes wait in the durable outcomes queue.
    std::thread::sleep(Duration::from_millis(300));
    let (_c2, url2) = env.coordinator(&["--state-uri", STATE]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url2);
    let l = check_complete(&env, &run);
    l.report(
        "coordinator killed mid-run (10 of 40 child executions done)",
        KILL,
        1,
    );
    l.assert_exact();
}

#[test]
fn coordinator_killed_with_a_backlog_reopens_runs_in_the_same_order() {
    let (dir, _s3, env) = setup("backlog");
    let (mut c, url) = env.coordinator(&["--state-uri", STATE, "--open-map-run-limit", "1"]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url);
    let runs: Vec<String> = (0..3).map(|_| start_run(&env, "2")).collect();
    let a = env.json(&["admission"]);
    assert_eq!(
        (a["openMapRuns"].as_u64(), a["backlogSize"].as_u64()),
        (Some(1), Some(2))
    );
    let _w = worker(&env, "w1");
    wait_for(&env, &runs[0], "the first run working", |d| {
        d["executionCounts"]["succeeded"].as_u64() >= Some(5)
    });
    c.0.kill().unwrap();
    let _ = c.0.wait();
    let (mut c2, url2) = env.coordinator(&["--state-uri", STATE, "--open-map-run-limit", "1"]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url2);
    let a = env.json(&["admission"]);
    assert_eq!(
        a["backlog"],
        serde_json::json!([runs[1], runs[2]]),
        "backlog order survives"
    );
    let l = runs
        .iter()
        .map(|r| check_complete(&env, r))
        .reduce(Ledger::and)
        .unwrap();
    l.report(
        "coordinator killed with one run open and two in the backlog",
        KILL,
        runs.len() as u64,
    );
    l.assert_exact();
    let orders: Vec<u64> = runs
        .iter()
        .map(|r| env.json(&["describe", r])["openOrder"].as_u64().unwrap())
        .collect();
    assert_eq!(orders, [1, 2, 3], "FIFO across the restart");

    // Finished runs go to archive objects of their own, written once; the checkpoint names
    // them. A second restart reads them back: same descriptions, same child executions.
    let state = dir.path().join("fleetmap-results").join("fleetmap-state");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runs
        .iter()
        .all(|r| state.join("runs").join(format!("{r}.0.json")).is_file())
    {
        assert!(Instant::now() < deadline, "archives never written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before: Vec<(Value, Value)> = runs
        .iter()
        .map(|r| (env.json(&["describe", r]), env.json(&["executions", r])))
        .collect();
    c2.0.kill().unwrap();
    let _ = c2.0.wait();
    let newest = ["coordinator-state.0.json", "coordinator-state.1.json"]
        .into_iter()
        .filter_map(|slot| std::fs::read_to_string(state.join(slot)).ok())
        .max_by_key(|body| serde_json::from_str::<Value>(body).unwrap()["generation"].as_u64())
        .unwrap();
    let named: Vec<String> = serde_json::from_str::<Value>(&newest).unwrap()["archived"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        named, runs,
        "the checkpoint names every finished run's archive"
    );
    assert!(
        !newest.contains("deviceid_partition="),
        "the checkpoint repeats a finished run's children instead of naming its archive"
    );
    let (_c3, url3) = env.coordinator(&["--state-uri", STATE, "--open-map-run-limit", "1"]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url3);
    let after: Vec<(Value, Value)> = runs
        .iter()
        .map(|r| (env.json(&["describe", r]), env.json(&["executions", r])))
        .collect();
    assert_eq!(after, before, "finished runs come back from their archives");
}
