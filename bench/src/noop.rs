//! B4's no-op worker: the control plane alone, with the data plane taken out.
//!
//! It speaks exactly the worker's AMQP protocol (`worker/src/consumer.rs`): consume
//! `{prefix}.items` with a prefetch, decode each [`ItemMessage`] or pack of them, publish a
//! `Succeeded` [`OutcomeMessage`] per child to `{prefix}.outcomes` (a pack's together) with
//! publisher confirms, and ack the delivery only once those confirms are in. It reads and writes nothing in S3, so what B4 measures is the
//! coordinator plus RabbitMQ: dispatch, confirms, outcome application, credit windows.
//!
//! ```text
//! fleetmap-bench noop-worker [--amqp-url URL] [--queue-prefix P] [--consumers N] [--prefetch N]
//! ```
//!
//! Prints `ready` on stderr once every consumer is consuming, then runs until SIGTERM or
//! SIGINT and prints one JSON line on stdout: items answered, the Unix-ms times of the first
//! delivery and the last confirmed outcome, and CPU seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fleetmap_protocol::{
    AnomalyCounts, ItemMessage, ItemStatus, Items, OutcomeMessage, Topology, amqp,
};
use futures::StreamExt;
use lapin::Channel;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};

type Res = Result<(), Box<dyn std::error::Error>>;

struct Args {
    amqp_url: String,
    prefix: String,
    consumers: usize,
    prefetch: u16,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let mut a = Args {
        amqp_url: env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        prefix: env("FLEETMAP_QUEUE_PREFIX", "fleetmap"),
        consumers: 2,
        prefetch: 256,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--amqp-url" => a.amqp_url = value.clone(),
            "--queue-prefix" => a.prefix = value.clone(),
            "--consumers" => a.consumers = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--prefetch" => a.prefetch = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// What all consumers saw, for the final line.
#[derive(Default)]
struct Stats {
    items: AtomicU64,
    rejected: AtomicU64,
    first_delivery_ms: AtomicI64,
    last_outcome_ms: AtomicI64,
}

pub fn main(args: &[String]) -> Res {
    let args = parse(args)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Res {
    let stats = Arc::new(Stats::default());
    let topology = Topology::new(args.prefix.clone());
    let mut consumers = Vec::new();
    for n in 0..args.consumers.max(1) {
        consumers.push(start_consumer(&args, &topology, n, stats.clone()).await?);
    }
    eprintln!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for (conn, task) in consumers {
        task.abort();
        let _ = conn.close(200, "noop worker stopping".into()).await;
    }
    println!(
        "{{\"tool\":\"noop-worker\",\"items\":{},\"rejected\":{},\"first_delivery_ms\":{},\
         \"last_outcome_ms\":{},\"cpu_seconds\":{:.2}}}",
        stats.items.load(Ordering::Relaxed),
        stats.rejected.load(Ordering::Relaxed),
        stats.first_delivery_ms.load(Ordering::Relaxed),
        stats.last_outcome_ms.load(Ordering::Relaxed),
        crate::cpu_seconds()
    );
    Ok(())
}

/// One consumer: its own connection, a consume channel with the prefetch and a publish
/// channel with confirms, like one `fleetmap worker`.
async fn start_consumer(
    args: &Args,
    topology: &Topology,
    n: usize,
    stats: Arc<Stats>,
) -> Result<(lapin::Connection, tokio::task::JoinHandle<()>), Box<dyn std::error::Error>> {
    let worker_id = format!("noop-{n}");
    let conn = amqp::connect(&args.amqp_url, &format!("fleetmap-bench-{worker_id}")).await?;
    let consume = conn.create_channel().await?;
    topology.declare(&consume).await?;
    consume
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut deliveries = consume
        .basic_consume(
            ShortString::from(topology.items_queue()),
            ShortString::from(format!("fleetmap-bench-{worker_id}")),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let outcomes = topology.outcomes_queue();
    let task = tokio::spawn(async move {
        // Keeps the consume channel alive as long as the loop runs.
        let _consume = consume;
        while let Some(Ok(d)) = deliveries.next().await {
            let now = now_ms();
            let _ = stats.first_delivery_ms.compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            let (publish, outcomes, worker_id, stats) = (
                publish.clone(),
                outcomes.clone(),
                worker_id.clone(),
                stats.clone(),
            );
            tokio::spawn(
                async move { answer(d, now, &publish, &outcomes, worker_id, &stats).await },
            );
        }
    });
    Ok((conn, task))
}

/// Succeeds the item (or every child of a pack) at once: outcomes published and confirmed,
/// then the delivery acked.
async fn answer(
    d: lapin::message::Delivery,
    started_ms: i64,
    publish: &Channel,
    outcomes: &str,
    worker_id: String,
    stats: &Stats,
) {
    let items = match Items::decode(&d.data) {
        Ok(items) => items.into_items(),
        Err(_) => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    let answers: Vec<_> = items
        .iter()
        .map(|item| outcome_for(item, worker_id.clone(), started_ms))
        .collect();
    let confirmed = amqp::publish_outcomes(publish, outcomes, &answers)
        .await
        .is_ok();
    if confirmed {
        stats
            .items
            .fetch_add(answers.len() as u64, Ordering::Relaxed);
        stats.last_outcome_ms.fetch_max(now_ms(), Ordering::Relaxed);
        let _ = d.acker.ack(BasicAckOptions::default()).await;
    } else {
        let _ = d
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await;
    }
}

fn outcome_for(item: &ItemMessage, worker_id: String, started_ms: i64) -> OutcomeMessage {
    OutcomeMessage {
        run_id: item.run_id.clone(),
        execution: item.execution,
        attempt: item.attempt,
        worker_id,
        started_ms,
        finished_ms: now_ms(),
        bytes_read: 0,
        status: ItemStatus::Succeeded {
            readings: 0,
            anomalies: AnomalyCounts::default(),
            devices: Vec::new(),
            devices_truncated: false,
            result_key: format!("noop/{}/{}", item.run_id, item.execution),
        },
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
