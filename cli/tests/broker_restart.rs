//! RabbitMQ restarted mid-run, with real processes and a real broker: the coordinator and
//! the workers lose their sessions, reconnect with backoff, declare the topology again and
//! the run completes; the quorum queues keep every item and outcome across the restart, and
//! the results bucket holds every reading exactly once.
//!
//! The shared broker on 5672 is never touched (other tests use it at the same time): the
//! test runs a private RabbitMQ node of its own — own node name, ports, data, logs and
//! Erlang cookie, all under a temporary folder — and stops it when done, also on panic.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Env, Proc, spawn};
use serde_json::Value;

const STATE: &str = "s3://fleetmap-results/fleetmap-state/";
/// Child executions (one Parquet file each) and the readings in each.
const FILES: u64 = 240;
const DAYS: u64 = 10;
const READINGS_PER_FILE: u64 = DAYS * 24;

/// Debian installs the real scripts here; `/usr/sbin/rabbitmq-*` are wrappers that `su` to
/// the `rabbitmq` user, whose files we must not touch.
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A RabbitMQ node of this test's own, stopped when dropped.
struct Node {
    name: String,
    port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        // The CLI tools authenticate to the node with this cookie; a private HOME keeps it
        // away from the system node's and from root's.
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("FLEETMAPTEST{}", std::process::id())).unwrap();
        set_mode(&cookie, 0o400);
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        // An empty rabbitmq-env.conf: the system one names the system node.
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        let node = Node {
            name: format!("fleetmap-test-{}@localhost", std::process::id()),
            port,
            dist_port: free_port(),
            dir,
        };
        node.launch();
        node
    }

    fn launch(&self) {
        let status = self
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("run rabbitmq-server (Debian package rabbitmq-server)");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
        self.await_listening(Duration::from_secs(60));
    }

    /// `rabbitmq-*` with this node's environment.
    fn command(&self, tool: &str) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(Path::new(RABBITMQ_BIN).join(tool));
        c.env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .current_dir(d);
        c
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let out = self
            .command("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Waits until the AMQP port accepts connections, then until the node says it booted.
    fn await_listening(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private RabbitMQ node {} did not open port {} (logs in {})",
                self.name,
                self.port,
                self.log_dir().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.ctl(&["await_startup"]);
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.await_listening(Duration::from_secs(30));
    }

    /// Halts the Erlang VM and waits for its process to exit (so epmd forgets the name).
    fn halt(&self) {
        let pid_file = self.dir.path().join("pid");
        self.ctl(&["stop", pid_file.to_str().unwrap()]);
    }

    /// The node's VM process, if it is still running. The pid file outlives the process
    /// and a pid may be reused, so the process must be one started with our private HOME
    /// (the VM gets it as `-home`; the node name is not on its command line).
    fn running_pid(&self) -> Option<String> {
        let pid = std::fs::read_to_string(self.dir.path().join("pid")).ok()?;
        let pid = pid.trim().to_owned();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let home = self.dir.path().join("home");
        String::from_utf8_lossy(&cmdline)
            .contains(home.to_str()?)
            .then_some(pid)
    }
}

/// How the broker goes away.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `rabbitmqctl stop_app` / `start_app`: the VM stays, RabbitMQ itself restarts.
    App,
    /// `rabbitmqctl stop`, then a new `rabbitmq-server` on the same data directory.
    Node,
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.running_pid().is_none() {
            return;
        }
        let _ = self
            .command("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .arg(self.dir.path().join("pid"))
            .output();
        // Unresponsive: do not leave a broker running behind the test.
        if let Some(pid) = self.running_pid() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// Messages ready in `queue` (not held by a consumer), as a passive declare reports them.
fn ready_messages(url: &str, queue: &str) -> u32 {
    use lapin::options::QueueDeclareOptions;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "test done".into()).await;
        q.message_count()
    })
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn wait_for(
    env: &Env,
    run: &str,
    what: &str,
    within: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let d = env.json(&["describe", run]);
        if cond(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {d:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A metric's value from the coordinator's `/metrics`, if it is exported.
fn metric(coordinator: &str, name: &str) -> Option<f64> {
    http_get(coordinator, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn worker(env: &Env, id: &str) -> Proc {
    spawn(
        &mut env.cmd(&[
            "worker",
            "--ops-addr",
            "127.0.0.1:0",
            "--worker-id",
            id,
            "--concurrency",
            "1",
            "--drain-timeout-secs",
            "5",
        ]),
        0,
    )
    .0
}

/// Sends `signal` (`-STOP`, `-CONT`) to each process.
fn signal(procs: &[&Proc], signal: &str) {
    for p in procs {
        let pid = p.0.id().to_string();
        let ok = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(ok.success(), "kill {signal} {pid}");
    }
}

/// Takes the broker away for a few seconds while `run` is in progress, checking that items
/// were waiting in the quorum queue, that the coordinator noticed, and that its API kept
/// answering meanwhile.
///
/// The workers are frozen (SIGSTOP) from just before the fault until the broker is back:
/// otherwise they can finish a run this size while `rabbitmqctl` is still starting up to
/// stop it, and the fault lands after the run. Thawed, they find their connection dead and
/// reconnect, as after any restart; the coordinator runs throughout.
fn outage(
    node: &Node,
    env: &Env,
    coordinator: &str,
    run: &str,
    queue: &str,
    fault: Fault,
    workers: &[&Proc],
) {
    signal(workers, "-STOP");
    let d = env.json(&["describe", run]);
    assert_eq!(
        d["status"], "RUNNING",
        "the {fault:?} restart must land mid-run: {d:#}"
    );
    let ready = ready_messages(&node.url(), queue);
    eprintln!(
        "{fault:?} restart at {} of {FILES} executions succeeded; {ready} items waiting in the \
         queue",
        d["executionCounts"]["succeeded"]
    );
    assert!(
        ready > 0,
        "no item was waiting in the queue to survive the restart"
    );
    let t = Instant::now();
    match fault {
        Fault::App => node.stop_app(),
        Fault::Node => node.halt(),
    }
    assert!(
        TcpStream::connect(("127.0.0.1", node.port)).is_err(),
        "the AMQP listener is still open"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(coordinator, "fleetmap_coordinator_amqp_connected") != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the coordinator never noticed the broker going away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = env.json(&["describe", run]);
    assert_eq!(during["status"], "RUNNING", "{during:#}");
    // …while saying it is not ready: it can dispatch nothing without its broker.
    let readyz = http_get(coordinator, "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t.elapsed()));
    match fault {
        Fault::App => node.start_app(),
        Fault::Node => node.launch(),
    }
    signal(workers, "-CONT");
    eprintln!("{fault:?} restart: broker back after {:.1?}", t.elapsed());
}

#[test]
fn broker_restarted_mid_run_loses_nothing_and_the_run_succeeds() {
    let t0 = Instant::now();
    let node = Node::start();
    eprintln!(
        "private RabbitMQ node {} up in {:.1?}",
        node.name,
        t0.elapsed()
    );

    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("fmbroker-{}", std::process::id());
    let (_s3, env) = common::s3_server(dir.path(), &prefix);
    let env = env.with("AMQP_URL", &node.url());
    let out = env
        .cmd(&[
            "gen",
            "--bucket",
            "fleetmap-data",
            "--devices",
            &FILES.to_string(),
            "--days",
            &DAYS.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (mut coordinator, url) = env.coordinator(&["--state-uri", STATE]);
    let env = env.with("FLEETMAP_COORDINATOR_URL", &url);
    let w1 = worker(&env, "w1");
    let w2 = worker(&env, "w2");
    // More credits than worker slots, so items wait in the queue whenever the broker stops.
    let run = env.json(&[
        "start",
        "--manifest",
        "s3://fleetmap-data/iot-unload/manifest.csv",
        "--max-concurrency",
        "10",
    ])["mapRunId"]
        .as_str()
        .unwrap()
        .to_owned();
    let items = format!("{prefix}.items");

    let within = Duration::from_secs(60);
    wait_for(&env, &run, "3 executions succeeding", within, |d| {
        d["executionCounts"]["succeeded"].as_u64() >= Some(3)
    });
    outage(&node, &env, &url, &run, &items, Fault::App, &[&w1, &w2]);
    let d = wait_for(&env, &run, "progress after start_app", within, |d| {
        d["executionCounts"]["succeeded"].as_u64() >= Some(40)
    });
    assert_eq!(d["status"], "RUNNING", "{d:#}");
    outage(&node, &env, &url, &run, &items, Fault::Node, &[&w1, &w2]);

    let d = wait_for(&env, &run, "the run succeeding", within, |d| {
        d["status"] == "SUCCEEDED"
    });
    let c = &d["executionCounts"];
    assert_eq!(
        (
            c["succeeded"].as_u64(),
            c["failed"].as_u64(),
            c["timedOut"].as_u64(),
            c["aborted"].as_u64(),
            c["total"].as_u64(),
            c["resultsWritten"].as_u64(),
        ),
        (
            Some(FILES),
            Some(0),
            Some(0),
            Some(0),
            Some(FILES),
            Some(FILES)
        ),
        "{d:#}"
    );
    assert_eq!(
        d["readings"],
        FILES * READINGS_PER_FILE,
        "readings counted once each: {d:#}"
    );
    let by_worker: u64 = d["executionsByWorker"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_worker, FILES, "one applied outcome per execution: {d:#}");
    let l = env.ledger(&run, FILES * READINGS_PER_FILE);
    l.report(
        "RabbitMQ restarted mid-run, twice",
        "`rabbitmqctl stop_app` / `start_app`, then the node halted and relaunched, 3 s each",
        1,
    );
    l.assert_exact();
    let reconnects = metric(&url, "fleetmap_coordinator_amqp_reconnects_total").unwrap_or(0.0);
    assert!(reconnects >= 2.0, "reconnects_total = {reconnects}");
    assert_eq!(
        metric(&url, "fleetmap_coordinator_amqp_connected"),
        Some(1.0)
    );

    // A coordinator asked to stop while it waits to reconnect exits promptly and cleanly.
    node.halt();
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&url, "fleetmap_coordinator_amqp_connected") != Some(0.0) {
        assert!(Instant::now() < deadline, "the coordinator never noticed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = coordinator.0.id().to_string();
    let asked = Instant::now();
    let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(term.success());
    let status = loop {
        if let Some(s) = coordinator.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the coordinator did not stop within 5 s of SIGTERM while reconnecting"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "coordinator exit status {status:?}");
    eprintln!(
        "run succeeded; {reconnects} coordinator reconnects; stopped in {:.1?} while \
         reconnecting; test took {:.1?}",
        asked.elapsed(),
        t0.elapsed()
    );
}
