//! Bytes on the items queue that are not an item a worker understands: garbage, another
//! format, an empty body, an unknown wire version, an outcome, a truncated item, a body past
//! the size limit. Against the real RabbitMQ and a real worker: each is dead-lettered to
//! `<prefix>.items.dead` byte for byte, counted, and logged with the reason, and the worker
//! keeps consuming: a valid item published after them is processed and its outcome arrives.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, StringArray};
use arrow::record_batch::RecordBatch;
use fleetmap_objstore::local::LocalS3;
use fleetmap_protocol::{
    InputType, ItemMessage, ItemStatus, MAX_MESSAGE_BYTES, OutcomeMessage, ResultTarget,
    Thresholds, Topology, WIRE_VERSION, amqp,
};
use fleetmap_worker::config::WorkerConfig;
use fleetmap_worker::consumer::{self, WorkerStats};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel};
use parquet::arrow::ArrowWriter;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber, span};

const DATA: &str = "queue-bad-data";
const RESULTS: &str = "queue-bad-results";
const WAIT: Duration = Duration::from_secs(30);

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Warnings and errors the worker logged, one line per event with its fields.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The smallest tracing subscriber that keeps the worker's warnings for assertions.
struct Capture;

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, "{}={value} ", field.name());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= Level::WARN && m.target().starts_with("fleetmap_worker")
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        LOGGED.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| tracing::subscriber::set_global_default(Capture).expect("one subscriber"));
}

fn item(key: &str) -> ItemMessage {
    ItemMessage {
        run_id: "queue-bad".into(),
        execution: 0,
        attempt: 1,
        input_type: InputType::Parquet,
        bucket: DATA.into(),
        key: key.into(),
        row_groups: None,
        first_index: 0,
        result: ResultTarget {
            bucket: RESULTS.into(),
            prefix: "analytics".into(),
        },
        analysis_time_ms: 1_705_276_800_000,
        thresholds: Thresholds::default(),
    }
}

/// Three readings, one of them a temperature spike.
fn small_parquet() -> Vec<u8> {
    let text = |v: [&str; 3]| -> ArrayRef { Arc::new(StringArray::from(v.to_vec())) };
    let num = |v: [f64; 3]| -> ArrayRef { Arc::new(Float64Array::from(v.to_vec())) };
    let batch = RecordBatch::try_from_iter([
        ("deviceid", text(["sensor-1", "sensor-1", "sensor-2"])),
        ("timestamp", text(["2024-01-15T00:00:00"; 3])),
        ("temperature", num([20.0, 41.0, 22.0])),
        ("humidity", num([50.0; 3])),
        ("batterylevel", num([90.0; 3])),
        ("latitude", num([47.6; 3])),
        ("longitude", num([-122.3; 3])),
    ])
    .unwrap();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

/// What each undecodable body is, and what the worker must say about it.
fn bad_bodies() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = item("k").encode().unwrap();
    let mut future = good.clone();
    future[2] = WIRE_VERSION + 1;
    let outcome = OutcomeMessage {
        run_id: "r".into(),
        execution: 0,
        attempt: 1,
        worker_id: "w".into(),
        started_ms: 0,
        finished_ms: 0,
        bytes_read: 0,
        status: ItemStatus::Failed {
            error: "e".into(),
            cause: "c".into(),
        },
    }
    .encode()
    .unwrap();
    let mut oversized = good.clone();
    oversized.resize(MAX_MESSAGE_BYTES + 1, b'x');
    vec![
        (
            "garbage",
            b"\x00\x01\x02 not an item \xff\xfe".to_vec(),
            "magic bytes",
        ),
        (
            "json",
            br#"{"run_id":"r","execution":0}"#.to_vec(),
            "magic bytes",
        ),
        (
            "empty",
            Vec::new(),
            "shorter than the 4-byte envelope header",
        ),
        (
            "future version",
            future,
            "wire version 2, this build understands version 1",
        ),
        ("an outcome", outcome, "kind 2, expected Item"),
        (
            "truncated",
            good[..good.len() - 3].to_vec(),
            "not a valid Item",
        ),
        ("oversized", oversized, "exceeds the 65536-byte limit"),
    ]
}

async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    let confirm = ch
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue.to_owned()),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "the broker refused a message");
}

/// Takes `n` messages from `queue`, acking each, waiting (bounded) for them to arrive.
async fn take(ch: &Channel, queue: &str, n: usize) -> Vec<lapin::message::Delivery> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    while out.len() < n {
        let got = ch
            .basic_get(
                ShortString::from(queue.to_owned()),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic.get");
        match got {
            Some(m) => {
                m.delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
                out.push(m.delivery);
            }
            None if Instant::now() > deadline => {
                panic!("{queue}: {} of {n} messages after {WAIT:?}", out.len())
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    out
}

/// The `reason` and `queue` of a dead-lettered message's first `x-death` entry.
fn death(d: &lapin::message::Delivery) -> (String, String) {
    let headers = d.properties.headers().as_ref().expect("x-death headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death header: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("empty x-death: {deaths:?}");
    };
    let text = |k: &str| match first.inner().get(k) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("x-death {k}: {other:?}"),
    };
    (text("reason"), text("queue"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_items_are_dead_lettered_and_the_worker_consumes_on() {
    capture_logs();
    let s3 = LocalS3::start().await.expect("loopback S3");
    let client = s3.data_client().await;
    for b in [DATA, RESULTS] {
        fleetmap_objstore::ensure_bucket(&client, b).await.unwrap();
    }
    fleetmap_objstore::put_bytes(&client, DATA, "ok.parquet", small_parquet().into(), "x")
        .await
        .unwrap();
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topology = Topology::new(format!("fmbad-{}-{unique}", std::process::id()));
    let conn = amqp::connect(&amqp_url(), "fleetmap-bad-input-test")
        .await
        .expect("RabbitMQ (start one with deploy/local/rabbitmq-up.sh)");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    topology.declare(&ch).await.unwrap();

    let stats = Arc::new(WorkerStats::default());
    let stop = CancellationToken::new();
    let mut cfg = WorkerConfig::new(amqp_url(), topology.clone(), "bad-input-worker");
    cfg.concurrency = 2;
    let worker = tokio::spawn(consumer::run(
        cfg,
        client.clone(),
        stats.clone(),
        stop.clone(),
    ));

    // The checks run in a task of their own so that the queues are deleted even when one
    // fails; the failure is re-raised afterwards.
    let checks = tokio::spawn({
        let (ch, topology, stats) = (ch.clone(), topology.clone(), stats.clone());
        async move { check_dead_lettering(&ch, &topology, &stats).await }
    });
    let result = checks.await;

    stop.cancel();
    let _ = tokio::time::timeout(WAIT, worker).await;
    topology.delete(&ch).await;
    let _ = conn.close(200, "done".into()).await;
    s3.shutdown().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn check_dead_lettering(ch: &Channel, topology: &Topology, stats: &WorkerStats) {
    let bad = bad_bodies();
    for (_, body, _) in &bad {
        publish(ch, &topology.items_queue(), body).await;
    }
    let valid = item("ok.parquet");
    publish(ch, &topology.items_queue(), &valid.encode().unwrap()).await;

    // The valid item, published last, is processed: the worker survived the rest.
    let outcomes = take(ch, &topology.outcomes_queue(), 1).await;
    let outcome = OutcomeMessage::decode(&outcomes[0].data).expect("an outcome");
    assert_eq!(
        (outcome.run_id.as_str(), outcome.execution),
        ("queue-bad", 0)
    );
    match &outcome.status {
        ItemStatus::Succeeded {
            readings,
            anomalies,
            ..
        } => assert_eq!((*readings, anomalies.temperature_spike), (3, 1)),
        other => panic!("the valid item failed: {other:?}"),
    }

    // Every bad body is in the dead-letter queue, unchanged, rejected from the items queue.
    let dead = take(ch, &topology.dead_items_queue(), bad.len()).await;
    let mut want: BTreeMap<Vec<u8>, &str> = BTreeMap::new();
    for (name, body, _) in &bad {
        want.insert(body.clone(), name);
    }
    for d in &dead {
        assert!(
            want.remove(&d.data).is_some(),
            "dead-lettered bytes that were not published (or twice): {:?}",
            d.data.get(..64)
        );
        assert_eq!(
            death(d),
            ("rejected".to_owned(), topology.items_queue()),
            "x-death of {:?}",
            d.data.get(..64)
        );
    }
    assert!(want.is_empty(), "not dead-lettered: {:?}", want.values());

    assert_eq!(
        stats.items_rejected.load(Ordering::Relaxed),
        bad.len() as u64
    );
    assert_eq!(stats.items_succeeded.load(Ordering::Relaxed), 1);
    assert_eq!(stats.items_failed.load(Ordering::Relaxed), 0);
    assert_eq!(
        stats.sessions.load(Ordering::Relaxed),
        1,
        "the worker had to reconnect"
    );

    // Each rejection was logged with the reason, which says what is wrong with the bytes,
    // and the size of the body.
    let logged = LOGGED.lock().unwrap().clone();
    for (name, body, reason) in &bad {
        let size = format!("bytes={} ", body.len());
        assert!(
            logged
                .iter()
                .any(|l| l.contains("dead-lettered") && l.contains(reason) && l.contains(&size)),
            "no log line for the {name} body ({reason}, {size}): {logged:#?}"
        );
    }
}
