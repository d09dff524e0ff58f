//! Real processes for the CLI tests: the `fleetmap` binary in its roles, with their output.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn fleetmap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleetmap"));
    c.env("RUST_LOG", "warn");
    c
}

/// Starts a long-running role and returns it with the first stdout lines it printed.
pub fn spawn(cmd: &mut Command, lines: usize) -> (Proc, Vec<String>) {
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

pub struct Env {
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = fleetmap();
        c.args(args);
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    pub fn json(&self, args: &[&str]) -> Value {
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

    pub fn wait_status(&self, run: &str, want: &str) -> Value {
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

/// A `fleetmap s3-server` in a temporary folder with the data and results buckets; its
/// `AWS_*` variables and a queue prefix of our own in the returned environment.
pub fn s3_server(dir: &std::path::Path, prefix: &str) -> (Proc, Env) {
    let (proc, lines) = spawn(
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
            .arg(dir),
        4,
    );
    let mut vars: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(vars.len(), 4, "{lines:?}");
    vars.push(("FLEETMAP_QUEUE_PREFIX".into(), prefix.to_owned()));
    (proc, Env { vars })
}

impl Env {
    pub fn var(&self, k: &str) -> String {
        self.vars
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Starts `fleetmap coordinator` on a free port; returns it and its URL.
    pub fn coordinator(&self, extra: &[&str]) -> (Proc, String) {
        let mut args = vec!["coordinator", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (p, lines) = spawn(&mut self.cmd(&args), 1);
        let url = lines[0]
            .strip_prefix("fleetmap coordinator listening on ")
            .unwrap_or_else(|| panic!("unexpected: {lines:?}"))
            .to_owned();
        (p, url)
    }

    /// A client for this environment's S3-protocol server.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        let cfg = fleetmap_objstore::S3Config {
            endpoint: Some(self.var("AWS_ENDPOINT_URL")),
            region: Some(self.var("AWS_REGION")),
            access_key_id: Some(self.var("AWS_ACCESS_KEY_ID")),
            secret_access_key: Some(self.var("AWS_SECRET_ACCESS_KEY")),
            force_path_style: true,
            ..fleetmap_objstore::S3Config::default()
        };
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(fleetmap_objstore::client(&cfg))
    }

    /// The analytics records of `run` (every run: `""`) in the results bucket, against the
    /// `expected` readings.
    pub fn ledger(&self, run: &str, expected: u64) -> fleetmap_tests::ledger::Ledger {
        let client = self.s3();
        let records =
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(fleetmap_tests::ledger::results(
                    &client,
                    "fleetmap-results",
                    "analytics/",
                    |k| k.contains(run),
                ));
        fleetmap_tests::ledger::Ledger::count(expected, &records)
    }

    pub fn with(&self, k: &str, v: &str) -> Env {
        let mut vars: Vec<(String, String)> =
            self.vars.iter().filter(|(n, _)| n != k).cloned().collect();
        vars.push((k.to_owned(), v.to_owned()));
        Env { vars }
    }
}
