//! The coordinator's event loop: one task owns every map run, so no state is shared.
//!
//! The loop waits on API commands, item outcomes, dead-lettered items and the results of
//! its own background tasks (item readers, result writers); after each event it publishes
//! whatever the runs' credit windows allow, round-robin across open runs so a run of one
//! item is not stuck behind a run of a million. Slow I/O (reading a manifest, writing
//! results) runs in spawned tasks that report back as events, so the loop never waits on S3.
//!
//! Losing RabbitMQ does not end the loop. Every map run lives in memory here, not in the
//! broker, so the loop drops the dead session ([`broker::Link`]), keeps answering the API and
//! opens a new session with backoff. What the old session left uncertain is settled on the
//! safe side: items published without a confirm are published again (an execution's outcome
//! is applied once per attempt and its result keys are fixed, so a duplicate costs work, not
//! correctness), and outcomes applied but not acked come back from the broker and are
//! ignored as duplicates.

mod broker;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmap_objstore::DataClient;
use fleetmap_objstore::S3Uri;
use fleetmap_protocol::{
    InputType, ItemMessage, ItemPack, Items, OutcomeMessage, PackedChild, Topology, amqp,
    decode_outcomes, errors,
};
use futures::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::ShortString;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{Admission, AdmissionControl};
use crate::alloc::Trimmer;
use crate::batcher::{FileLayout, Planner};
use crate::error::CoordinatorError;
use crate::handle::{
    AdmissionView, ChildExecution, Command, CoordinatorHandle, Page, PageRequest, RunDescription,
    UpdateRequest,
};
use crate::metrics as m;
use crate::reader::{ReaderError, read_items, read_layouts};
use crate::result_writer::{self, ResultWriterError, map_run_arn};
use crate::run::{
    Applied, ChildSegment, ChildSpec, ExecRecord, ExecState, MapRun, RunId, RunStatus, Tolerance,
};
use crate::spec::{RunSpec, validate};
use crate::state::{
    ArchivedRun, ArchivedRunRef, MAX_SEGMENT_CHILDREN, RunSnapshotRef, STATE_VERSION, SegmentRef,
    SegmentWrite, Snapshot, SnapshotRef, StateError, StateStore,
};

pub use broker::{AMQP_CONNECTED, AMQP_RECONNECTS};
use broker::{Backoff, Link};

/// Most items published between two confirm waits; bounds the loop's latency for outcomes.
const PUBLISH_BATCH: usize = 1_000;
/// Item readers (manifest and footer reads) running at once, over all runs. A thousand runs
/// started together otherwise open a thousand S3 connections at once, and the client's pool
/// then keeps them, buffers and all, long after the reads (B5 measured ~7 KB a run).
const ITEM_READERS: usize = 16;
/// Events (stretches of planned children, results written) waiting for the loop, at most;
/// then item readers wait. A stretch waits as `ChildSpec`s, about three times its packed
/// size in the run, and while the loop writes a checkpoint a thousand runs' manifests read
/// meanwhile piled up unbounded: the coordinator peaked at 980 MB with `--state-uri`, 490 MB
/// without, for 1,000 runs of 10,000 children.
const EVENTS_QUEUED: usize = 16;
/// A listing page at least this long asks for a heap trim once it is answered.
const LARGE_PAGE: usize = 100;
/// Outcomes applied per wake of the event loop at most, so commands and checkpoints are not
/// starved while a backlog of outcomes drains.
const OUTCOME_BATCH: usize = 1_000;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub amqp_url: String,
    pub topology: Topology,
    pub open_map_run_limit: usize,
    /// Where to checkpoint (`s3://bucket/prefix/`); `None` keeps state in memory only and
    /// acks outcomes at once (a one-shot `fleetmap run`, tests of other things).
    pub state: Option<S3Uri>,
    /// Small child executions of one run sent together in one message, at most; 1 sends
    /// each alone. See [`fleetmap_protocol::ItemPack`] and [`PACKABLE_READINGS`].
    pub children_per_message: usize,
}

impl CoordinatorConfig {
    /// 16 tiny files a message cut the broker's and the coordinator's CPU per child
    /// execution by an order of magnitude (BENCHMARKS.md, B3 tiny), while a pack of
    /// children of at most [`PACKABLE_READINGS`] readings is still well under a second of a
    /// worker's time.
    pub const DEFAULT_CHILDREN_PER_MESSAGE: usize = 16;
}

/// A child execution of at most this many readings (as its footer told) may share a message
/// with others of its run; bigger ones, and those whose size is unknown (CSV, JSON, a
/// footer that could not be read), always travel alone, so a pack never holds a worker for
/// long or keeps other workers idle.
pub const PACKABLE_READINGS: u64 = 10_000;

/// Checkpoint at most this often under a stream of outcomes, so one PUT covers many.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(25);
/// …or as soon as this many outcomes wait for their ack.
const CHECKPOINT_AFTER_OUTCOMES: usize = 500;
/// A checkpoint rewrites the state of every run not yet archived, so its cost grows with
/// them. Between two, at least this many times the last one's cost (serialise, which holds
/// the loop, + PUT, which does not) passes, which keeps checkpointing under ~1/(1+N) of the
/// coordinator's time and of the store's load however big the state: the outcomes waiting
/// meanwhile are only acked later, nothing is lost.
const CHECKPOINT_COST_RATIO: u32 = 3;
/// A run still being read carries at most this many children inline in the checkpoint
/// before they go to a segment object of their own ([`crate::state`]): a segment per reader
/// stretch would make thousands of objects of a big listing, and what is inline costs every
/// checkpoint its bytes.
const SEGMENT_CHILDREN: usize = 4096;
/// Finished executions' records a checkpoint carries inline, at most, before they go to a
/// record segment of their own: ~1 MB of JSON a segment.
const RECORD_SEGMENT: usize = 4096;
/// Children one checkpoint writes to new segments, at most (~40 MB of segments): a burst of
/// freshly read runs is written over several rounds before the snapshot that names them,
/// rather than all their bodies held at once (1,000 runs of 10,000 children: 363 MB).
const SEGMENT_BUDGET: usize = 1 << 20;
/// Segment-only rounds in a row, at most, before a snapshot writes whatever is left at once:
/// item readers that plan children faster than rounds write them must not hold off the
/// snapshot (and every ack and reply waiting for it) for ever.
const MAX_SEGMENT_ROUNDS: u32 = 16;
/// After a checkpoint write fails, the next attempt waits this long.
const SAVE_RETRY: Duration = Duration::from_millis(500);

/// A checkpoint on its way to the object store, with what waits for it to be durable.
struct Saving {
    /// The snapshot's generation; `None` for a round that writes children segments only
    /// (see [`Engine::segment_round`]).
    generation: Option<u64>,
    /// The finished runs whose archives this checkpoint writes (and its snapshot names).
    archiving: Vec<ArchivedRun>,
    /// The children segments it writes (and its snapshot names).
    segments: Vec<(RunId, SegmentRef)>,
    /// The record segments it writes: run, sequence number, record writes covered.
    record_segments: Vec<(RunId, u32, usize)>,
    /// Outcomes whose effects the snapshot holds: acked once it is durable.
    acks: Vec<lapin::Acker>,
    /// API replies that wait for the snapshot.
    replies: Vec<Box<dyn FnOnce() + Send>>,
    started: std::time::Instant,
}

/// A checkpoint write and what waits for it.
type SaveTask = (JoinHandle<Result<(), StateError>>, Saving);

/// Resolves when the checkpoint in flight ends; never, when there is none.
async fn save_done(saving: &mut Option<SaveTask>) -> Result<Result<(), StateError>, JoinError> {
    match saving {
        Some((task, _)) => task.await,
        None => std::future::pending().await,
    }
}

enum Event {
    /// The next stretch of a run's children, planned in order: `start` is the index of its
    /// first child in the whole plan (a resumed reader plans from the start again, so the
    /// run skips what it already holds). `done` marks the last stretch.
    ItemsRead {
        id: RunId,
        start: usize,
        result: Result<Vec<ChildSpec>, ReaderError>,
        done: bool,
    },
    ResultsWritten {
        id: RunId,
        result: Result<String, ResultWriterError>,
    },
}

/// Children a stretch long are handed to the engine together…
const STRETCH_CHILDREN: usize = 256;
/// …or after this long, so a slow item reader's children still start promptly.
const STRETCH_EVERY: Duration = Duration::from_millis(20);

/// The item reader's side of [`Event::ItemsRead`]: collects planned children and sends them
/// to the engine a stretch at a time, the first as soon as there is one.
struct ItemStretches {
    id: RunId,
    tx: mpsc::Sender<Event>,
    children: Vec<ChildSpec>,
    /// Children sent so far: the next stretch's `start`.
    sent: usize,
    last: Instant,
}

impl ItemStretches {
    fn new(id: RunId, tx: mpsc::Sender<Event>) -> Self {
        ItemStretches {
            id,
            tx,
            children: Vec::new(),
            sent: 0,
            last: Instant::now(),
        }
    }

    /// Sends the children collected so far if a stretch is due. False once the engine is
    /// gone (the reader then stops).
    async fn flush_if_due(&mut self) -> bool {
        let due = !self.children.is_empty()
            && (self.sent == 0
                || self.children.len() >= STRETCH_CHILDREN
                || self.last.elapsed() >= STRETCH_EVERY);
        !due || self.send(false).await
    }

    /// Waits while [`EVENTS_QUEUED`] events wait for the loop.
    async fn send(&mut self, done: bool) -> bool {
        let children = std::mem::take(&mut self.children);
        let start = self.sent;
        self.sent += children.len();
        self.last = Instant::now();
        self.tx
            .send(Event::ItemsRead {
                id: self.id.clone(),
                start,
                result: Ok(children),
                done,
            })
            .await
            .is_ok()
    }

    async fn finish(mut self) {
        self.send(true).await;
    }

    async fn fail(self, e: ReaderError) {
        let _ = self
            .tx
            .send(Event::ItemsRead {
                id: self.id,
                start: 0,
                result: Err(e),
                done: true,
            })
            .await;
    }
}

/// The running coordinator: its handle and its task.
pub struct Coordinator {
    handle: CoordinatorHandle,
    task: JoinHandle<Result<(), CoordinatorError>>,
    broker: watch::Receiver<bool>,
}

impl Coordinator {
    /// Connects to RabbitMQ, declares the topology and starts the event loop, which runs
    /// until `shutdown` is cancelled. Only this first connection is fatal when it fails, so a
    /// misconfigured coordinator stops at once while a running one rides out broker restarts.
    pub async fn start(
        cfg: CoordinatorConfig,
        s3: DataClient,
        shutdown: CancellationToken,
    ) -> Result<Coordinator, CoordinatorError> {
        let link = Link::open_within(&cfg.amqp_url, &cfg.topology).await?;
        let (connected, broker) = watch::channel(true);
        metrics::gauge!(AMQP_CONNECTED).set(1.0);
        metrics::counter!(AMQP_RECONNECTS).increment(0);

        let (tx, rx) = mpsc::channel(256);
        let (events_tx, events_rx) = mpsc::channel(EVENTS_QUEUED);
        let mut store = cfg
            .state
            .as_ref()
            .map(|uri| StateStore::new(s3.sdk().clone(), uri));
        let snapshot = match &mut store {
            Some(st) => st.load().await?,
            None => None,
        };
        let mut engine = Engine {
            topology: cfg.topology,
            children_per_message: cfg.children_per_message.max(1),
            s3,
            amqp_url: cfg.amqp_url,
            link: Some(link),
            reconnect: Reconnect::default(),
            connected,
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
            saving: None,
            trimmer: Trimmer::new(),
            retry_save_at: None,
            last_cost: std::time::Duration::ZERO,
            segment_rounds: 0,
            item_readers: Arc::new(tokio::sync::Semaphore::new(ITEM_READERS)),
            readers: HashMap::new(),
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
        let task = tokio::spawn(engine.run(rx, events_rx, shutdown));
        Ok(Coordinator {
            handle: CoordinatorHandle { tx },
            task,
            broker,
        })
    }

    pub fn handle(&self) -> CoordinatorHandle {
        self.handle.clone()
    }

    /// Whether the coordinator holds a working RabbitMQ session (`false` while it
    /// reconnects): what readiness should report. The API answers either way.
    pub fn broker_connected(&self) -> watch::Receiver<bool> {
        self.broker.clone()
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

/// Errors that mean the broker session is unusable (as opposed to a bad item or request):
/// the loop answers them by reconnecting.
fn is_session_error(e: &CoordinatorError) -> bool {
    matches!(
        e,
        CoordinatorError::Amqp { .. }
            | CoordinatorError::ConsumerEnded { .. }
            | CoordinatorError::Connect(_)
            | CoordinatorError::Topology(_)
    )
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
    /// Finalized and written to its own archive object: checkpoints name it, no more.
    archived: bool,
    /// The run's children segments known durable, in order from the first child.
    segments: Vec<SegmentRef>,
    /// The run's record segments known durable, in the order written.
    record_segments: Vec<u32>,
    /// The number the next record segment gets. Every write attempt takes a new one, so a
    /// retry after a failed checkpoint never overwrites a segment that checkpoint may have
    /// named after all (a PUT that failed on the way back), whose records may be older.
    next_record_seq: Cell<u32>,
}

/// What a checkpoint holds of a run beside the run itself: every segment, those it writes
/// now included, and what it carries inline.
struct RunParts<'a> {
    segments: Vec<SegmentRef>,
    tail: Option<ChildSegment>,
    record_segments: Vec<u32>,
    records: Vec<&'a ExecRecord>,
}

/// Where a checkpoint puts children `unsaved` (those after the run's last durable segment):
/// in new segments of at most [`MAX_SEGMENT_CHILDREN`] when the run's reader is done, `all`
/// is asked (a run being archived) or they are [`SEGMENT_CHILDREN`] or more; else inline.
fn plan_segments(
    unsaved: std::ops::Range<usize>,
    reading: bool,
    all: bool,
) -> (Vec<std::ops::Range<usize>>, Option<std::ops::Range<usize>>) {
    if unsaved.is_empty() {
        return (Vec::new(), None);
    }
    if !all && reading && unsaved.len() < SEGMENT_CHILDREN {
        return (Vec::new(), Some(unsaved));
    }
    let end = unsaved.end;
    let segments = unsaved
        .step_by(MAX_SEGMENT_CHILDREN)
        .map(|start| start..(start + MAX_SEGMENT_CHILDREN).min(end))
        .collect();
    (segments, None)
}

/// Given each run's planned segments, `None` if they come to `budget` children or fewer;
/// else the first `budget` children's worth, in order, as (run index, range), the last one
/// cut short if need be (the next round plans from where it ends).
fn budget_round(
    plans: Vec<Vec<std::ops::Range<usize>>>,
    budget: usize,
) -> Option<Vec<(usize, std::ops::Range<usize>)>> {
    let total: usize = plans.iter().flatten().map(|r| r.len()).sum();
    if total <= budget {
        return None;
    }
    let mut left = budget;
    let mut round = Vec::new();
    for (i, ranges) in plans.into_iter().enumerate() {
        for r in ranges {
            if left == 0 {
                return Some(round);
            }
            let end = r.start + r.len().min(left);
            left -= end - r.start;
            round.push((i, r.start..end));
        }
    }
    Some(round)
}

/// Children a checkpoint writes to new segments, and those it carries inline.
type UnsavedChildren = (Vec<(SegmentRef, ChildSegment)>, Option<ChildSegment>);

impl Entry {
    /// Where the children no durable segment holds yet go ([`plan_segments`]); a finished
    /// run writes them all, as its archive will name them.
    fn segment_plan(&self) -> (Vec<std::ops::Range<usize>>, Option<std::ops::Range<usize>>) {
        let saved = self.segments.last().map_or(0, |s| s.end) as usize;
        let count = self.run.execution_count() as usize;
        plan_segments(saved..count, self.run.reading(), self.finalized)
    }

    /// The children no durable segment holds yet, sliced as [`Entry::segment_plan`] places
    /// them.
    fn unsaved_children(&self) -> UnsavedChildren {
        let (new, inline) = self.segment_plan();
        let new = new
            .into_iter()
            .map(|r| (SegmentRef::of(&r), self.run.children_segment(r)))
            .collect();
        (new, inline.map(|r| self.run.children_segment(r)))
    }

    /// The run as a checkpoint or archive holds it.
    fn snapshot<'a>(&'a self, parts: RunParts<'a>) -> RunSnapshotRef<'a> {
        RunSnapshotRef {
            run: &self.run,
            spec: &self.spec,
            writer_prefix: self.writer_prefix.to_string(),
            finalized: self.finalized,
            manifest_key: &self.manifest_key,
            open_order: self.open_order,
            segments: parts.segments,
            tail: parts.tail,
            record_segments: parts.record_segments,
            records: parts.records,
        }
    }
}

/// Where the loop stands with the broker while it has no session.
#[derive(Default)]
struct Reconnect {
    /// Attempts made since the session was lost; drives the backoff.
    attempt: u32,
    lost_at: Option<Instant>,
    /// When the next attempt starts (none is running).
    next_at: Option<tokio::time::Instant>,
    /// The attempt in progress, in its own task so the loop keeps serving the API.
    task: Option<JoinHandle<Result<Box<Link>, CoordinatorError>>>,
}

/// What woke the loop on the broker's side.
enum BrokerWake {
    Outcome(Option<Result<lapin::message::Delivery, lapin::Error>>),
    Dead(Option<Result<lapin::message::Delivery, lapin::Error>>),
    AttemptDue,
    /// A connection attempt ended; `None` if its task died.
    Attempted(Option<Result<Box<Link>, CoordinatorError>>),
}

/// Waits for a delivery while connected, or for the next step of reconnecting while not.
/// Cancel-safe: dropping it mid-wait loses nothing (an unfinished attempt stays in `rc`).
async fn broker_wake(link: &mut Option<Link>, rc: &mut Reconnect) -> BrokerWake {
    if let Some(l) = link {
        return tokio::select! {
            d = l.outcomes.next() => BrokerWake::Outcome(d),
            d = l.dead.next() => BrokerWake::Dead(d),
        };
    }
    if let Some(task) = rc.task.as_mut() {
        let r = task.await.ok();
        rc.task = None;
        return BrokerWake::Attempted(r);
    }
    match rc.next_at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
    BrokerWake::AttemptDue
}

/// Why RabbitMQ dead-lettered a message (`x-first-death-reason`): `delivery_limit` for a
/// quorum queue's delivery limit, `rejected` for a consumer's reject without requeue.
fn first_death_reason(d: &lapin::message::Delivery) -> Option<String> {
    match d
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get("x-first-death-reason")?
    {
        lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Children published in one message, waiting for the broker's confirm.
struct Unconfirmed {
    run: RunId,
    children: Vec<(u32, u32)>,
    confirm: lapin::PublisherConfirm,
}

struct Engine {
    topology: Topology,
    children_per_message: usize,
    s3: DataClient,
    amqp_url: String,
    /// The broker session; `None` while reconnecting.
    link: Option<Link>,
    reconnect: Reconnect,
    /// Mirrors `link.is_some()` for readiness.
    connected: watch::Sender<bool>,
    runs: HashMap<RunId, Entry>,
    /// Creation order, for listing.
    created: Vec<RunId>,
    /// Open runs with items, in dispatch rotation.
    open: Vec<RunId>,
    rr: usize,
    admission: AdmissionControl,
    events_tx: mpsc::Sender<Event>,
    /// Items published but not confirmed — nacked, or sent on a session that died before
    /// confirming them, so possibly lost: sent again, same attempt, before anything new.
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
    /// The checkpoint being written beside the event loop, if any (one at a time).
    saving: Option<SaveTask>,
    /// Gives the heap back after runs end (see [`crate::alloc`]).
    trimmer: Trimmer,
    /// After a failed write, no new checkpoint before this.
    retry_save_at: Option<Instant>,
    /// What the last checkpoint took, serialising and PUT.
    last_cost: std::time::Duration,
    /// Segment-only rounds since the last snapshot (see [`MAX_SEGMENT_ROUNDS`]).
    segment_rounds: u32,
    /// Bounds the item readers at work at once (see [`ITEM_READERS`]).
    item_readers: Arc<tokio::sync::Semaphore>,
    /// Cancels each run's item reader still at work: a run that ends (aborted, failed) stops
    /// reading footers, and a resumed reader replaces the one before it.
    readers: HashMap<RunId, CancellationToken>,
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
        let archived = snap.archived_runs.into_iter().map(|r| (r, true));
        for (r, archived) in snap.runs.into_iter().map(|r| (r, false)).chain(archived) {
            let id = r.run.id.clone();
            let writer_prefix = S3Uri::parse_prefix(&r.writer_prefix).unwrap_or(S3Uri {
                bucket: r.spec.results.bucket.clone(),
                key: "mapruns/".into(),
            });
            if r.run.status().is_terminal() && !r.finalized {
                to_settle.push(id.clone());
            } else if r.run.status() == RunStatus::Running
                && (r.run.reading() || r.run.counts().total == 0)
            {
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
                    archived,
                    segments: r.segments,
                    next_record_seq: Cell::new(r.record_segments.last().map_or(0, |s| s + 1)),
                    record_segments: r.record_segments,
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

    /// Starts a checkpoint when one is due: the archives of newly finished runs, then the
    /// snapshot naming them. Both are serialised here (they borrow the state) and written by
    /// a task beside the event loop, so dispatching and applying outcomes go on while the
    /// object store answers; the outcomes and replies the snapshot covers are acked and sent
    /// when it is durable ([`Engine::saved`]). One write at a time. Returns when to look
    /// again, if nothing else wakes the loop first. `force` (at shutdown) waits for any
    /// write in flight, then writes and waits for a last one.
    async fn checkpoint(&mut self, force: bool) -> Option<std::time::Duration> {
        self.store.as_ref()?;
        if let Some((task, saving)) = self.saving.take() {
            if !force {
                // Its completion wakes the loop.
                self.saving = Some((task, saving));
                return None;
            }
            let result = task.await;
            self.saved(saving, result).await;
        }
        if !self.dirty {
            return None;
        }
        let since = self.last_save.elapsed();
        let every = CHECKPOINT_EVERY.max(self.last_cost * CHECKPOINT_COST_RATIO);
        let retry_in = self
            .retry_save_at
            .map(|t| t.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero());
        let due = force
            || (retry_in.is_none()
                && (!self.deferred.is_empty()
                    || (self.unacked.len() >= CHECKPOINT_AFTER_OUTCOMES
                        && since >= self.last_cost)
                    || since >= every));
        if !due {
            let wait = if let Some(r) = retry_in {
                r
            } else if self.unacked.len() >= CHECKPOINT_AFTER_OUTCOMES {
                self.last_cost.saturating_sub(since)
            } else {
                every.saturating_sub(since)
            };
            return Some(wait);
        }
        let started = std::time::Instant::now();
        let store = self.store.as_ref()?;
        let round = if self.segment_rounds < MAX_SEGMENT_ROUNDS {
            self.segment_round(store)
        } else {
            Ok(None)
        };
        match round {
            Err(e) => {
                warn!(error = %e, "cannot serialise a map run's children; outcomes stay unacked");
                self.retry_save_at = Some(Instant::now() + SAVE_RETRY);
                return Some(SAVE_RETRY);
            }
            Ok(Some(writes)) => {
                self.segment_rounds += 1;
                let segments = writes.iter().map(|w| (w.run.clone(), w.segment)).collect();
                let task = tokio::spawn(store.write_segments(writes, Vec::new()));
                let saving = Saving {
                    generation: None,
                    archiving: Vec::new(),
                    segments,
                    record_segments: Vec::new(),
                    acks: Vec::new(),
                    replies: Vec::new(),
                    started,
                };
                if !force {
                    self.saving = Some((task, saving));
                    return None;
                }
                let result = task.await;
                self.saved(saving, result).await;
                if self.retry_save_at.is_some() {
                    // The store fails: at shutdown, give up rather than retry forever.
                    return None;
                }
                return Box::pin(self.checkpoint(true)).await;
            }
            Ok(None) => self.segment_rounds = 0,
        }
        // Children not yet in a segment go to new ones, or inline while few and still being
        // read; newly finished runs are archived, and the snapshot only names both.
        let mut segment_writes = Vec::new();
        let mut record_writes = Vec::new();
        let mut error = None;
        let mut finished = Vec::new();
        let mut inline = Vec::new();
        let mut archived = Vec::new();
        for e in self.created.iter().filter_map(|id| self.runs.get(id)) {
            if e.archived {
                archived.push(ArchivedRunRef {
                    id: &e.run.id,
                    redrive_count: e.run.redrive_count,
                });
                continue;
            }
            let (new, tail) = e.unsaved_children();
            for (segment, children) in &new {
                match store.segment_body(&e.run.id, *segment, children) {
                    Ok(w) => segment_writes.push(w),
                    Err(err) => {
                        error.get_or_insert(err);
                    }
                }
            }
            let segments = e
                .segments
                .iter()
                .copied()
                .chain(new.into_iter().map(|(s, _)| s))
                .collect();
            // Records logged since the last record segment: a new one when they are many
            // or the run is being archived, else inline.
            let logged = e.run.record_log_len();
            let mut record_segments = e.record_segments.clone();
            let mut records = e.run.logged_records(logged);
            if logged >= RECORD_SEGMENT || (e.finalized && logged > 0) {
                let seq = e.next_record_seq.get();
                e.next_record_seq.set(seq + 1);
                let segment = std::mem::take(&mut records);
                match store.record_body(&e.run.id, seq, logged, segment) {
                    Ok(w) => record_writes.push(w),
                    Err(err) => {
                        error.get_or_insert(err);
                    }
                }
                record_segments.push(seq);
            }
            let snap = e.snapshot(RunParts {
                segments,
                tail,
                record_segments,
                records,
            });
            if e.finalized {
                finished.push(snap);
                archived.push(ArchivedRunRef {
                    id: &e.run.id,
                    redrive_count: e.run.redrive_count,
                });
            } else {
                inline.push(snap);
            }
        }
        let (writes, archive_error) = store.archive_bodies(&finished);
        drop(finished);
        if let Some(e) = error.or(archive_error) {
            warn!(error = %e, "cannot serialise a map run; outcomes stay unacked");
            self.retry_save_at = Some(Instant::now() + SAVE_RETRY);
            return Some(SAVE_RETRY);
        }
        let archiving: Vec<ArchivedRun> = writes.iter().map(|w| w.archived.clone()).collect();
        let segments: Vec<(RunId, SegmentRef)> = segment_writes
            .iter()
            .map(|w| (w.run.clone(), w.segment))
            .collect();
        let record_segments: Vec<(RunId, u32, usize)> = record_writes
            .iter()
            .map(|w| (w.run.clone(), w.seq, w.logged))
            .collect();
        let generation = store.next_generation();
        let body = serde_json::to_vec(&SnapshotRef {
            version: STATE_VERSION,
            generation,
            saved_ms: now_ms(),
            runs: inline,
            archived,
            open: &self.open,
            admission: &self.admission,
            republish: self.republish.iter().collect(),
            opened: self.opened,
            runs_finished: self.runs_finished,
            executions_finished: self.executions_finished,
        });
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot serialise the coordinator state");
                self.retry_save_at = Some(Instant::now() + SAVE_RETRY);
                return Some(SAVE_RETRY);
            }
        };
        let segment_puts = store.write_segments(segment_writes, record_writes);
        let archives = store.write_archives(writes);
        let slot = store.write_slot(generation, body);
        let task = tokio::spawn(async move {
            // The snapshot names the segments and archives (which name segments too), so it
            // is written only once they are all durable.
            let (segments, (_, archive_error)) = futures::join!(segment_puts, archives);
            segments?;
            if let Some(e) = archive_error {
                return Err(e);
            }
            slot.await
        });
        self.dirty = false;
        let saving = Saving {
            generation: Some(generation),
            archiving,
            segments,
            record_segments,
            acks: std::mem::take(&mut self.unacked),
            replies: std::mem::take(&mut self.deferred),
            started,
        };
        if force {
            let result = task.await;
            self.saved(saving, result).await;
        } else {
            self.saving = Some((task, saving));
        }
        None
    }

    /// When the children segments a checkpoint would write come to more than
    /// [`SEGMENT_BUDGET`] children, the first budget's worth, serialised, for a round that
    /// writes only them: the snapshot that names every segment waits for a later round, and
    /// the outcomes and replies with it. Segments written so are durable objects no
    /// checkpoint names yet; a coordinator that stops before one does plans those children
    /// again and writes the same objects.
    fn segment_round(&self, store: &StateStore) -> Result<Option<Vec<SegmentWrite>>, StateError> {
        let (entries, plans): (Vec<&Entry>, Vec<_>) = self
            .created
            .iter()
            .filter_map(|id| self.runs.get(id))
            .filter(|e| !e.archived)
            .map(|e| (e, e.segment_plan().0))
            .unzip();
        let Some(round) = budget_round(plans, SEGMENT_BUDGET) else {
            return Ok(None);
        };
        let mut writes = Vec::with_capacity(round.len());
        for (i, r) in round {
            let e = entries[i];
            let segment = SegmentRef::of(&r);
            writes.push(store.segment_body(&e.run.id, segment, &e.run.children_segment(r))?);
        }
        Ok(Some(writes))
    }

    /// A checkpoint write ended. Durable: the runs it archived are marked so (unless a
    /// redrive reopened them meanwhile), and the outcomes and replies it covers are acked
    /// and sent. Failed: they wait for the next one, in their order, and the state is
    /// written again after [`SAVE_RETRY`].
    async fn saved(&mut self, saving: Saving, result: Result<Result<(), StateError>, JoinError>) {
        self.last_save = std::time::Instant::now();
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("the checkpoint task ended: {e}")),
        };
        if let Some(error) = error {
            warn!(error = %error, "checkpoint failed; outcomes stay unacked until one succeeds");
            self.dirty = true;
            self.retry_save_at = Some(Instant::now() + SAVE_RETRY);
            let Saving {
                mut acks,
                mut replies,
                ..
            } = saving;
            acks.append(&mut self.unacked);
            self.unacked = acks;
            replies.append(&mut self.deferred);
            self.deferred = replies;
            return;
        }
        if let (Some(store), Some(generation)) = (self.store.as_mut(), saving.generation) {
            store.saved(generation);
            self.last_cost = saving.started.elapsed();
        }
        self.retry_save_at = None;
        for a in &saving.archiving {
            if let Some(e) = self.runs.get_mut(&a.id)
                && e.finalized
                && e.run.redrive_count == a.redrive_count
            {
                e.archived = true;
            }
        }
        for (id, s) in &saving.segments {
            if let Some(e) = self.runs.get_mut(id)
                && e.segments.last().map_or(0, |l| l.end) == s.start
            {
                e.segments.push(*s);
            }
        }
        for (id, seq, logged) in &saving.record_segments {
            if let Some(e) = self.runs.get_mut(id)
                && e.record_segments.last().is_none_or(|l| l < seq)
            {
                e.record_segments.push(*seq);
                e.run.trim_record_log(*logged);
            }
        }
        if !saving.archiving.is_empty()
            || !saving.segments.is_empty()
            || !saving.record_segments.is_empty()
        {
            // Their archives' and segments' buffers are gone now.
            self.trimmer.freed();
        }
        for a in saving.acks {
            let _ = a.ack(BasicAckOptions::default()).await;
        }
        for reply in saving.replies {
            reply();
        }
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
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
    ) -> Result<(), CoordinatorError> {
        let result = loop {
            if self.link.is_some()
                && let Err(e) = self.dispatch().await
            {
                if !is_session_error(&e) {
                    break Err(e);
                }
                self.session_lost(e);
            }
            let checkpoint_in = self.checkpoint(false).await;
            let checkpoint_timer = async {
                match checkpoint_in {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            // Wake for the earliest Retry that falls due, if any — only with a session to
            // publish it on; without one a due retry would wake the loop over and over.
            let next_due = match self.link {
                Some(_) => self
                    .open
                    .iter()
                    .filter_map(|id| self.runs.get(id)?.run.next_due())
                    .min(),
                None => None,
            };
            let retry_timer = async {
                match next_due {
                    Some(due) => {
                        let wait = (due - now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            let broker = broker_wake(&mut self.link, &mut self.reconnect);
            let save = save_done(&mut self.saving);
            let wake = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                cmd = commands.recv() => match cmd {
                    Some(cmd) => {
                        self.command(cmd);
                        continue;
                    }
                    None => break Ok(()),
                },
                Some(ev) = events.recv() => {
                    self.event(ev);
                    continue;
                }
                b = broker => b,
                result = save => {
                    if let Some((_, saving)) = self.saving.take() {
                        self.saved(saving, result).await;
                    }
                    continue;
                }
                _ = retry_timer => continue,
                _ = checkpoint_timer => continue,
            };
            self.broker(wake).await;
        };
        if let Some(task) = self.reconnect.task.take() {
            task.abort();
        }
        // Whatever was applied is saved before the connection (and its unacked
        // deliveries) goes away.
        self.checkpoint(true).await;
        if let Err(e) = &result {
            warn!(error = %e, "coordinator event loop stopped");
        }
        if let Some(link) = self.link.take() {
            let closing = link.conn.close(200, "coordinator shutting down".into());
            let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
        }
        self.connected.send_replace(false);
        info!("coordinator stopped");
        result
    }

    /// Acts on what the broker (or the reconnect schedule) woke the loop for.
    async fn broker(&mut self, wake: BrokerWake) {
        match wake {
            BrokerWake::Outcome(Some(Ok(d))) => {
                self.outcome(d).await;
                self.drain_outcomes().await;
            }
            BrokerWake::Dead(Some(Ok(d))) => self.dead_item(d).await,
            BrokerWake::Outcome(Some(Err(source))) => self.session_lost(CoordinatorError::Amqp {
                what: "consume outcomes",
                source,
            }),
            BrokerWake::Dead(Some(Err(source))) => self.session_lost(CoordinatorError::Amqp {
                what: "consume dead-lettered items",
                source,
            }),
            BrokerWake::Outcome(None) => self.session_lost(CoordinatorError::ConsumerEnded {
                queue: self.topology.outcomes_queue(),
            }),
            BrokerWake::Dead(None) => self.session_lost(CoordinatorError::ConsumerEnded {
                queue: self.topology.dead_items_queue(),
            }),
            BrokerWake::AttemptDue => self.start_attempt(),
            BrokerWake::Attempted(Some(Ok(link))) => self.session_restored(*link),
            BrokerWake::Attempted(Some(Err(e))) => self.attempt_failed(Some(e)),
            BrokerWake::Attempted(None) => self.attempt_failed(None),
        }
    }

    /// Applies the outcomes already delivered, up to [`OUTCOME_BATCH`], before the next
    /// dispatch pass: the credits they free then go out as one pipelined batch of publishes
    /// whose confirms are awaited together, instead of one publish and one confirm
    /// round-trip (a quorum-queue fsync, ~2 ms) per outcome.
    async fn drain_outcomes(&mut self) {
        for _ in 1..OUTCOME_BATCH {
            let Some(ready) = self
                .link
                .as_mut()
                .and_then(|l| l.outcomes.next().now_or_never())
            else {
                return;
            };
            match ready {
                Some(Ok(d)) => self.outcome(d).await,
                // The stream failed or ended: handled as if the loop had seen it.
                other => {
                    Box::pin(self.broker(BrokerWake::Outcome(other))).await;
                    return;
                }
            }
        }
    }

    /// Drops a broken session and schedules the first reconnect attempt. Every map run stays
    /// as it is; only what belonged to the session is let go.
    fn session_lost(&mut self, error: CoordinatorError) {
        let Some(link) = self.link.take() else {
            return;
        };
        link.close_in_background("coordinator reconnecting");
        // These deliveries' channel is gone, so they cannot be acked any more; the broker
        // redelivers them, and applying them again changes nothing. Their effects stay in
        // memory and reach the next checkpoint as usual.
        let dropped_acks = self.unacked.len();
        self.unacked.clear();
        self.connected.send_replace(false);
        metrics::gauge!(AMQP_CONNECTED).set(0.0);
        let wait = Backoff::COORDINATOR.delay_now(0);
        self.reconnect = Reconnect {
            attempt: 0,
            lost_at: Some(Instant::now()),
            next_at: Some(tokio::time::Instant::now() + wait),
            task: None,
        };
        warn!(
            error = %error,
            url = %amqp::redact_url(&self.amqp_url),
            unconfirmed_items = self.republish.len(),
            unacked_outcomes = dropped_acks,
            retry_in = ?wait,
            "lost the RabbitMQ session; keeping every map run and reconnecting"
        );
    }

    fn start_attempt(&mut self) {
        self.reconnect.next_at = None;
        self.reconnect.attempt += 1;
        info!(
            attempt = self.reconnect.attempt,
            url = %amqp::redact_url(&self.amqp_url),
            "reconnecting to RabbitMQ"
        );
        let url = self.amqp_url.clone();
        let topology = self.topology.clone();
        self.reconnect.task = Some(tokio::spawn(async move {
            Link::open_within(&url, &topology).await.map(Box::new)
        }));
    }

    fn attempt_failed(&mut self, error: Option<CoordinatorError>) {
        let wait = Backoff::COORDINATOR.delay_now(self.reconnect.attempt);
        self.reconnect.next_at = Some(tokio::time::Instant::now() + wait);
        let error = error.map_or_else(|| "the attempt's task died".to_owned(), |e| e.to_string());
        warn!(
            attempt = self.reconnect.attempt,
            url = %amqp::redact_url(&self.amqp_url),
            error = %error,
            retry_in = ?wait,
            "RabbitMQ reconnect attempt failed"
        );
    }

    /// A new session is up with the topology declared. Items the old one left unconfirmed
    /// are already queued in `republish`; the next dispatch sends them first.
    fn session_restored(&mut self, link: Link) {
        self.link = Some(link);
        self.connected.send_replace(true);
        metrics::gauge!(AMQP_CONNECTED).set(1.0);
        metrics::counter!(AMQP_RECONNECTS).increment(1);
        let down = self.reconnect.lost_at.map(|t| t.elapsed());
        info!(
            attempts = self.reconnect.attempt,
            down_for = ?down,
            url = %amqp::redact_url(&self.amqp_url),
            republish = self.republish.len(),
            "reconnected to RabbitMQ; topology declared, consumers restarted"
        );
        self.reconnect = Reconnect::default();
    }

    /// A long listing page is built here, rendered to JSON by the API and then freed: up to
    /// 1,000 runs or children, hundreds of kilobytes a page, which glibc keeps once freed.
    /// A dashboard or a script paging through listings would otherwise leave the heap at
    /// its largest page set for good (B5 measured ~8 KB per open run of it).
    fn trim_after_page<E>(&mut self, items: Result<usize, E>) {
        if items.is_ok_and(|n| n >= LARGE_PAGE) {
            self.trimmer.freed();
        }
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
                let r = self.list(status, &page);
                self.trim_after_page(r.as_ref().map(|p| p.items.len()));
                let _ = reply.send(r);
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
                let r = self.executions(&id, status, &page);
                self.trim_after_page(r.as_ref().map(|p| p.items.len()));
                let _ = reply.send(r);
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
        let mut run = MapRun::new(
            id.clone(),
            spec.label.clone(),
            spec.max_concurrency,
            spec.tolerance,
            now_ms(),
        )
        .with_retry(spec.retry.clone());
        if self.store.is_some() {
            run.log_records();
        }
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
                archived: false,
                segments: Vec::new(),
                record_segments: Vec::new(),
                next_record_seq: Cell::new(0),
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
            // Redriven before its reader had added every child: read the rest.
            if !e.run.reading() {
                return;
            }
        }
        self.read_items(id);
    }

    /// Reads the run's items in the background, handing it its children a stretch at a
    /// time (see [`ItemStretches`]), so the first child executions start after one footer
    /// read instead of after all of them.
    fn read_items(&mut self, id: &RunId) {
        let Some(e) = self.runs.get_mut(id) else {
            return;
        };
        e.run.start_reading();
        let source = e.spec.source.clone();
        let batcher = e.spec.batcher;
        // Parquet footers give each object's row count, so every child execution knows the
        // Map context Index of its first reading (and the ItemBatcher its row groups). Text
        // objects' row counts are unknown until read: their Index counts within each Source.
        let footers = e.spec.input_type == InputType::Parquet;
        let s3 = self.s3.clone();
        let mut out = ItemStretches::new(id.clone(), self.events_tx.clone());
        let readers = Arc::clone(&self.item_readers);
        let cancel = CancellationToken::new();
        if let Some(before) = self.readers.insert(id.clone(), cancel.clone()) {
            before.cancel();
        }
        tokio::spawn(async move {
            // Never closed, so acquiring fails only if the engine is gone.
            let Ok(_permit) = readers.acquire_owned().await else {
                return;
            };
            let uris = match read_items(&s3, &source).await {
                Ok(uris) => uris,
                Err(e) => return out.fail(e).await,
            };
            let mut planner = Planner::new(batcher);
            if footers {
                let mut layouts = std::pin::pin!(read_layouts(s3, uris));
                while let Some(f) = tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    f = layouts.next() => f,
                } {
                    planner.add(&f, &mut out.children);
                    if !out.flush_if_due().await {
                        return;
                    }
                }
            } else {
                for u in uris {
                    let f = FileLayout {
                        bucket: u.bucket,
                        key: u.key,
                        row_groups: None,
                    };
                    planner.add(&f, &mut out.children);
                }
            }
            out.finish().await;
        });
    }

    fn event(&mut self, ev: Event) {
        self.dirty = true;
        match ev {
            Event::ItemsRead {
                id,
                start,
                result,
                done,
            } => {
                let Some(e) = self.runs.get_mut(&id) else {
                    return;
                };
                if e.run.status() != RunStatus::Running || !e.run.reading() {
                    // Aborted (or failed) while its items were being read: a redrive reads
                    // the rest.
                    return;
                }
                match result {
                    Ok(mut children) => {
                        // A resumed reader plans from the first child again.
                        let held = e.run.execution_count() as usize;
                        children.drain(..held.saturating_sub(start).min(children.len()));
                        if start > held {
                            // Stretches arrive in order on one channel; a gap is a bug.
                            warn!(run = %id, start, held, "item reader skipped children");
                        }
                        let now = now_ms();
                        if !children.is_empty() {
                            e.run.add_children(children, now);
                            if !self.open.contains(&id) {
                                self.open.push(id.clone());
                            }
                        }
                        if done {
                            self.readers.remove(&id);
                            e.run.finish_reading(now);
                            info!(run = %id, children = e.run.execution_count(), "items read");
                            // The manifest, footers and stretches are freed.
                            self.trimmer.freed();
                            // An empty file set has nothing to run: settle at once.
                            self.settle(&id);
                        }
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
                self.trimmer.freed();
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
        e.archived = false;
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
        let n = e.run.execution_count();
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
    /// An item leaves `republish` (or its run's pending set) only once the broker confirms
    /// it; if the session dies first, every item it had not confirmed is queued in
    /// `republish` again and the session error is returned.
    async fn dispatch(&mut self) -> Result<(), CoordinatorError> {
        let Some(publish) = self.link.as_ref().map(|l| l.publish.clone()) else {
            return Ok(());
        };
        let mut pending = Vec::new();
        let sent = self.publish_due(&publish, &mut pending).await;
        if !pending.is_empty() {
            self.dirty = true;
        }
        if let Err(e) = sent {
            // Confirms still outstanding on a failed channel will never be trustworthy:
            // treat them all as lost.
            for p in pending {
                self.requeue(&p.run, &p.children);
            }
            return Err(e);
        }
        let mut lost = None;
        for p in pending {
            match p.confirm.await {
                Ok(c) if c.is_ack() => {}
                Ok(_) => {
                    warn!(run = %p.run, execution = p.children[0].0, children = p.children.len(), "item publish not confirmed; publishing again");
                    self.requeue(&p.run, &p.children);
                }
                Err(source) => {
                    debug!(run = %p.run, execution = p.children[0].0, error = %source, "item publish unconfirmed when the session died");
                    self.requeue(&p.run, &p.children);
                    lost.get_or_insert(CoordinatorError::Amqp {
                        what: "confirm item",
                        source,
                    });
                }
            }
        }
        lost.map_or(Ok(()), Err)
    }

    /// Queues children whose message may be lost to go out again, same attempt.
    fn requeue(&mut self, run: &RunId, children: &[(u32, u32)]) {
        self.republish.extend(
            children
                .iter()
                .map(|&(exec, attempt)| (run.clone(), exec, attempt)),
        );
    }

    /// Publishes `republish` first, then new executions round-robin, collecting confirms in
    /// `pending`. On a failed publish the items in hand go back to `republish`.
    async fn publish_due(
        &mut self,
        publish: &Channel,
        pending: &mut Vec<Unconfirmed>,
    ) -> Result<(), CoordinatorError> {
        let now = now_ms();
        // Sent again one by one: a rare path (a nack, a lost session), and a redelivered
        // child alone is the one a poison item needs.
        while let Some((id, exec, attempt)) = self.republish.pop_front() {
            // Skip what moved on meanwhile (an outcome arrived, the run was aborted): the
            // worker's answer for this attempt would be ignored anyway.
            let current = self.runs.get(&id).is_some_and(|e| {
                e.run.state(exec) == Some(ExecState::Running)
                    && e.run.attempt(exec) == Some(attempt)
            });
            if !current {
                continue;
            }
            let children = vec![(exec, attempt)];
            match self.publish_children(publish, &id, &children).await {
                Ok(Some(confirm)) => pending.push(Unconfirmed {
                    run: id,
                    children,
                    confirm,
                }),
                Ok(None) => {}
                Err(e) => {
                    self.republish.push_front((id, exec, attempt));
                    return Err(e);
                }
            }
        }
        'passes: while pending.len() < PUBLISH_BATCH && !self.open.is_empty() {
            let n = self.open.len();
            let start = self.rr % n;
            self.rr = self.rr.wrapping_add(1);
            let mut progressed = false;
            for k in 0..n {
                let id = self.open[(start + k) % n].clone();
                let Some(messages) = self.next_messages(&id, now) else {
                    continue;
                };
                progressed = true;
                // Marked running by `next_dispatch`: whatever is not published must go out
                // again.
                let mut messages = messages.into_iter();
                while let Some(children) = messages.next() {
                    match self.publish_children(publish, &id, &children).await {
                        Ok(Some(confirm)) => pending.push(Unconfirmed {
                            run: id.clone(),
                            children,
                            confirm,
                        }),
                        Ok(None) => {}
                        Err(e) => {
                            self.requeue(&id, &children);
                            for rest in messages {
                                self.requeue(&id, &rest);
                            }
                            return Err(e);
                        }
                    }
                }
                if pending.len() >= PUBLISH_BATCH {
                    break 'passes;
                }
            }
            if !progressed {
                break;
            }
        }
        Ok(())
    }

    /// The run's next message worth of children, marked running: one child, or up to
    /// `children_per_message` small ones (see [`PACKABLE_READINGS`]). A pack takes at most a
    /// quarter of the run's `MaxConcurrency` and of its children read so far, so a run's
    /// credit, and a small run's few children, still spread over several workers. (Not of
    /// the children waiting: with room in the window those are only what the reader found
    /// since the last dispatch, a few, and packs would never form while a run is read.)
    /// When the child after a pack is not small it is already running, so it comes back as
    /// a message of its own.
    fn next_messages(&mut self, id: &RunId, now: i64) -> Option<Vec<Vec<(u32, u32)>>> {
        let per_message = self.children_per_message;
        let run = &mut self.runs.get_mut(id)?.run;
        let first = run.next_dispatch(now)?;
        let quarter = |n: u64| usize::try_from(n / 4).unwrap_or(usize::MAX);
        let limit = per_message
            .min(quarter(run.window()))
            .min(quarter(run.counts().total));
        let packable = |run: &MapRun, exec: u32| {
            run.child(exec)
                .and_then(|c| c.items)
                .is_some_and(|n| n <= PACKABLE_READINGS)
        };
        let mut pack = vec![first];
        if limit < 2 || !packable(run, first.0) {
            return Some(vec![pack]);
        }
        while pack.len() < limit {
            let Some(next) = run.next_dispatch(now) else {
                break;
            };
            if !packable(run, next.0) {
                return Some(vec![pack, vec![next]]);
            }
            pack.push(next);
        }
        Some(vec![pack])
    }

    /// Publishes `children` of run `id` as one message: an [`ItemMessage`] for one, an
    /// [`ItemPack`] for more. `None` when there is nothing left to send.
    async fn publish_children(
        &mut self,
        publish: &Channel,
        id: &RunId,
        children: &[(u32, u32)],
    ) -> Result<Option<lapin::PublisherConfirm>, CoordinatorError> {
        let Some(e) = self.runs.get(id) else {
            return Ok(None);
        };
        let pack = ItemPack {
            run_id: id.0.clone(),
            input_type: e.spec.input_type,
            result: e.spec.results.clone(),
            analysis_time_ms: e.run.created_ms,
            thresholds: e.spec.thresholds,
            children: children
                .iter()
                .filter_map(|&(execution, attempt)| {
                    let child = e.run.child(execution)?;
                    Some(PackedChild {
                        execution,
                        attempt,
                        bucket: child.bucket.to_owned(),
                        key: child.key.to_owned(),
                        row_groups: child.row_groups,
                        first_index: child.first_index,
                    })
                })
                .collect(),
        };
        let encoded = match pack.items().next() {
            None => return Ok(None),
            // Alone, a child goes as the item every worker version reads.
            Some(one) if pack.children.len() == 1 => one.encode(),
            Some(_) => pack.encode(),
        };
        let body = encoded.map_err(|source| CoordinatorError::Encode {
            run: id.0.clone(),
            source,
        })?;
        let (execution, attempt) = children[0];
        let props = amqp::item_properties(&id.0, execution, attempt, children.len());
        let confirm = publish
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.topology.items_queue()),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .map_err(amqp_err("publish item"))?;
        debug!(run = %id, execution, attempt, children = children.len(), "item published");
        Ok(Some(confirm))
    }

    async fn outcome(&mut self, d: lapin::message::Delivery) {
        match decode_outcomes(&d.data) {
            Ok(outcomes) => {
                for o in &outcomes {
                    self.apply_outcome(o);
                }
                self.ack_when_durable(d.acker).await;
            }
            Err(err) => {
                warn!(error = %err, "undecodable outcome message rejected");
                let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
            }
        }
    }

    fn apply_outcome(&mut self, o: &OutcomeMessage) {
        let id = RunId(o.run_id.clone());
        match self.runs.get_mut(&id) {
            Some(e) => match e.run.apply_outcome(o, now_ms()) {
                Applied::Recorded => {
                    self.executions_finished += 1;
                    m::execution_finished(o);
                    self.settle(&id);
                }
                Applied::RetryScheduled { due_ms } => {
                    m::execution_finished(o);
                    debug!(run = %id, execution = o.execution, due_ms, "retry scheduled");
                }
                Applied::Ignored(why) => debug!(run = %id, why, "outcome ignored"),
            },
            None => warn!(run = %id, "outcome for an unknown map run dropped"),
        }
    }

    /// A message that took its workers down `delivery_limit` times. Workers split a pack
    /// they get a second time, so a dead-lettered pack is rare (a limit of 1); each of its
    /// children fails as a poison item would.
    async fn dead_item(&mut self, d: lapin::message::Delivery) {
        let refused = first_death_reason(&d).as_deref() == Some("rejected");
        match Items::decode(&d.data) {
            Ok(items) => {
                for item in items.into_items() {
                    self.dead_child(&item, refused);
                }
            }
            Err(err) => warn!(error = %err, "undecodable dead-lettered item dropped"),
        }
        self.ack_when_durable(d.acker).await;
    }

    /// Fails a dead-lettered child. `refused`: a worker rejected it rather than dying with
    /// it. Workers reject only what they cannot decode, and this coordinator wrote it, so
    /// that worker is of another version (an older one given a pack, during a rollout).
    fn dead_child(&mut self, item: &ItemMessage, refused: bool) {
        let id = RunId(item.run_id.clone());
        let cause = if refused {
            format!(
                "item {} was refused by a worker that could not decode it (a worker of \
                 another fleetmap version?) and was dead-lettered",
                item.source_uri()
            )
        } else {
            format!(
                "item {} was delivered {} times without an outcome (its workers crashed or \
                 were killed) and was dead-lettered",
                item.source_uri(),
                self.topology.delivery_limit
            )
        };
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

    /// Finishes a run that has nothing left to do: releases its open slot and writes results.
    fn settle(&mut self, id: &RunId) {
        let Some(e) = self.runs.get_mut(id) else {
            return;
        };
        if e.finalizing || !e.run.settle(now_ms()) {
            return;
        }
        e.finalizing = true;
        if let Some(reader) = self.readers.remove(id) {
            reader.cancel();
        }
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
                let _ = tx.send(Event::ResultsWritten { id: id2, result }).await;
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
        history: with_history.then(|| run.history(execution)),
    })
}

/// What the reconnect path relies on from the run state machine: an item published again
/// after a lost session (same execution, same attempt) may be answered twice, and its
/// outcomes or dead letter may arrive again — each changes the run at most once. And where
/// a checkpoint puts a run's children.
#[cfg(test)]
mod tests {
    use fleetmap_protocol::{AnomalyCounts, ItemStatus, OutcomeMessage, errors};

    use super::{MAX_SEGMENT_CHILDREN, SEGMENT_CHILDREN, budget_round, plan_segments};
    use crate::retry::{JitterStrategy, Retrier};
    use crate::run::{Applied, ChildSpec, MapRun, RunId, Tolerance};

    #[test]
    fn children_go_to_segments_once_read_or_many_and_inline_while_few() {
        type Spans = (Vec<(usize, usize)>, Option<(usize, usize)>);
        let plan = |unsaved: std::ops::Range<usize>, reading, all| -> Spans {
            let (segments, inline) = plan_segments(unsaved, reading, all);
            let span = |r: std::ops::Range<usize>| (r.start, r.end);
            (segments.into_iter().map(span).collect(), inline.map(span))
        };
        let (few, many) = (SEGMENT_CHILDREN - 1, SEGMENT_CHILDREN);
        assert_eq!(plan(7..7, true, true), (vec![], None), "all saved");
        assert_eq!(plan(0..few, true, false), (vec![], Some((0, few))));
        assert_eq!(plan(5..5 + many, true, false), (vec![(5, 5 + many)], None));
        assert_eq!(plan(0..3, false, false), (vec![(0, 3)], None), "read");
        assert_eq!(plan(0..3, true, true), (vec![(0, 3)], None), "archived");
        let (max, big) = (MAX_SEGMENT_CHILDREN, 2 * MAX_SEGMENT_CHILDREN + 1);
        assert_eq!(
            plan(1..1 + big, false, false).0,
            [(1, 1 + max), (1 + max, 1 + 2 * max), (1 + 2 * max, 1 + big)]
        );
    }

    #[test]
    fn a_burst_of_segments_is_written_a_budget_at_a_time() {
        let plans = || vec![vec![0..4, 4..6], vec![], vec![2..5]];
        assert_eq!(budget_round(plans(), 9), None, "9 fit in one checkpoint");
        assert_eq!(
            budget_round(plans(), 5),
            Some(vec![(0, 0..4), (0, 4..5)]),
            "the last range is cut at the budget"
        );
        assert_eq!(
            budget_round(plans(), 8),
            Some(vec![(0, 0..4), (0, 4..6), (2, 2..4)])
        );
    }

    fn run(children: u32, max_concurrency: u32, retry: Vec<Retrier>) -> MapRun {
        let mut r = MapRun::new(
            RunId("r".into()),
            None,
            max_concurrency,
            Tolerance::default(),
            0,
        )
        .with_retry(retry);
        let child = |i: u32| ChildSpec {
            bucket: "data".into(),
            key: format!("f{i}"),
            row_groups: None,
            first_index: u64::from(i) * 24,
            items: Some(24),
        };
        r.set_children((0..children).map(child).collect(), 0);
        r.open(0);
        r
    }

    fn outcome(execution: u32, attempt: u32, worker: &str, ok: bool) -> OutcomeMessage {
        OutcomeMessage {
            run_id: "r".into(),
            execution,
            attempt,
            worker_id: worker.into(),
            started_ms: 1,
            finished_ms: 2,
            bytes_read: 100,
            status: if ok {
                ItemStatus::Succeeded {
                    readings: 24,
                    anomalies: AnomalyCounts::default(),
                    devices: Vec::new(),
                    devices_truncated: false,
                    result_key: format!("analytics/r/{execution}.json"),
                }
            } else {
                ItemStatus::Failed {
                    error: errors::OBJECT_NOT_FOUND.into(),
                    cause: "gone".into(),
                }
            },
        }
    }

    #[test]
    fn republished_item_answered_twice_counts_once_and_frees_one_credit() {
        let mut r = run(3, 1, Vec::new());
        assert_eq!(r.next_dispatch(1), Some((0, 1)));
        // The session died before the confirm: (0, 1) goes out again and both copies run.
        assert_eq!(
            r.apply_outcome(&outcome(0, 1, "w1", true), 2),
            Applied::Recorded
        );
        assert!(matches!(
            r.apply_outcome(&outcome(0, 1, "w2", true), 3),
            Applied::Ignored(_)
        ));
        // The first outcome's ack was lost with the session too: redelivered, ignored.
        assert!(matches!(
            r.apply_outcome(&outcome(0, 1, "w1", true), 4),
            Applied::Ignored(_)
        ));
        // A copy that crashed its workers and was dead-lettered changes nothing either.
        assert!(matches!(
            r.apply_failure(0, 1, errors::RUNTIME, "dead".into(), 5),
            Applied::Ignored(_)
        ));
        let c = r.counts();
        assert_eq!((c.succeeded, c.running, c.pending, c.failed), (1, 0, 2, 0));
        assert_eq!(r.readings, 24);
        assert_eq!(r.executions_by_worker.values().sum::<u64>(), 1);
        // Exactly one credit came back: one more execution goes out, not two.
        assert_eq!(r.next_dispatch(6), Some((1, 1)));
        assert_eq!(r.next_dispatch(6), None);
    }

    #[test]
    fn duplicate_failure_does_not_schedule_a_second_retry() {
        let retry = vec![Retrier {
            error_equals: vec!["States.ALL".into()],
            interval_seconds: 1.0,
            max_attempts: 3,
            backoff_rate: 2.0,
            max_delay_seconds: None,
            jitter_strategy: JitterStrategy::None,
        }];
        let mut r = run(1, 1, retry);
        assert_eq!(r.next_dispatch(0), Some((0, 1)));
        assert_eq!(
            r.apply_outcome(&outcome(0, 1, "w1", false), 100),
            Applied::RetryScheduled { due_ms: 1100 }
        );
        assert!(matches!(
            r.apply_outcome(&outcome(0, 1, "w2", false), 150),
            Applied::Ignored(_)
        ));
        assert_eq!(r.next_due(), Some(1100));
        assert_eq!(r.next_dispatch(1100), Some((0, 2)));
        // A late success of the republished first attempt is stale now.
        assert!(matches!(
            r.apply_outcome(&outcome(0, 1, "w2", true), 1200),
            Applied::Ignored(_)
        ));
        assert_eq!(
            r.apply_outcome(&outcome(0, 2, "w1", true), 1300),
            Applied::Recorded
        );
        assert!(r.settle(1400));
        assert_eq!((r.counts().succeeded, r.readings), (1, 24));
    }
}
