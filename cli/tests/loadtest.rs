//! `fleetmap loadtest` at CI size, run as a user would: the real binary, the real RabbitMQ, a
//! loopback S3-protocol server. The binary checks its own invariants (open runs never above
//! the limit, backlog drained, every run SUCCEEDED, FIFO opening) and exits non-zero when
//! one breaks; this test also reads its CSV to see that the limit really held a backlog back.

use std::collections::HashMap;
use std::process::Command;

const RUNS: &str = "200";
const LIMIT: usize = 20;

#[test]
fn loadtest_holds_the_limit_drains_the_backlog_and_draws_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmap"))
        .args(["loadtest", "--runs", RUNS, "--items", "2", "--limit"])
        .arg(LIMIT.to_string())
        .arg("--out")
        .arg(dir.path())
        .env(
            "FLEETMAP_QUEUE_PREFIX",
            format!("fmloadtest-test-{}", std::process::id()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadtest failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stdout.contains("BROKEN"), "{stdout}");
    for ok in [
        "ok      open map runs never above the limit",
        "ok      backlog drained to 0",
        "ok      every run SUCCEEDED with all its child executions",
        "ok      runs opened in FIFO (creation) order",
    ] {
        assert!(stdout.contains(ok), "missing {ok:?} in\n{stdout}");
    }

    let csv = std::fs::read_to_string(dir.path().join("samples.csv")).unwrap();
    let mut lines = csv.lines();
    let header: HashMap<&str, usize> = lines
        .next()
        .expect("a header")
        .split(',')
        .enumerate()
        .map(|(i, c)| (c, i))
        .collect();
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert!(rows.len() >= 2, "too few samples:\n{csv}");
    let col = |name: &str| -> Vec<f64> {
        let i = header[name];
        rows.iter().map(|r| r[i]).collect()
    };
    assert!(
        col("open_map_run_limit").iter().all(|&v| v == LIMIT as f64),
        "{csv}"
    );
    assert!(
        col("open_map_runs").iter().all(|&v| v <= LIMIT as f64),
        "{csv}"
    );
    assert!(
        col("backlog_size").iter().any(|&v| v > 0.0),
        "the limit never held a run back:\n{csv}"
    );
    assert_eq!(col("backlog_size").last(), Some(&0.0), "{csv}");
    assert_eq!(
        col("runs_finished").last(),
        Some(&RUNS.parse().unwrap()),
        "{csv}"
    );
    assert_eq!(col("executions_finished").last(), Some(&400.0), "{csv}");

    let png = std::fs::read(dir.path().join("chart.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "chart.png is not a PNG"
    );
}
