//! Worker faults with real processes: a worker SIGKILLed mid-item leaves the item unacked,
//! RabbitMQ redelivers it and another worker finishes it; a SIGTERMed worker stops taking
//! items, finishes the one in hand and exits 0. Either way each reading lands exactly once.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Env, Proc, spawn};
use serde_json::Value;

/// One Parquet file with a single large row group: an item that takes a while.
fn setup(tag: &str) -> (tempfile::TempDir, Proc, Env) {
    let dir = tempfile::tempdir().unwrap();
    let (s3proc, env) = common::s3_server(
        dir.path(),
        &format!("fmwfault-{tag}-{}", std::process::id()),
    );
    let out = env
        .cmd(&[
            "gen",
            "--bucket",
            "fleetmap-data",
            "--devices",
            "40",
            "--days",
            "400",
            "--files",
            "1",
            "--rows-per-row-group",
            "400000",
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn worker(env: &Env, id: &str, port: u16) -> Proc {
    let addr = format!("127.0.0.1:{port}");
    spawn(
        &mut env.cmd(&[
            "worker",
            "--ops-addr",
            &addr,
            "--worker-id",
            id,
            "--concurrency",
            "1",
        ]),
        0,
    )
    .0
}

/// Waits until the worker's own /metrics shows an item in flight.
fn wait_in_flight(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(body) = http_get(port, "/metrics")
            && body
                .lines()
                .any(|l| l.starts_with("fleetmap_worker_items_in_flight 1"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "worker never took the item");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn wait_done(env: &Env, run: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = env.json(&["describe", run]);
        if d["status"] != "RUNNING" && d["status"] != "PENDING" {
            return d;
        }
        assert!(Instant::now() < deadline, "run never ended: {d:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const READINGS: u64 = 40 * 400 * 24;

#[test]
fn worker_killed_mid_item_is_replaced_and_the_item_finished_once() {
    let (_dir, _s3, env) = setup("kill");
    let (_c, url) = env.coordinator(&[]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url);
    let port = free_port();
    let mut doomed = worker(&env, "doomed", port);
    let run = env.json(&[
        "start",
        "--manifest",
        "s3://fleetmap-data/iot-unload/manifest.csv",
    ])["mapRunId"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_in_flight(port);
    doomed.0.kill().unwrap(); // SIGKILL mid-item
    let _ = doomed.0.wait();
    let _rescuer = worker(&env, "rescuer", free_port());
    let d = wait_done(&env, &run);
    assert_eq!(d["status"], "SUCCEEDED", "{d:#}");
    assert_eq!(d["readings"], READINGS);
    assert_eq!(
        d["executionsByWorker"],
        serde_json::json!({"rescuer": 1}),
        "{d:#}"
    );
    let l = env.ledger(&run, READINGS);
    l.report(
        "worker killed mid-item",
        "SIGKILL the only worker while it holds the item (its /readyz busy), start another",
        1,
    );
    l.assert_exact();
}

#[test]
fn worker_sigtermed_mid_item_finishes_it_and_exits_zero() {
    let (_dir, _s3, env) = setup("term");
    let (_c, url) = env.coordinator(&[]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url);
    let port = free_port();
    let mut w = worker(&env, "draining", port);
    let run = env.json(&[
        "start",
        "--manifest",
        "s3://fleetmap-data/iot-unload/manifest.csv",
    ])["mapRunId"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_in_flight(port);
    let pid = w.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = w.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "worker exit status {status:?}");
    let d = wait_done(&env, &run);
    assert_eq!(
        d["status"], "SUCCEEDED",
        "the in-flight item was finished: {d:#}"
    );
    assert_eq!(d["executionsByWorker"], serde_json::json!({"draining": 1}));
    let l = env.ledger(&run, READINGS);
    l.report(
        "worker stopped mid-item",
        "SIGTERM the only worker while it holds the item; it must finish it and exit 0",
        1,
    );
    l.assert_exact();
}
