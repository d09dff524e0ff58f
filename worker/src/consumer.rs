//! The worker's AMQP loop: take an item, process it, confirm its outcome, then ack.
//!
//! A delivery is one child execution or a pack of small ones of one run
//! ([`ItemPack`]), which run side by side and answer with their outcomes together.
//!
//! Order matters for "nothing lost": an item is acked only after its results are written and
//! the broker has confirmed its outcome, so a worker killed at any point leaves the item
//! unacked and RabbitMQ redelivers it. Results keys are deterministic per child execution,
//! so the redelivery overwrites rather than duplicates. Concurrency is bounded twice: the
//! broker's prefetch and a semaphore permit taken *before* the next delivery is pulled.
//!
//! Shutdown is staged: cancel the consumer (no new deliveries), wait for in-flight items up
//! to the drain timeout, then close the channel, which hands any straggler back to the
//! broker. Losing the broker ends the session; the worker reconnects with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetmap_objstore::DataClient;
use fleetmap_protocol::messages::MAX_DEVICES_PER_OUTCOME;
use fleetmap_protocol::{
    EncodeError, ItemMessage, ItemPack, ItemStatus, Items, OutcomeMessage, amqp,
};
use futures::StreamExt;
use lapin::Channel;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::process::{ItemReport, ProcessOptions, process_item_with};

/// Why a worker session ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] amqp::ConnectError),
    #[error(transparent)]
    Topology(#[from] fleetmap_protocol::TopologyError),
    #[error("RabbitMQ {what} failed: {source}")]
    Amqp {
        what: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("the items consumer was cancelled by the broker")]
    ConsumerCancelled,
}

/// Counters a worker's owner (CLI, tests) can read while it runs. Several workers may share
/// one, which then counts for all of them.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub items_succeeded: AtomicU64,
    pub items_failed: AtomicU64,
    pub items_rejected: AtomicU64,
    /// Packs that came back from the broker and were sent on as single items.
    pub packs_split: AtomicU64,
    pub sessions: AtomicU64,
    /// True while a session is consuming the items queue: the worker's readiness. A worker
    /// that is up but has no broker takes no work, and a rollout must not count it as ready.
    consuming: std::sync::atomic::AtomicBool,
    /// Per run: child executions in progress now, and the most seen at once.
    in_flight: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

impl WorkerStats {
    /// Whether the worker is connected and consuming items right now.
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    fn enter(&self, run: &str) {
        if let Ok(mut m) = self.in_flight.lock() {
            let e = m.entry(run.to_owned()).or_default();
            e.0 += 1;
            e.1 = e.1.max(e.0);
        }
    }

    fn leave(&self, run: &str) {
        if let Ok(mut m) = self.in_flight.lock()
            && let Some(e) = m.get_mut(run)
        {
            e.0 = e.0.saturating_sub(1);
        }
    }

    /// The most child executions of `run` these workers held at once. An execution counts
    /// from the moment a worker takes it until just before its outcome is published, so the
    /// coordinator cannot have freed its credit yet: this never exceeds `MaxConcurrency`.
    pub fn max_in_flight(&self, run: &str) -> u64 {
        self.in_flight
            .lock()
            .ok()
            .and_then(|m| m.get(run).map(|e| e.1))
            .unwrap_or(0)
    }

    /// Starts a new observation window for `run` (e.g. after an `UpdateMapRun`).
    pub fn reset_max_in_flight(&self, run: &str) {
        if let Ok(mut m) = self.in_flight.lock()
            && let Some(e) = m.get_mut(run)
        {
            e.1 = e.0;
        }
    }
}

/// Runs the worker until `shutdown` is cancelled, reconnecting whenever the broker is lost.
/// Returns an error only if the very first connection cannot be made, so a misconfigured
/// worker fails fast while a running one rides out broker restarts.
pub async fn run(
    cfg: WorkerConfig,
    s3: DataClient,
    stats: Arc<WorkerStats>,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    let mut backoff = cfg.reconnect_min;
    let mut first = true;
    loop {
        let started = Instant::now();
        let ended = session(&cfg, &s3, &stats, &shutdown).await;
        stats.consuming.store(false, Ordering::Relaxed);
        match ended {
            Ok(()) => return Ok(()),
            Err(e) if first && matches!(e, SessionError::Connect(_)) => return Err(e),
            Err(e) => {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if started.elapsed() > cfg.reconnect_max {
                    backoff = cfg.reconnect_min;
                }
                warn!(worker = %cfg.worker_id, error = %e, retry_in = ?backoff, "worker session ended; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(cfg.reconnect_max);
            }
        }
        first = false;
    }
}

fn amqp_err(what: &'static str) -> impl FnOnce(lapin::Error) -> SessionError {
    move |source| SessionError::Amqp { what, source }
}

async fn session(
    cfg: &WorkerConfig,
    s3: &DataClient,
    stats: &Arc<WorkerStats>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let conn = amqp::connect(&cfg.amqp_url, &format!("fleetmap-worker-{}", cfg.worker_id)).await?;
    let consume = conn
        .create_channel()
        .await
        .map_err(amqp_err("open channel"))?;
    cfg.topology.declare(&consume).await?;
    consume
        .basic_qos(cfg.prefetch(), BasicQosOptions::default())
        .await
        .map_err(amqp_err("set prefetch"))?;
    let publish = conn
        .create_channel()
        .await
        .map_err(amqp_err("open channel"))?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp_err("enable publisher confirms"))?;
    let tag = format!("fleetmap-worker-{}", cfg.worker_id);
    let mut consumer = consume
        .basic_consume(
            ShortString::from(cfg.topology.items_queue()),
            ShortString::from(tag.clone()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp_err("consume items"))?;
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    stats.consuming.store(true, Ordering::Relaxed);
    info!(worker = %cfg.worker_id, queue = %cfg.topology.items_queue(), concurrency = cfg.concurrency, "worker consuming");

    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let outcomes_queue = cfg.topology.outcomes_queue();
    let result = loop {
        // Take capacity first: never pull a delivery we have no room to work on.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
        };
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                drop(permit);
                if let Err(e) = done { warn!(error = %e, "item task panicked"); }
                continue;
            }
            d = consumer.next() => d,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                break Err(SessionError::Amqp {
                    what: "receive item",
                    source: e,
                });
            }
            None => break Err(SessionError::ConsumerCancelled),
        };
        let ctx = ItemCtx {
            s3: s3.clone(),
            publish: publish.clone(),
            outcomes_queue: outcomes_queue.clone(),
            items_queue: cfg.topology.items_queue(),
            worker_id: cfg.worker_id.clone(),
            stats: stats.clone(),
            options: ProcessOptions {
                max_row_group_bytes: cfg.max_row_group_bytes,
            },
            timeout: cfg.child_execution_timeout,
        };
        tasks.spawn(async move {
            ctx.handle(delivery).await;
            drop(permit);
        });
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                warn!(error = %e, "item task panicked");
            }
        }
    };

    // Drain: stop new deliveries, let in-flight items finish, then close.
    let _ = consume
        .basic_cancel(ShortString::from(tag), BasicCancelOptions::default())
        .await;
    if !tasks.is_empty() {
        info!(worker = %cfg.worker_id, in_flight = tasks.len(), "draining in-flight items");
    }
    let drained = tokio::time::timeout(cfg.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(worker = %cfg.worker_id, left = tasks.len(), "drain timeout: unfinished items go back to the broker");
        tasks.abort_all();
    }
    let _ = consume.close(200, "worker draining".into()).await;
    let _ = publish.close(200, "worker draining".into()).await;
    let _ = conn.close(200, "worker stopping".into()).await;
    info!(worker = %cfg.worker_id, "worker session closed");
    result
}

struct ItemCtx {
    s3: DataClient,
    publish: Channel,
    outcomes_queue: String,
    items_queue: String,
    worker_id: String,
    stats: Arc<WorkerStats>,
    options: ProcessOptions,
    timeout: Duration,
}

impl ItemCtx {
    async fn handle(self, d: lapin::message::Delivery) {
        let items = match Items::decode(&d.data) {
            Ok(items) => items,
            Err(e) => {
                // Garbage or a future wire version: dead-letter it, keep consuming.
                warn!(error = %e, bytes = d.data.len(), "undecodable item dead-lettered");
                self.stats.items_rejected.fetch_add(1, Ordering::Relaxed);
                let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
                return;
            }
        };
        let children = match items {
            // A pack back from the broker may have taken a worker down with it. Its
            // children go back one by one, so a poison item reaches the delivery limit
            // alone and the others succeed; any that were done already are done again,
            // to the same result keys.
            Items::Pack(pack) if d.redelivered && pack.children.len() > 1 => {
                return self.split(d, pack).await;
            }
            items => items.into_items(),
        };
        let outcomes = futures::future::join_all(children.iter().map(|item| self.run(item))).await;
        match amqp::publish_outcomes(&self.publish, &self.outcomes_queue, &outcomes).await {
            Ok(()) => {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
            Err(e) => {
                // An outcome may be lost: give the item back so it is done again.
                warn!(error = %e, children = children.len(), "outcome not confirmed; requeueing the item");
                give_back(&d.acker).await;
            }
        }
    }

    /// Runs one child execution to its outcome; never fails, a failure is an outcome.
    async fn run(&self, item: &ItemMessage) -> OutcomeMessage {
        let span = info_span!("item", run = %item.run_id, execution = item.execution, attempt = item.attempt);
        async move {
            self.stats.enter(&item.run_id);
            metrics::gauge!("fleetmap_worker_items_in_flight").increment(1.0);
            let started_ms = chrono::Utc::now().timestamp_millis();
            let t0 = Instant::now();
            // Dropping the future on timeout stops fetching and uploading (the upload runs
            // inside it); a chunk already on the blocking pool finishes on its own and its
            // records are discarded. No result object is completed: the records were never
            // all handed over, so the upload was never committed.
            let result = match tokio::time::timeout(
                self.timeout,
                process_item_with(&self.s3, item, &self.options),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(WorkerError::Timeout {
                    bucket: item.bucket.clone(),
                    key: item.key.clone(),
                    seconds: self.timeout.as_secs(),
                }),
            };
            let finished_ms = chrono::Utc::now().timestamp_millis();
            metrics::gauge!("fleetmap_worker_items_in_flight").decrement(1.0);
            metrics::histogram!("fleetmap_worker_item_duration_seconds")
                .record(t0.elapsed().as_secs_f64());
            let (status, bytes_read) = match result {
                Ok(report) => {
                    record_success(&report);
                    self.stats.items_succeeded.fetch_add(1, Ordering::Relaxed);
                    debug!(readings = report.readings, key = %report.result_key, "item succeeded");
                    let bytes = report.bytes_read;
                    (succeeded(report), bytes)
                }
                Err(e) => {
                    self.stats.items_failed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("fleetmap_worker_items_total", "status" => "FAILED", "error" => e.error_name()).increment(1);
                    warn!(error = e.error_name(), cause = %e, "item failed");
                    (
                        ItemStatus::Failed {
                            error: e.error_name().to_owned(),
                            cause: fleetmap_protocol::bounded_cause(e.to_string()),
                        },
                        0,
                    )
                }
            };
            self.stats.leave(&item.run_id);
            OutcomeMessage {
                run_id: item.run_id.clone(),
                execution: item.execution,
                attempt: item.attempt,
                worker_id: self.worker_id.clone(),
                started_ms,
                finished_ms,
                bytes_read,
                status,
            }
        }
        .instrument(span)
        .await
    }

    /// Sends each child of `pack` back to the items queue on its own, then acks the pack.
    async fn split(&self, d: lapin::message::Delivery, pack: ItemPack) {
        let bodies: Result<Vec<_>, _> = pack
            .items()
            .map(|item| {
                let props = amqp::item_properties(&item.run_id, item.execution, item.attempt, 1);
                Ok::<_, EncodeError>((item.encode()?, props))
            })
            .collect();
        let sent = match bodies {
            Ok(messages) => amqp::publish_confirmed(&self.publish, &self.items_queue, &messages)
                .await
                .map_err(|e| e.to_string()),
            // Cannot happen for children that fitted a pack; the pack stays whole then.
            Err(e) => Err(format!("a packed child does not encode alone: {e}")),
        };
        match sent {
            Ok(()) => {
                self.stats.packs_split.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("fleetmap_worker_packs_split_total").increment(1);
                info!(run = %pack.run_id, children = pack.children.len(), "redelivered pack split into single items");
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
            Err(e) => {
                // Some children may now be queued twice; each attempt's outcome counts once.
                warn!(error = %e, "splitting a redelivered pack failed; requeueing it");
                give_back(&d.acker).await;
            }
        }
    }
}

/// Hands a delivery back to the broker, which delivers it again (to any worker).
async fn give_back(acker: &lapin::Acker) {
    let _ = acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await;
}

fn succeeded(r: ItemReport) -> ItemStatus {
    let mut devices = r.devices;
    let truncated = r.devices_truncated || devices.len() > MAX_DEVICES_PER_OUTCOME;
    devices.truncate(MAX_DEVICES_PER_OUTCOME);
    ItemStatus::Succeeded {
        readings: r.readings,
        anomalies: r.anomalies,
        devices,
        devices_truncated: truncated,
        result_key: r.result_key,
    }
}

fn record_success(r: &ItemReport) {
    metrics::counter!("fleetmap_worker_items_total", "status" => "SUCCEEDED", "error" => "")
        .increment(1);
    metrics::counter!("fleetmap_readings_total").increment(r.readings);
    metrics::counter!("fleetmap_worker_bytes_read_total").increment(r.bytes_read);
    metrics::counter!("fleetmap_anomalies_total", "type" => "temperature_spike")
        .increment(r.anomalies.temperature_spike);
    metrics::counter!("fleetmap_anomalies_total", "type" => "humidity_anomaly")
        .increment(r.anomalies.humidity_anomaly);
    metrics::counter!("fleetmap_anomalies_total", "type" => "low_battery")
        .increment(r.anomalies.low_battery);
}
