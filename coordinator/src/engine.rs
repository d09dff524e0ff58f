//! The coordinator's event loop: one task owns every map run, so no state is shared.
//!
//! The loop waits on API commands, item outcomes, dead-lettered items and the results of
//! its own background tasks (item readers, result writers); after each event it publishes
//! whatever the runs' credit windows allow, round-robin across open runs so a run of one
//! item is not stuck behind a run of a million. Slow I/O (reading a manifest, writing
//! results) runs in spawned tasks that report back as events, so the loop never waits on S3.

use std::collections::{HashMap, VecDeque};

use aws_sdk_s3::Client;
use fleetmap_objstore::S3Uri;
use fleetmap_protocol::{InputType, ItemMessage, OutcomeMessage, Topology, amqp, errors};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{Admission, AdmissionControl};
use crate::batcher::{self, FileLayout};
use crate::error::CoordinatorError;
use crate::handle::{
    AdmissionView, ChildExecution, Command, CoordinatorHandle, Page, PageRequest, RunDescription,
    UpdateRequest,
};
use crate::metrics as m;
use crate::reader::{ReaderError, read_items, read_layouts};
use crate::result_writer::{self, ResultWriterError, map_run_arn};
use crate::run::{Applied, ExecState, MapRun, RunId, RunStatus, Tolerance};
use crate::spec::{RunSpec, validate};
use crate::state::{RunSnapshotRef, STATE_VERSION, Snapshot, SnapshotRef, StateStore};

/// Most items published between two confirm waits; bounds the loop's latency for outcomes.
const PUBLISH_BATCH: usize = 1_000;
/// Outcomes RabbitMQ may push before the coordinator acks; acks are cheap, so generous.
const OUTCOME_PREFETCH: u16 = 1_000;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub amqp_url: String,
    pub topology: Topology,
    pub open_map_run_limit: usize,
    /// Where to checkpoint (`s3://bucket/prefix/`); `None` keeps state in memory only and
    /// acks outcomes at once (a one-shot `fleetmap run`, tests of other things).
    pub state: Option<S3Uri>,
}

/// Checkpoint at most this often under a stream of outcomes, so one PUT covers many.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(25);
/// …or as soon as this many outcomes wait for their ack.
const CHECKPOINT_AFTER_OUTCOMES: usize = 500;

enum Event {
    ItemsRead {
        id: RunId,
        result: Result<Vec<FileLayout>, ReaderError>,
    },
    ResultsWritten {
        id: RunId,
        result: Result<String, ResultWriterError>,
    },
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
        let store = cfg
            .state
            .as_ref()
            .map(|uri| StateStore::new(s3.clone(), uri));
        let snapshot = match &store {
            Some(st) => st.load().await?,
            None => None,
        };
        let mut engine = Engine {
            topology: cfg.topology,
            s3,
            publish,
            runs: HashMap::new(),
            created: Vec::new(),
            open: Vec::new(),
            rr: 0,
            admission: AdmissionControl::new(cfg.open_map_run_limit),
            events_tx,
            republish: VecDeque::new(),
            opened: 0,
            runs_finished: 0,
            executions_finished: 0,
            store,
            dirty: false,
            unacked: Vec::new(),
            deferred: Vec::new(),
            last_save: std::time::Instant::now(),
        };
        if let Some(snap) = snapshot {
            engine.restore(snap, cfg.open_map_run_limit);
        }
        m::set_admission(&engine.admission);
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
    /// Terminal and its ResultWriter output written (or failed): what `describe` shows.
    finalized: bool,
    /// Terminal and releasing its slot / writing results.
    finalizing: bool,
    manifest_key: Option<String>,
    open_order: Option<u64>,
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
    opened: u64,
    runs_finished: u64,
    executions_finished: u64,
    store: Option<StateStore>,
    /// State changed since the last checkpoint.
    dirty: bool,
    /// Outcome and dead-letter deliveries applied but not yet covered by a checkpoint.
    unacked: Vec<lapin::Acker>,
    /// API replies to send once the change they report is durable.
    deferred: Vec<Box<dyn FnOnce() + Send>>,
    last_save: std::time::Instant,
}

impl Engine {
    /// Rebuilds the engine from a checkpoint and restarts what was in motion.
    fn restore(&mut self, snap: Snapshot, limit: usize) {
        let n = snap.runs.len();
        self.opened = snap.opened;
        self.runs_finished = snap.runs_finished;
        self.executions_finished = snap.executions_finished;
        self.admission = snap.admission;
        // A raised limit opens runs from the backlog; they are admitted below.
        let opened_now = self.admission.set_limit(limit);
        self.republish = snap.republish.into_iter().collect();
        self.open = snap.open;
        let mut to_settle = Vec::new();
        let mut to_read = Vec::new();
        for r in snap.runs {
            let id = r.run.id.clone();
            let writer_prefix = S3Uri::parse_prefix(&r.writer_prefix).unwrap_or(S3Uri {
                bucket: r.spec.results.bucket.clone(),
                key: "mapruns/".into(),
            });
            if r.run.status().is_terminal() && !r.finalized {
                to_settle.push(id.clone());
            } else if r.run.status() == RunStatus::Running && r.run.counts().total == 0 {
                to_read.push(id.clone());
            }
            self.created.push(id.clone());
            self.runs.insert(
                id,
                Entry {
                    run: r.run,
                    spec: r.spec,
                    writer_prefix,
                    finalized: r.finalized,
                    finalizing: false,
                    manifest_key: r.manifest_key,
                    open_order: r.open_order,
                },
            );
        }
        self.created
            .sort_by_key(|id| self.runs.get(id).map(|e| e.run.created_ms));
        for id in to_read {
            self.read_items(&id);
        }
        for id in opened_now {
            self.admit(&id);
        }
        for id in to_settle {
            self.settle(&id);
        }
        info!(
            runs = n,
            open = self.open.len(),
            backlog = self.admission.backlog_len(),
            "coordinator state restored"
        );
    }

    /// Writes a checkpoint when one is due, then acks what it covers and sends the replies
    /// that waited for it. Returns when the next one is due, if changes are waiting.
    async fn checkpoint(&mut self, force: bool) -> Option<std::time::Duration> {
        let Some(store) = &self.store else {
            return None;
        };
        if !self.dirty {
            return None;
        }
        let since = self.last_save.elapsed();
        let due = force
            || !self.deferred.is_empty()
            || self.unacked.len() >= CHECKPOINT_AFTER_OUTCOMES
            || since >= CHECKPOINT_EVERY;
        if !due {
            return Some(CHECKPOINT_EVERY - since);
        }
        let body = {
            let snap = SnapshotRef {
                version: STATE_VERSION,
                saved_ms: now_ms(),
                runs: self
                    .created
                    .iter()
                    .filter_map(|id| self.runs.get(id))
                    .map(|e| RunSnapshotRef {
                        run: &e.run,
                        spec: &e.spec,
                        writer_prefix: e.writer_prefix.to_string(),
                        finalized: e.finalized,
                        manifest_key: &e.manifest_key,
                        open_order: e.open_order,
                    })
                    .collect(),
                open: &self.open,
                admission: &self.admission,
                republish: self.republish.iter().collect(),
                opened: self.opened,
                runs_finished: self.runs_finished,
                executions_finished: self.executions_finished,
            };
            serde_json::to_vec(&snap)
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot serialise the coordinator state");
                return Some(CHECKPOINT_EVERY);
            }
        };
        if let Err(e) = store.save(body).await {
            warn!(error = %e, "checkpoint failed; outcomes stay unacked until one succeeds");
            self.last_save = std::time::Instant::now();
            return Some(std::time::Duration::from_millis(500));
        }
        self.dirty = false;
        self.last_save = std::time::Instant::now();
        for a in self.unacked.drain(..) {
            let _ = a.ack(BasicAckOptions::default()).await;
        }
        for reply in self.deferred.drain(..) {
            reply();
        }
        None
    }

    /// Sends `reply` now, or after the next checkpoint when state is persisted.
    fn reply_when_durable<T: Send + 'static>(
        &mut self,
        tx: tokio::sync::oneshot::Sender<T>,
        value: T,
    ) {
        if self.store.is_some() {
            self.dirty = true;
            self.deferred.push(Box::new(move || {
                let _ = tx.send(value);
            }));
        } else {
            let _ = tx.send(value);
        }
    }

    async fn ack_when_durable(&mut self, acker: lapin::Acker) {
        if self.store.is_some() {
            self.dirty = true;
            self.unacked.push(acker);
        } else {
            let _ = acker.ack(BasicAckOptions::default()).await;
        }
    }
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
            let checkpoint_in = self.checkpoint(false).await;
            let checkpoint_timer = async {
                match checkpoint_in {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            // Wake for the earliest Retry that falls due, if any.
            let next_due = self
                .open
                .iter()
                .filter_map(|id| self.runs.get(id)?.run.next_due())
                .min();
            let retry_timer = async {
                match next_due {
                    Some(due) => {
                        let wait = (due - now_ms()).max(0) as u64;
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
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
                _ = retry_timer => {}
                _ = checkpoint_timer => {}
            }
        };
        // Whatever was applied is saved before the connection (and its unacked
        // deliveries) goes away.
        self.checkpoint(true).await;
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
                let r = self.start(*spec);
                self.reply_when_durable(reply, r);
            }
            Command::Describe { id, reply } => {
                let _ = reply.send(self.entry(&id).map(|e| self.describe(e)));
            }
            Command::List {
                status,
                page,
                reply,
            } => {
                let _ = reply.send(self.list(status, &page));
            }
            Command::Update { id, update, reply } => {
                let r = self.update(&id, update);
                self.reply_when_durable(reply, r);
            }
            Command::Abort { id, reply } => {
                let r = self.abort(&id);
                self.reply_when_durable(reply, r);
            }
            Command::Redrive { id, reply } => {
                let r = self.redrive(&id);
                self.reply_when_durable(reply, r);
            }
            Command::Executions {
                id,
                status,
                page,
                reply,
            } => {
                let _ = reply.send(self.executions(&id, status, &page));
            }
            Command::Execution {
                id,
                execution,
                reply,
            } => {
                let r = self.entry(&id).and_then(|e| {
                    child_view(e, execution, true).ok_or_else(|| {
                        CoordinatorError::NotFound(format!(
                            "map run {id} has no child execution {execution}"
                        ))
                    })
                });
                let _ = reply.send(r);
            }
            Command::Admission { reply } => {
                let _ = reply.send(AdmissionView {
                    open_map_run_limit: self.admission.limit(),
                    open_map_runs: self.admission.open_count(),
                    backlog_size: self.admission.backlog_len(),
                    backlog: self.admission.backlog().map(|r| r.0.clone()).collect(),
                    runs_finished: self.runs_finished,
                    executions_finished: self.executions_finished,
                });
            }
        }
    }

    fn entry(&self, id: &RunId) -> Result<&Entry, CoordinatorError> {
        self.runs
            .get(id)
            .ok_or_else(|| CoordinatorError::UnknownRun(id.0.clone()))
    }

    fn entry_mut(&mut self, id: &RunId) -> Result<&mut Entry, CoordinatorError> {
        self.runs
            .get_mut(id)
            .ok_or_else(|| CoordinatorError::UnknownRun(id.0.clone()))
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
        )
        .with_retry(spec.retry.clone());
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
                open_order: None,
            },
        );
        self.created.push(id.clone());
        self.request_admission(&id);
        Ok(id)
    }

    fn request_admission(&mut self, id: &RunId) {
        match self.admission.request(id.clone()) {
            Admission::Open => self.admit(id),
            Admission::Backlogged { position } => {
                info!(run = %id, position, "open map run limit reached: run waits in the backlog");
            }
        }
        m::set_admission(&self.admission);
    }

    /// The run holds an open slot now: read its items (in the background), or, for a
    /// redriven run whose items are known, start dispatching straight away.
    fn admit(&mut self, id: &RunId) {
        let Some(e) = self.runs.get_mut(id) else {
            return;
        };
        self.opened += 1;
        e.open_order = Some(self.opened);
        e.run.open(now_ms());
        self.dirty = true;
        if e.run.counts().total > 0 {
            self.open.push(id.clone());
            return;
        }
        self.read_items(id);
    }

    fn read_items(&mut self, id: &RunId) {
        let Some(e) = self.runs.get(id) else {
            return;
        };
        let source = e.spec.source.clone();
        // Parquet footers give each object's row count, so every child execution knows the
        // Map context Index of its first reading (and the ItemBatcher its row groups). Text
        // objects' row counts are unknown until read: their Index counts within each Source.
        let footers = e.spec.input_type == InputType::Parquet;
        let s3 = self.s3.clone();
        let tx = self.events_tx.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let result = match read_items(&s3, &source).await {
                Ok(uris) if footers => Ok(read_layouts(&s3, uris).await),
                Ok(uris) => Ok(uris
                    .into_iter()
                    .map(|u| FileLayout {
                        bucket: u.bucket,
                        key: u.key,
                        row_groups: None,
                    })
                    .collect()),
                Err(e) => Err(e),
            };
            let _ = tx.send(Event::ItemsRead { id, result });
        });
    }

    fn event(&mut self, ev: Event) {
        self.dirty = true;
        match ev {
            Event::ItemsRead { id, result } => {
                let Some(e) = self.runs.get_mut(&id) else {
                    return;
                };
                if e.run.status() != RunStatus::Running {
                    // Aborted while its items were being read.
                    return;
                }
                match result {
                    Ok(files) => {
                        let children = batcher::plan(&files, e.spec.batcher.as_ref());
                        info!(run = %id, objects = files.len(), children = children.len(), "items read");
                        e.run.set_children(children, now_ms());
                        self.open.push(id.clone());
                        // An empty batched file set has nothing to run: settle at once.
                        self.settle(&id);
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
                self.runs_finished += 1;
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

    fn list(
        &self,
        status: Option<RunStatus>,
        page: &PageRequest,
    ) -> Result<Page<RunDescription>, CoordinatorError> {
        let (offset, size) = page.resolve()?;
        let matching: Vec<&Entry> = self
            .created
            .iter()
            .rev()
            .filter_map(|id| self.runs.get(id))
            .filter(|e| status.is_none_or(|s| self.reported_status(e) == s))
            .collect();
        let items: Vec<RunDescription> = matching
            .iter()
            .skip(offset)
            .take(size)
            .map(|e| self.describe(e))
            .collect();
        let next = offset + items.len();
        Ok(Page {
            items,
            next_token: (next < matching.len()).then(|| next.to_string()),
        })
    }

    fn update(&mut self, id: &RunId, u: UpdateRequest) -> Result<RunDescription, CoordinatorError> {
        if let Some(p) = u.tolerated_failure_percentage
            && !(p.is_finite() && (0.0..=100.0).contains(&p))
        {
            return Err(CoordinatorError::InvalidRequest(format!(
                "toleratedFailurePercentage must be between 0 and 100, got {p}"
            )));
        }
        let e = self.entry_mut(id)?;
        if e.run.status().is_terminal() {
            return Err(CoordinatorError::Conflict(format!(
                "map run {id} is {}; only open or pending runs can be updated",
                e.run.status().as_str()
            )));
        }
        if let Some(n) = u.max_concurrency {
            e.run.set_max_concurrency(n);
        }
        if u.tolerated_failure_count.is_some() || u.tolerated_failure_percentage.is_some() {
            let t = e.run.tolerance();
            e.run.set_tolerance(Tolerance {
                count: u.tolerated_failure_count.or(t.count),
                percentage: u.tolerated_failure_percentage.or(t.percentage),
            });
        }
        info!(run = %id, max_concurrency = e.run.max_concurrency(), "map run updated");
        let e = self.entry(id)?;
        Ok(self.describe(e))
    }

    fn abort(&mut self, id: &RunId) -> Result<RunDescription, CoordinatorError> {
        let e = self.entry_mut(id)?;
        e.run
            .abort(now_ms())
            .map_err(|r| CoordinatorError::Conflict(r.0))?;
        info!(run = %id, "map run aborted");
        self.settle(id);
        let e = self.entry(id)?;
        Ok(self.describe(e))
    }

    fn redrive(&mut self, id: &RunId) -> Result<RunDescription, CoordinatorError> {
        let e = self.entry_mut(id)?;
        if !e.finalized {
            return Err(CoordinatorError::Conflict(format!(
                "map run {id} is still running or writing its results"
            )));
        }
        let n = e
            .run
            .redrive(now_ms())
            .map_err(|r| CoordinatorError::Conflict(r.0))?;
        e.finalized = false;
        e.finalizing = false;
        e.manifest_key = None;
        info!(run = %id, executions = n, redrive_count = e.run.redrive_count, "map run redriven");
        self.request_admission(id);
        let e = self.entry(id)?;
        Ok(self.describe(e))
    }

    fn executions(
        &self,
        id: &RunId,
        status: Option<ExecState>,
        page: &PageRequest,
    ) -> Result<Page<ChildExecution>, CoordinatorError> {
        let (offset, size) = page.resolve()?;
        let e = self.entry(id)?;
        let n = e.run.children().len() as u32;
        let matching = (0..n).filter(|&i| status.is_none_or(|s| e.run.state(i) == Some(s)));
        let mut items = Vec::new();
        let mut seen = 0usize;
        for i in matching {
            if seen >= offset && items.len() < size {
                items.extend(child_view(e, i, false));
            }
            seen += 1;
        }
        let next = offset + items.len();
        Ok(Page {
            items,
            next_token: (next < seen).then(|| next.to_string()),
        })
    }

    /// Publishes what the credit windows allow, then waits for the broker's confirms.
    async fn dispatch(&mut self) -> Result<(), CoordinatorError> {
        let now = now_ms();
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
                let Some((exec, attempt)) = self
                    .runs
                    .get_mut(&id)
                    .and_then(|e| e.run.next_dispatch(now))
                else {
                    continue;
                };
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
        if !pending.is_empty() {
            self.dirty = true;
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
                    Some(e) => match e.run.apply_outcome(&o, now_ms()) {
                        Applied::Recorded => {
                            self.executions_finished += 1;
                            m::execution_finished(&o);
                            self.settle(&id);
                        }
                        Applied::RetryScheduled { due_ms } => {
                            m::execution_finished(&o);
                            debug!(run = %id, execution = o.execution, due_ms, "retry scheduled");
                        }
                        Applied::Ignored(why) => debug!(run = %id, why, "outcome ignored"),
                    },
                    None => warn!(run = %id, "outcome for an unknown map run dropped"),
                }
                self.ack_when_durable(d.acker).await;
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
                if let Some(e) = self.runs.get_mut(&id) {
                    let applied = e.run.apply_failure(
                        item.execution,
                        item.attempt,
                        errors::RUNTIME,
                        cause,
                        now_ms(),
                    );
                    if applied == Applied::Recorded {
                        self.executions_finished += 1;
                        warn!(run = %id, execution = item.execution, "poison item failed its child execution");
                        m::execution_failed(errors::RUNTIME);
                        self.settle(&id);
                    }
                }
            }
            Err(err) => warn!(error = %err, "undecodable dead-lettered item dropped"),
        }
        self.ack_when_durable(d.acker).await;
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
            self.runs_finished += 1;
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

    /// Step Functions reports a run as RUNNING until its ResultWriter output exists.
    fn reported_status(&self, e: &Entry) -> RunStatus {
        let status = e.run.status();
        if status.is_terminal() && !e.finalized {
            RunStatus::Running
        } else {
            status
        }
    }

    fn describe(&self, e: &Entry) -> RunDescription {
        let run = &e.run;
        let status = self.reported_status(e);
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
            item_counts: run.item_counts(),
            execution_counts: run.counts(),
            redrive_count: run.redrive_count,
            redrive_date: rfc3339(run.redrive_ms),
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
            open_order: e.open_order,
        }
    }
}

fn child_view(e: &Entry, execution: u32, with_history: bool) -> Option<ChildExecution> {
    let run = &e.run;
    let child = run.child(execution)?;
    let rec = run.record(execution);
    Some(ChildExecution {
        execution,
        name: format!("{}-{execution:06}", run.id),
        status: run.state(execution)?,
        attempt: run.attempt(execution).unwrap_or(0),
        source: format!("s3://{}/{}", child.bucket, child.key),
        row_groups: child.row_groups,
        index: child.first_index,
        items: child.items,
        worker: rec.and_then(|r| r.worker_id.clone()),
        start_date: rec.and_then(|r| rfc3339(r.started_ms)),
        stop_date: rec.and_then(|r| rfc3339(r.finished_ms)),
        bytes_read: rec.map(|r| r.bytes_read),
        readings: rec.map(|r| r.readings),
        result_key: rec.and_then(|r| r.result_key.clone()),
        error: rec.and_then(|r| r.error.clone()),
        cause: rec.and_then(|r| r.cause.clone()),
        history: with_history.then(|| run.history(execution).to_vec()),
    })
}
