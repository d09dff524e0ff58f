//! The map run verbs through the real binary against real processes: `fleetmap s3-server`,
//! `fleetmap coordinator`, `fleetmap worker`, and the client verbs start, update, abort,
//! redrive, describe, list and execution.

mod common;

use common::spawn;

#[test]
fn start_update_abort_redrive_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("fmverbs-{}", std::process::id());
    let (_s3, env) = common::s3_server(dir.path(), &prefix);

    let generated = env
        .cmd(&["gen", "--bucket", "fleetmap-data"])
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let (_coordinator, url) = env.coordinator(&["--api-token", "s3cret"]);
    let mut env = env.with("FLEETMAP_COORDINATOR_URL", &url);

    // Without the token the API refuses, naming why.
    let denied = env.cmd(&["list"]).output().unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    env.vars
        .push(("FLEETMAP_API_TOKEN".into(), "s3cret".into()));

    // No workers yet: the run stays RUNNING, so update and abort act on a live run.
    let started = env.json(&[
        "start",
        "--manifest",
        "s3://fleetmap-data/iot-unload/manifest.csv",
        "--max-concurrency",
        "2",
        "--label",
        "cli-test",
    ]);
    let run = started["mapRunId"].as_str().unwrap().to_owned();
    // Wait until the item reader has planned the child executions (it reads every Parquet
    // footer first), so abort has pending executions to abort.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while env.json(&["describe", &run])["executionCounts"]["total"] != 5 {
        assert!(std::time::Instant::now() < deadline, "items never read");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let d = env.json(&[
        "update",
        &run,
        "--max-concurrency",
        "7",
        "--tolerated-failure-count",
        "1",
    ]);
    assert_eq!(d["maxConcurrency"], 7);
    assert_eq!(d["toleratedFailureCount"], 1);

    let d = env.json(&["abort", &run]);
    assert_eq!(d["mapRunId"], run.as_str());
    let d = env.wait_status(&run, "ABORTED");
    assert_eq!(d["executionCounts"]["aborted"], 5);
    let again = env.cmd(&["abort", &run]).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"));

    let list = env.json(&["list", "--status", "ABORTED"]);
    assert_eq!(list["mapRuns"][0]["mapRunId"], run.as_str());

    // Redrive the aborted run and give it a worker: it completes.
    let d = env.json(&["redrive", &run]);
    assert_eq!(d["redriveCount"], 1);
    let _worker = spawn(
        &mut env.cmd(&[
            "worker",
            "--ops-addr",
            "127.0.0.1:0",
            "--worker-id",
            "cli-worker",
        ]),
        0,
    );
    let d = env.wait_status(&run, "SUCCEEDED");
    assert_eq!(d["executionCounts"]["succeeded"], 5);
    assert_eq!(d["readings"], 120);
    assert_eq!(d["label"], "cli-test");

    let c = env.json(&["execution", &run, "0"]);
    let kinds: Vec<&str> = c["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"ExecutionAborted")
            && kinds.contains(&"ExecutionRedriven")
            && kinds.contains(&"ExecutionSucceeded"),
        "{kinds:?}"
    );
    assert!(
        c["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["worker"] == "cli-worker")
    );

    // Bad input through the CLI is refused with the API's message.
    let bad = env
        .cmd(&[
            "start",
            "--manifest",
            "s3://fleetmap-data/x.csv",
            "--tolerated-failure-percentage",
            "150",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ToleratedFailurePercentage"));
}
