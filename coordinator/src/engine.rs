//! The coordinator's event loop: one task owns every map run, so no state is shared.
//!
//! The loop waits on API commands, item outcomes, dead-lettered items and the results of
//! its own background tasks (item readers, result writers); after each event it publishes
//! whatever the runs' credit windows allow, round-robin across open runs so a run of one
//! item is not stuck behind a run of a million. Slow I/O (reading a manifest, writing
//! results) runs in spawned tasks that report back as events, so the loop never waits on S3.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use aws_sdk_s3::Client;
use fleetmap_objstore::S3Uri;
use fleetmap_protocol::{
    AnomalyCounts, InputType, ItemMessage, OutcomeMessage, ResultTarget, Thresholds, Topology,
    amqp, errors,
};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{Admission, AdmissionControl};
use crate::error::CoordinatorError;
use crate::metrics as m;
use crate::reader::{ItemSource, ReaderError, read_items};
use crate::result_writer::{self, ResultWriterError, map_run_arn};
use crate::run::{Applied, ChildSpec, Counts, MapRun, RunId, RunStatus, Tolerance};

/// Most items published between two confirm waits; bounds the loop's latency for outcomes.
const PUBLISH_BATCH: usize = 1_000;
/// Outcomes RabbitMQ may push before the coordinator acks; acks are cheap, so generous.
const OUTCOME_PREFETCH: u16 = 1_000;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub amqp_url: String,
    pub topology: Topology,
    pub open_map_run_limit: usize,
}

/// A request to start a map run (Step Functions' Map state definition, flattened).
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub source: ItemSource,
    pub input_type: InputType,
    pub max_concurrency: u32,
    pub tolerance: Tolerance,
    /// Where workers write the analytics records.
    pub results: ResultTarget,
    /// ResultWriter prefix; `None` puts it at `s3://{results bucket}/mapruns/`.
    pub result_writer: Option<String>,
    pub label: Option<String>,
    pub thresholds: Thresholds,
}

/// `DescribeMapRun`, with the reference job's totals.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDescription {
    pub map_run_id: String,
    pub map_run_arn: String,
    pub label: Option<String>,
    pub status: RunStatus,
    pub start_date: Option<String>,
    pub stop_date: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub max_concurrency: u32,
    pub tolerated_failure_count: Option<u64>,
    pub tolerated_failure_percentage: Option<f64>,
    pub item_source: String,
    pub item_counts: Counts,
    pub execution_counts: Counts,
    pub readings: u64,
    pub anomalies: AnomalyCounts,
    pub devices_with_anomalies: BTreeMap<String, u64>,
    pub executions_by_worker: BTreeMap<String, u64>,
    /// `s3://bucket/prefix/` of the analytics records.
    pub results: String,
    /// The ResultWriter's `manifest.json`, once written.
    pub result_writer_manifest: Option<String>,
    /// 1-based position in the open-map-run backlog while PENDING there.
    pub backlog_position: Option<usize>,
}

enum Command {
    Start {
        spec: Box<RunSpec>,
        reply: oneshot::Sender<Result<RunId, CoordinatorError>>,
    },
    Describe {
        id: RunId,
        reply: oneshot::Sender<Option<RunDescription>>,
    },
    List {
        reply: oneshot::Sender<Vec<RunDescription>>,
    },
    UpdateMaxConcurrency {
        id: RunId,
        max_concurrency: u32,
        reply: oneshot::Sender<Result<(), CoordinatorError>>,
    },
}

enum Event {
    ItemsRead {
        id: RunId,
        result: Result<Vec<S3Uri>, ReaderError>,
    },
    ResultsWritten {
        id: RunId,
        result: Result<String, ResultWriterError>,
    },
}

/// A cheap, cloneable way to talk to the running coordinator.
#[derive(Clone)]
pub struct CoordinatorHandle {
    tx: mpsc::Sender<Command>,
}

impl CoordinatorHandle {
    pub async fn start_run(&self, spec: RunSpec) -> Result<RunId, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Start {
            spec: Box::new(spec),
            reply,
        })
        .await?;
        rx.await.map_err(|_| CoordinatorError::Stopped)?
    }

    pub async fn describe(&self, id: &RunId) -> Result<RunDescription, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Describe {
            id: id.clone(),
            reply,
        })
        .await?;
        rx.await
            .map_err(|_| CoordinatorError::Stopped)?
            .ok_or_else(|| CoordinatorError::UnknownRun(id.0.clone()))
    }

    pub async fn list(&self) -> Result<Vec<RunDescription>, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::List { reply }).await?;
        rx.await.map_err(|_| CoordinatorError::Stopped)
    }

    /// `UpdateMapRun`'s `MaxConcurrency`, effective at the next dispatch.
    pub async fn update_max_concurrency(
        &self,
        id: &RunId,
        max_concurrency: u32,
    ) -> Result<(), CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::UpdateMaxConcurrency {
            id: id.clone(),
            max_concurrency,
            reply,
        })
        .await?;
        rx.await.map_err(|_| CoordinatorError::Stopped)?
    }

    /// Polls until the run is terminal (results written), calling `progress` on each poll.
    pub async fn wait(
        &self,
        id: &RunId,
        poll: Duration,
        mut progress: impl FnMut(&RunDescription),
    ) -> Result<RunDescription, CoordinatorError> {
        loop {
            let d = self.describe(id).await?;
            progress(&d);
            if d.status.is_terminal() {
                return Ok(d);
            }
            tokio::time::sleep(poll).await;
        }
    }

    async fn send(&self, cmd: Command) -> Result<(), CoordinatorError> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| CoordinatorError::Stopped)
    }
}

/// The running coordinator: its handle and its task.
pub struct Coordinator {
    handle: CoordinatorHandle,
    task: tokio::task::JoinHandle<Result<(), CoordinatorError>>,
}

impl Coordinator {
    /// Connects to RabbitMQ, declares the topology and starts the event loop, which runs
    /// until `shutdown` is cancelled.
    pub async fn start(
        cfg: CoordinatorConfig,
        s3: Client,
        shutdown: CancellationToken,
    ) -> Result<Coordinator, CoordinatorError> {
        let conn = amqp::connect(&cfg.amqp_url, "fleetmap-coordinator").await?;
        let publish = channel(&conn, "open publish channel").await?;
        cfg.topology.declare(&publish).await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_err("enable publisher confirms"))?;
        let consume = channel(&conn, "open consume channel").await?;
        consume
            .basic_qos(OUTCOME_PREFETCH, BasicQosOptions::default())
            .await
            .map_err(amqp_err("set outcome prefetch"))?;
        let outcomes = consumer(&consume, &cfg.topology.outcomes_queue(), "outcomes").await?;
        let dead = consumer(&consume, &cfg.topology.dead_items_queue(), "dead-items").await?;

        let (tx, rx) = mpsc::channel(256);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let admission = AdmissionControl::new(cfg.open_map_run_limit);
        m::set_admission(&admission);
        let engine = Engine {
            topology: cfg.topology,
            s3,
            publish,
            runs: HashMap::new(),
            created: Vec::new(),
            open: Vec::new(),
            rr: 0,
            admission,
            events_tx,
            republish: VecDeque::new(),
        };
        info!(
            open_map_run_limit = cfg.open_map_run_limit,
            prefix = %engine.topology.prefix,
            "coordinator started"
        );
        let task = tokio::spawn(engine.run(conn, rx, events_rx, outcomes, dead, shutdown));
        Ok(Coordinator {
            handle: CoordinatorHandle { tx },
            task,
        })
    }

    pub fn handle(&self) -> CoordinatorHandle {
        self.handle.clone()
    }

    /// Waits for the event loop to end (after shutdown) and returns how it ended.
    pub async fn join(self) -> Result<(), CoordinatorError> {
        drop(self.handle);
        self.task.await.unwrap_or(Err(CoordinatorError::Stopped))
    }
}

fn amqp_err(what: &'static str) -> impl FnOnce(lapin::Error) -> CoordinatorError {
    move |source| CoordinatorError::Amqp { what, source }
}

async fn channel(conn: &Connection, what: &'static str) -> Result<Channel, CoordinatorError> {
    conn.create_channel().await.map_err(amqp_err(what))
}

async fn consumer(ch: &Channel, queue: &str, tag: &str) -> Result<Consumer, CoordinatorError> {
    ch.basic_consume(
        ShortString::from(queue.to_owned()),
        ShortString::from(format!("fleetmap-coordinator-{tag}")),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(amqp_err("consume"))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

struct Entry {
    run: MapRun,
    spec: RunSpec,
    writer_prefix: S3Uri,
    /// The run is terminal and its ResultWriter output is written (or failed).
    finalized: bool,
    finalizing: bool,
    manifest_key: Option<String>,
}

struct Engine {
    topology: Topology,
    s3: Client,
    publish: Channel,
    runs: HashMap<RunId, Entry>,
    /// Creation order, for listing.
    created: Vec<RunId>,
    /// Open runs with items, in dispatch rotation.
    open: Vec<RunId>,
    rr: usize,
    admission: AdmissionControl,
    events_tx: mpsc::UnboundedSender<Event>,
    /// Items whose publish was nacked or returned: sent again before anything new.
    republish: VecDeque<(RunId, u32, u32)>,
}

impl Engine {
    async fn run(
        mut self,
        conn: Connection,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut outcomes: Consumer,
        mut dead: Consumer,
        shutdown: CancellationToken,
    ) -> Result<(), CoordinatorError> {
        let result = loop {
            if let Err(e) = self.dispatch().await {
                break Err(e);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break Ok(()),
                },
                Some(ev) = events.recv() => self.event(ev),
                d = outcomes.next() => match d {
                    Some(Ok(d)) => self.outcome(d).await,
                    Some(Err(e)) => break Err(CoordinatorError::Amqp { what: "consume outcomes", source: e }),
                    None => break Err(CoordinatorError::Stopped),
                },
                d = dead.next() => match d {
                    Some(Ok(d)) => self.dead_item(d).await,
                    Some(Err(e)) => break Err(CoordinatorError::Amqp { what: "consume dead items", source: e }),
                    None => break Err(CoordinatorError::Stopped),
                },
            }
        };
        if let Err(e) = &result {
            warn!(error = %e, "coordinator event loop stopped");
        }
        let _ = conn.close(200, "coordinator shutting down".into()).await;
        info!("coordinator stopped");
        result
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Start { spec, reply } => {
                let _ = reply.send(self.start(*spec));
            }
            Command::Describe { id, reply } => {
                let _ = reply.send(self.runs.get(&id).map(|e| self.describe(e)));
            }
            Command::List { reply } => {
                let all = self
                    .created
                    .iter()
                    .filter_map(|id| self.runs.get(id))
                    .map(|e| self.describe(e))
                    .collect();
                let _ = reply.send(all);
            }
            Command::UpdateMaxConcurrency {
                id,
                max_concurrency,
                reply,
            } => {
                let r = match self.runs.get_mut(&id) {
                    Some(e) => {
                        e.run.set_max_concurrency(max_concurrency);
                        info!(run = %id, max_concurrency, "MaxConcurrency updated");
                        Ok(())
                    }
                    None => Err(CoordinatorError::UnknownRun(id.0)),
                };
                let _ = reply.send(r);
            }
        }
    }

    fn start(&mut self, spec: RunSpec) -> Result<RunId, CoordinatorError> {
        let writer_prefix = validate(&spec)?;
        let id = RunId(uuid::Uuid::new_v4().simple().to_string());
        let run = MapRun::new(
            id.clone(),
            spec.label.clone(),
            spec.max_concurrency,
            spec.tolerance,
            now_ms(),
        );
        info!(run = %id, source = %spec.source.describe(), max_concurrency = spec.max_concurrency, "map run created");
        self.runs.insert(
            id.clone(),
            Entry {
                run,
                spec,
                writer_prefix,
                finalized: false,
                finalizing: false,
                manifest_key: None,
            },
        );
        self.created.push(id.clone());
        match self.admission.request(id.clone()) {
            Admission::Open => self.admit(&id),
            Admission::Backlogged { position } => {
                info!(run = %id, position, "open map run limit reached: run waits in the backlog");
            }
        }
        m::set_admission(&self.admission);
        Ok(id)
    }

    /// The run holds an open slot now: read its items (in the background).
    fn admit(&mut self, id: &RunId) {
        let Some(e) = self.runs.get_mut(id) else {
            return;
        };
        e.run.open(now_ms());
        let source = e.spec.source.clone();
        let s3 = self.s3.clone();
        let tx = self.events_tx.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let result = read_items(&s3, &source).await;
            let _ = tx.send(Event::ItemsRead { id, result });
        });
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::ItemsRead { id, result } => {
                let Some(e) = self.runs.get_mut(&id) else {
                    return;
                };
                match result {
                    Ok(uris) => {
                        info!(run = %id, children = uris.len(), "items read");
                        e.run.set_children(
                            uris.into_iter()
                                .map(|u| ChildSpec {
                                    bucket: u.bucket,
                                    key: u.key,
                                    row_groups: None,
                                    first_index: 0,
                                })
                                .collect(),
                        );
                        self.open.push(id);
                    }
                    Err(err) => {
                        warn!(run = %id, error = %err, "item reader failed");
                        e.run.fail(errors::ITEM_READER_FAILED, err.0, now_ms());
                        self.settle(&id);
                    }
                }
            }
            Event::ResultsWritten { id, result } => {
                let Some(e) = self.runs.get_mut(&id) else {
                    return;
                };
                match result {
                    Ok(key) => e.manifest_key = Some(key),
                    Err(err) => {
                        warn!(run = %id, error = %err, "ResultWriter failed");
                        e.run.result_writer_failed(err.to_string());
                    }
                }
                e.finalized = true;
                m::run_finished(e.run.status());
                info!(
                    run = %id,
                    status = e.run.status().as_str(),
                    succeeded = e.run.counts().succeeded,
                    failed = e.run.counts().failed,
                    readings = e.run.readings,
                    "map run finished"
                );
            }
        }
    }

    /// Publishes what the credit windows allow, then waits for the broker's confirms.
    async fn dispatch(&mut self) -> Result<(), CoordinatorError> {
        let mut pending = Vec::new();
        while let Some((id, exec, attempt)) = self.republish.pop_front() {
            if let Some(c) = self.publish_item(&id, exec, attempt).await? {
                pending.push((id, exec, attempt, c));
            }
        }
        'passes: while pending.len() < PUBLISH_BATCH && !self.open.is_empty() {
            let n = self.open.len();
            let start = self.rr % n;
            self.rr = self.rr.wrapping_add(1);
            let mut progressed = false;
            for k in 0..n {
                let id = self.open[(start + k) % n].clone();
                let Some(next) = self.runs.get_mut(&id).and_then(|e| e.run.next_dispatch()) else {
                    continue;
                };
                let (exec, attempt) = next;
                progressed = true;
                if let Some(c) = self.publish_item(&id, exec, attempt).await? {
                    pending.push((id, exec, attempt, c));
                }
                if pending.len() >= PUBLISH_BATCH {
                    break 'passes;
                }
            }
            if !progressed {
                break;
            }
        }
        for (id, exec, attempt, confirm) in pending {
            let ok = confirm.await.map(|c| c.is_ack()).unwrap_or(false);
            if !ok {
                warn!(run = %id, execution = exec, "item publish not confirmed; publishing again");
                self.republish.push_back((id, exec, attempt));
            }
        }
        Ok(())
    }

    async fn publish_item(
        &mut self,
        id: &RunId,
        execution: u32,
        attempt: u32,
    ) -> Result<Option<lapin::PublisherConfirm>, CoordinatorError> {
        let Some(e) = self.runs.get(id) else {
            return Ok(None);
        };
        let Some(child) = e.run.child(execution) else {
            return Ok(None);
        };
        let item = ItemMessage {
            run_id: id.0.clone(),
            execution,
            attempt,
            input_type: e.spec.input_type,
            bucket: child.bucket.clone(),
            key: child.key.clone(),
            row_groups: child.row_groups,
            first_index: child.first_index,
            result: e.spec.results.clone(),
            analysis_time_ms: e.run.created_ms,
            thresholds: e.spec.thresholds,
        };
        let body = item.encode().map_err(|source| CoordinatorError::Encode {
            run: id.0.clone(),
            source,
        })?;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/x-fleetmap".into())
            .with_message_id(ShortString::from(format!("{id}/{execution}/{attempt}")));
        let confirm = self
            .publish
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.topology.items_queue()),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .map_err(amqp_err("publish item"))?;
        debug!(run = %id, execution, attempt, "item published");
        Ok(Some(confirm))
    }

    async fn outcome(&mut self, d: lapin::message::Delivery) {
        match OutcomeMessage::decode(&d.data) {
            Ok(o) => {
                let id = RunId(o.run_id.clone());
                match self.runs.get_mut(&id) {
                    Some(e) => match e.run.apply_outcome(&o) {
                        Applied::Recorded => {
                            m::execution_finished(&o);
                            self.settle(&id);
                        }
                        Applied::Ignored(why) => debug!(run = %id, why, "outcome ignored"),
                    },
                    None => warn!(run = %id, "outcome for an unknown map run dropped"),
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
            Err(err) => {
                warn!(error = %err, "undecodable outcome message rejected");
                let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
            }
        }
    }

    async fn dead_item(&mut self, d: lapin::message::Delivery) {
        match ItemMessage::decode(&d.data) {
            Ok(item) => {
                let id = RunId(item.run_id.clone());
                let cause = format!(
                    "item {} was delivered {} times without an outcome (its workers crashed or \
                     were killed) and was dead-lettered",
                    item.source_uri(),
                    self.topology.delivery_limit
                );
                if let Some(e) = self.runs.get_mut(&id)
                    && e.run.apply_failure(
                        item.execution,
                        item.attempt,
                        errors::RUNTIME,
                        cause,
                        now_ms(),
                    ) == Applied::Recorded
                {
                    warn!(run = %id, execution = item.execution, "poison item failed its child execution");
                    m::execution_failed(errors::RUNTIME);
                    self.settle(&id);
                }
            }
            Err(err) => warn!(error = %err, "undecodable dead-lettered item dropped"),
        }
        let _ = d.acker.ack(BasicAckOptions::default()).await;
    }

    /// Finishes a run that has nothing left to do: releases its open slot and writes results.
    fn settle(&mut self, id: &RunId) {
        let Some(e) = self.runs.get_mut(id) else {
            return;
        };
        if e.finalizing || !e.run.settle(now_ms()) {
            return;
        }
        e.finalizing = true;
        self.open.retain(|r| r != id);
        let opened = self.admission.release(id);
        if e.run.counts().total == 0 {
            // Never got items: nothing to write.
            e.finalized = true;
            m::run_finished(e.run.status());
        } else {
            let s3 = self.s3.clone();
            let tx = self.events_tx.clone();
            let id2 = id.clone();
            let prefix = e.writer_prefix.clone();
            let files = result_writer::render(&e.run, &prefix);
            tokio::spawn(async move {
                let result = result_writer::write_files(&s3, &id2.0, &prefix, files).await;
                let _ = tx.send(Event::ResultsWritten { id: id2, result });
            });
        }
        for next in opened {
            info!(run = %next, "run leaves the backlog");
            self.admit(&next);
        }
        m::set_admission(&self.admission);
    }

    fn describe(&self, e: &Entry) -> RunDescription {
        let run = &e.run;
        let mut status = run.status();
        if status.is_terminal() && !e.finalized {
            // Still writing results: Step Functions reports the run as running until then.
            status = RunStatus::Running;
        }
        let backlog_position = (status == RunStatus::Pending)
            .then(|| self.admission.position(&run.id))
            .flatten();
        let results = if e.spec.results.prefix.is_empty() {
            format!("s3://{}/", e.spec.results.bucket)
        } else {
            format!("s3://{}/{}/", e.spec.results.bucket, e.spec.results.prefix)
        };
        RunDescription {
            map_run_id: run.id.0.clone(),
            map_run_arn: map_run_arn(&run.id.0),
            label: run.label.clone(),
            status,
            start_date: rfc3339(run.start_ms.or(Some(run.created_ms))),
            stop_date: if status.is_terminal() {
                rfc3339(run.stop_ms)
            } else {
                None
            },
            error: run.error.clone(),
            cause: run.cause.clone(),
            max_concurrency: run.max_concurrency(),
            tolerated_failure_count: run.tolerance().count,
            tolerated_failure_percentage: run.tolerance().percentage,
            item_source: e.spec.source.describe(),
            item_counts: run.counts(),
            execution_counts: run.counts(),
            readings: run.readings,
            anomalies: run.anomalies,
            devices_with_anomalies: run.devices_with_anomalies.clone(),
            executions_by_worker: run.executions_by_worker.clone(),
            results,
            result_writer_manifest: e
                .manifest_key
                .as_ref()
                .map(|k| format!("s3://{}/{k}", e.writer_prefix.bucket)),
            backlog_position,
        }
    }
}

/// Checks a run request before anything is created; returns the ResultWriter prefix.
fn validate(spec: &RunSpec) -> Result<S3Uri, CoordinatorError> {
    let bad = |m: String| Err(CoordinatorError::InvalidRequest(m));
    if let Err(e) = spec.thresholds.validate() {
        return bad(e);
    }
    if let Err(e) = fleetmap_objstore::uri::validate_bucket(&spec.results.bucket) {
        return bad(format!("results bucket {:?}: {e}", spec.results.bucket));
    }
    if let Err(e) = validate_prefix(&spec.results.prefix) {
        return bad(format!("results prefix {:?}: {e}", spec.results.prefix));
    }
    if let Some(p) = spec.tolerance.percentage
        && !(0.0..=100.0).contains(&p)
    {
        return bad(format!(
            "ToleratedFailurePercentage must be between 0 and 100, got {p}"
        ));
    }
    let writer = match &spec.result_writer {
        Some(uri) => S3Uri::parse_prefix(uri)
            .map_err(|e| CoordinatorError::InvalidRequest(format!("ResultWriter prefix: {e}")))?,
        None => S3Uri {
            bucket: spec.results.bucket.clone(),
            key: "mapruns/".into(),
        },
    };
    if let Err(e) = validate_prefix(&writer.key) {
        return bad(format!("ResultWriter prefix {:?}: {e}", writer.key));
    }
    Ok(writer)
}

/// A key prefix must not climb out of its bucket or prefix (`..`) or start at `/`.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.starts_with('/') {
        return Err("must not start with '/'".into());
    }
    if prefix.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err("must not contain '.' or '..' segments".into());
    }
    if prefix.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    if prefix.len() > 512 {
        return Err(format!("is {} bytes, more than 512", prefix.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_prefix;

    #[test]
    fn prefixes_cannot_escape() {
        assert!(validate_prefix("analytics").is_ok());
        assert!(validate_prefix("a/b/c/").is_ok());
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("../other").is_err());
        assert!(validate_prefix("a/../../b").is_err());
        assert!(validate_prefix("/abs").is_err());
        assert!(validate_prefix("a\nb").is_err());
    }
}
