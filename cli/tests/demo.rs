//! The README's first command, `fleetmap demo`, run as a user would: the real binary, the
//! real RabbitMQ, a loopback S3-protocol server in a temporary folder.

use std::process::Command;

fn fleetmap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetmap"))
}

#[test]
fn demo_runs_the_sample_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = fleetmap()
        .args(["demo", "--data-dir"])
        .arg(dir.path())
        .env(
            "FLEETMAP_QUEUE_PREFIX",
            format!("fmdemo-test-{}", std::process::id()),
        )
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("SUCCEEDED"), "{stdout}");
    assert!(stdout.contains("5 succeeded, 0 failed"), "{stdout}");
    assert!(stdout.contains("readings processed:      120"), "{stdout}");
    assert!(stdout.contains("anomalies by type:"), "{stdout}");
    assert!(
        stdout.contains("s3://fleetmap-results/analytics/"),
        "{stdout}"
    );
    // The records really are on disk where the summary says.
    let results = dir.path().join("fleetmap-results").join("analytics");
    let mut lines = 0;
    let mut stack = vec![results];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                lines += std::fs::read_to_string(e.path()).unwrap().lines().count();
            }
        }
    }
    assert_eq!(lines, 120);
}

#[test]
fn demo_without_rabbitmq_names_the_url_and_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = fleetmap()
        .args(["demo", "--data-dir"])
        .arg(dir.path())
        .env("AMQP_URL", "amqp://guest:secret@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains("rabbitmq-server"), "{stderr}");
    assert!(!stderr.contains("secret"), "password leaked: {stderr}");
}

#[test]
fn every_role_has_help() {
    for role in ["demo", "gen", "worker", "run"] {
        let out = fleetmap().args([role, "--help"]).output().unwrap();
        assert!(out.status.success(), "fleetmap {role} --help failed");
    }
}
