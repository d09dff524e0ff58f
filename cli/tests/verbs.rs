//! The map run verbs through the real binary against real processes: `fleetmap s3-server`,
//! `fleetmap coordinator`, `fleetmap worker`, and the client verbs start, update, abort,
//! redrive, describe, list and execution.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fleetmap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleetmap"));
    c.env("RUST_LOG", "warn");
    c
}

/// Starts a long-running role and returns it with the first stdout lines it printed.
fn spawn(cmd: &mut Command, lines: usize) -> (Proc, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(out);
    let mut got = Vec::new();
    for _ in 0..lines {
        let mut l = String::new();
        reader.read_line(&mut l).expect("read line");
        got.push(l.trim().to_owned());
    }
    (Proc(child), got)
}

struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = fleetmap();
        c.args(args);
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cmd(args).arg("-o").arg("json").output().unwrap();
        assert!(
            out.status.success(),
            "fleetmap {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "fleetmap {args:?}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn wait_status(&self, run: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let d = self.json(&["describe", run]);
            if d["status"] == want {
                return d;
            }
            assert!(Instant::now() < deadline, "run never became {want}: {d:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn start_update_abort_redrive_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("fmverbs-{}", std::process::id());
    let (_s3, s3_env) = spawn(
        fleetmap()
            .args([
                "s3-server",
                "--listen",
                "127.0.0.1:0",
                "--bucket",
                "fleetmap-data",
                "--bucket",
                "fleetmap-results",
                "--dir",
            ])
            .arg(dir.path()),
        4,
    );
    let mut vars: Vec<(String, String)> = s3_env
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(vars.len(), 4, "{s3_env:?}");
    vars.push(("FLEETMAP_QUEUE_PREFIX".into(), prefix.clone()));
    let env = Env { vars };

    let generated = env
        .cmd(&["gen", "--bucket", "fleetmap-data"])
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let (_coordinator, listening) = spawn(
        &mut env.cmd(&[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--api-token",
            "s3cret",
        ]),
        1,
    );
    let url = listening[0]
        .strip_prefix("fleetmap coordinator listening on ")
        .unwrap_or_else(|| panic!("unexpected: {listening:?}"))
        .to_owned();
    let mut env = env;
    env.vars
        .push(("FLEETMAP_COORDINATOR_URL".into(), url.clone()));

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
