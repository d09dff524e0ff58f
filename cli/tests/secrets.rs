//! Secrets stay secret: the AMQP password, the API token and the S3 secret key never appear
//! in the coordinator's or a worker's logs (at debug level, the most an operator turns on),
//! in API answers, in `/metrics`, or in the CLI's output — over a whole map run, and when a
//! client presents the wrong token.

mod common;

use std::fs::File;
use std::process::{Command, Stdio};

use common::Proc;

const TOKEN: &str = "tok-3f9c1d7e-never-print-me";
const AMQP_PASSWORD_IN_URL: &str = "guest:guest@";
const S3_SECRET: &str = "fleetmap-local-secret";

fn spawn_logged(cmd: &mut Command, log: &File) -> Proc {
    Proc(
        cmd.env("RUST_LOG", "debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log.try_clone().unwrap()))
            .spawn()
            .expect("spawn"),
    )
}

/// A plain HTTP/1.0 GET on loopback, whole response (headers and body) as text.
fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

fn assert_clean(what: &str, text: &str) {
    for secret in [TOKEN, AMQP_PASSWORD_IN_URL, S3_SECRET] {
        assert!(
            !text.contains(secret),
            "{what} contains the secret {secret:?}:\n{text}"
        );
    }
}

#[test]
fn no_secret_reaches_logs_api_metrics_or_cli_output() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("fmsecrets-{}", std::process::id());
    let (_s3, env) = common::s3_server(dir.path(), &prefix);
    assert_eq!(env.var("AWS_SECRET_ACCESS_KEY"), S3_SECRET);
    let env = env.with(
        "AMQP_URL",
        &format!("amqp://{AMQP_PASSWORD_IN_URL}127.0.0.1:5672/%2f"),
    );
    let gen_out = env
        .cmd(&["gen", "--bucket", "fleetmap-data"])
        .output()
        .unwrap();
    assert!(gen_out.status.success());

    // The coordinator prints its URL on stdout first; read it from the log file.
    let coordinator_log = dir.path().join("coordinator.log");
    let log = File::create(&coordinator_log).unwrap();
    let mut coordinator = spawn_logged(
        env.cmd(&[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--api-token",
            TOKEN,
        ])
        .env_remove("RUST_LOG"),
        &log,
    );
    let url = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&coordinator_log).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find_map(|l| l.strip_prefix("fleetmap coordinator listening on "))
            {
                break line.trim().to_owned();
            }
            assert!(std::time::Instant::now() < deadline, "no URL in:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let worker_log = dir.path().join("worker.log");
    let wlog = File::create(&worker_log).unwrap();
    let mut worker = spawn_logged(
        env.cmd(&[
            "worker",
            "--worker-id",
            "secrets-worker",
            "--ops-addr",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG"),
        &wlog,
    );

    let client = env
        .with("FLEETMAP_COORDINATOR_URL", &url)
        .with("FLEETMAP_API_TOKEN", TOKEN);
    let manifest = "s3://fleetmap-data/iot-unload/manifest.csv";
    let started = client
        .cmd(&["start", "--manifest", manifest, "--wait", "-o", "json"])
        .output()
        .unwrap();
    let started_out = String::from_utf8_lossy(&started.stdout).into_owned()
        + &String::from_utf8_lossy(&started.stderr);
    assert!(started.status.success(), "{started_out}");
    assert_clean("start --wait output", &started_out);
    let run: serde_json::Value = serde_json::from_slice(&started.stdout).unwrap();
    assert_eq!(run["status"], "SUCCEEDED", "{run:#}");
    let id = run["mapRunId"].as_str().unwrap();

    for args in [
        vec!["describe", id],
        vec!["list"],
        vec!["executions", id],
        vec!["execution", id, "0"],
        vec!["admission"],
    ] {
        let out = client.cmd(&args).arg("-o").arg("json").output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert_clean(
            &format!("{args:?}"),
            &(String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)),
        );
    }
    let wrong = env
        .with("FLEETMAP_COORDINATOR_URL", &url)
        .with("FLEETMAP_API_TOKEN", "not-the-token")
        .cmd(&["list"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert_clean("a refused client", &String::from_utf8_lossy(&wrong.stderr));

    let metrics = http_get(&url, "/metrics");
    assert!(metrics.contains("fleetmap_open_map_runs"), "{metrics}");
    assert_clean("/metrics", &metrics);

    // Graceful stop, so shutdown logging is included too.
    for p in [&mut coordinator, &mut worker] {
        let _ = Command::new("kill")
            .args(["-TERM", &p.0.id().to_string()])
            .status();
        let _ = p.0.wait();
    }
    for (name, path) in [("coordinator", &coordinator_log), ("worker", &worker_log)] {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.lines().count() > 10,
            "{name} logged too little to be a real check:\n{text}"
        );
        assert_clean(&format!("the {name}'s debug log"), &text);
    }
}
