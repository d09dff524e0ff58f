//! The map run state machine: pure, no I/O, no clock of its own.
//!
//! A run holds its child executions' states and the Step Functions counters, hands out the
//! next execution to dispatch while it has credits (`MaxConcurrency`), and applies outcomes
//! exactly once: an outcome for an execution that is not running *that attempt* is a
//! duplicate (a redelivery, or a late answer after an abort) and changes nothing. Times are
//! passed in as Unix milliseconds so tests can drive it without sleeping.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

use fleetmap_protocol::{AnomalyCounts, ItemStatus, OutcomeMessage, errors};
use serde::{Deserialize, Serialize};

use crate::retry::{self, Retrier};

/// Step Functions' `MaxConcurrency: 0` means "as many as possible", capped at 10,000.
pub const MAX_CONCURRENCY_CAP: u32 = 10_000;

/// A map run's id: unique, URL-safe, stable across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Waiting in the open-map-run backlog, or reading its items.
    Pending,
    Running,
    Succeeded,
    Failed,
    Aborted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "PENDING",
            RunStatus::Running => "RUNNING",
            RunStatus::Succeeded => "SUCCEEDED",
            RunStatus::Failed => "FAILED",
            RunStatus::Aborted => "ABORTED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Aborted
        )
    }
}

/// One child execution's input: a range of one object, as the item reader plans it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    pub bucket: String,
    pub key: String,
    pub row_groups: Option<(u32, u32)>,
    /// Map context `Index` of the first item (reading) of this child execution.
    pub first_index: u64,
    /// Items (readings) in this child execution, when the footer told us.
    pub items: Option<u64>,
}

impl ChildSpec {
    fn as_ref(&self) -> ChildRef<'_> {
        ChildRef {
            bucket: &self.bucket,
            key: &self.key,
            row_groups: self.row_groups,
            first_index: self.first_index,
            items: self.items,
        }
    }
}

/// One child execution's input as a run holds it: borrowed from the run's packed table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildRef<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub row_groups: Option<(u32, u32)>,
    pub first_index: u64,
    pub items: Option<u64>,
}

/// Child executions' inputs, packed. The coordinator holds every child of every open and
/// backlogged run, so a struct with two `String`s per child (~150 bytes) would dominate its
/// memory. Here a bucket is named once per run, each object's key is a slice of one
/// arena, and a child is 12 bytes plus its index and item count only where a run has them:
/// a run over 10,000 CSV-listed objects costs its keys' bytes plus 20 bytes a child.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Children {
    buckets: Vec<String>,
    /// Bucket of each object, when the run spans more than one (else all are bucket 0).
    object_buckets: Vec<u32>,
    /// Every object's key, concatenated in first-use order.
    keys: String,
    /// Where each object's key ends in `keys` (it starts where the previous one ends).
    key_ends: Vec<u64>,
    /// Per child: `(object, row group start, row group end)`, [`NONE32`] for no range.
    rows: Vec<(u32, u32, u32)>,
    /// Per child, when some child's first index is not 0 (else all are 0).
    first_index: Vec<u64>,
    /// Per child, [`NONE64`] where unknown; empty when no child's count is known.
    items: Vec<u64>,
}

const NONE32: u32 = u32::MAX;
const NONE64: u64 = u64::MAX;

impl Children {
    /// Packs `specs`, naming an object once per consecutive stretch of children that read it
    /// (the item reader emits a file's children together).
    fn pack(specs: Vec<ChildSpec>) -> Self {
        let mut c = Children::default();
        c.extend(specs);
        c.shrink_to_fit();
        c
    }

    /// Appends `specs` after the children already packed, as the item reader delivers a
    /// run's children a stretch at a time.
    fn extend(&mut self, specs: Vec<ChildSpec>) {
        self.reserve(specs.len());
        for s in &specs {
            self.push(s.as_ref());
        }
    }

    fn reserve(&mut self, n: usize) {
        self.rows.reserve(n);
        if !self.first_index.is_empty() {
            self.first_index.reserve(n);
        }
        if !self.items.is_empty() {
            self.items.reserve(n);
        }
    }

    /// Appends one child. A column that was left out because every child so far had the
    /// default (index 0, count unknown, one bucket) is filled in for them the first time a
    /// child needs it.
    fn push(&mut self, c: ChildRef<'_>) {
        let last = self.key_ends.len().checked_sub(1);
        let same = last.is_some_and(|o| {
            self.buckets.get(self.bucket_of(o)).map(String::as_str) == Some(c.bucket)
                && self.key(o) == Some(c.key)
        });
        if !same {
            let bucket = match self.buckets.iter().position(|b| b == c.bucket) {
                Some(b) => b,
                None => {
                    self.buckets.push(c.bucket.to_owned());
                    self.buckets.len() - 1
                }
            };
            if bucket != 0 || !self.object_buckets.is_empty() {
                self.object_buckets.resize(self.key_ends.len(), 0);
                self.object_buckets.push(bucket as u32);
            }
            self.keys.push_str(c.key);
            self.key_ends.push(self.keys.len() as u64);
        }
        let (rg_start, rg_end) = c.row_groups.unwrap_or((NONE32, NONE32));
        // A column is either empty (all default) or holds every child.
        if c.first_index != 0 || !self.first_index.is_empty() {
            self.first_index.resize(self.rows.len(), 0);
            self.first_index.push(c.first_index);
        }
        if c.items.is_some() || !self.items.is_empty() {
            self.items.resize(self.rows.len(), NONE64);
            self.items.push(c.items.unwrap_or(NONE64));
        }
        self.rows
            .push(((self.key_ends.len() - 1) as u32, rg_start, rg_end));
    }

    /// Children `range` as a table of their own, naming only the objects and buckets they
    /// read. Indices past the end are left out.
    fn slice(&self, range: std::ops::Range<usize>) -> Children {
        let mut c = Children::default();
        let range = range.start.min(self.len())..range.end.min(self.len());
        c.reserve(range.len());
        for i in range {
            if let Some(child) = self.get(i) {
                c.push(child);
            }
        }
        c.shrink_to_fit();
        c
    }

    /// Appends every child of `other`; the index of the first one that cannot be read (a
    /// damaged table) if any, with the children before it appended.
    fn append(&mut self, other: &Children) -> Result<(), usize> {
        self.reserve(other.len());
        for i in 0..other.len() {
            self.push(other.get(i).ok_or(i)?);
        }
        Ok(())
    }

    /// Gives back what growing by stretches over-allocated, once no more children come.
    fn shrink_to_fit(&mut self) {
        self.object_buckets.shrink_to_fit();
        self.keys.shrink_to_fit();
        self.key_ends.shrink_to_fit();
        self.rows.shrink_to_fit();
        self.first_index.shrink_to_fit();
        self.items.shrink_to_fit();
    }

    fn bucket_of(&self, object: usize) -> usize {
        self.object_buckets.get(object).copied().unwrap_or(0) as usize
    }

    /// An object's key; `None` only for offsets a damaged checkpoint could hold.
    fn key(&self, object: usize) -> Option<&str> {
        let start = match object {
            0 => 0,
            o => *self.key_ends.get(o - 1)? as usize,
        };
        let end = *self.key_ends.get(object)? as usize;
        self.keys.get(start..end)
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn get(&self, i: usize) -> Option<ChildRef<'_>> {
        let (object, rg_start, rg_end) = *self.rows.get(i)?;
        let object = object as usize;
        let bucket = self.object_buckets.get(object).copied().unwrap_or(0);
        Some(ChildRef {
            bucket: self.buckets.get(bucket as usize)?,
            key: self.key(object)?,
            row_groups: (rg_start != NONE32).then_some((rg_start, rg_end)),
            first_index: self.first_index.get(i).copied().unwrap_or(0),
            items: self.items.get(i).copied().filter(|&n| n != NONE64),
        })
    }

    /// Items per child, where known.
    fn items(&self) -> impl Iterator<Item = Option<u64>> + '_ {
        (0..self.len()).map(|i| self.items.get(i).copied().filter(|&n| n != NONE64))
    }
}

/// A stretch of a run's children, as the checkpoint keeps them: in an object of their own,
/// written once, since children never change after the item reader plans them (see
/// [`crate::state`]). Without that every checkpoint rewrote every open run's keys, 93 % of
/// its bytes at 10,000 children a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChildSegment(Children);

impl ChildSegment {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

/// Executions are numbered by `u32`: no run-length in a checkpoint may claim more.
const MAX_EXECUTIONS: u64 = u32::MAX as u64;

/// Appends a run of `n` copies of `value` read from a checkpoint, refusing one that would
/// take the list past [`MAX_EXECUTIONS`] before allocating for it.
fn push_run<T: Clone>(out: &mut Vec<T>, value: T, n: u64, what: &str) -> Result<(), String> {
    if out.len() as u64 + n > MAX_EXECUTIONS {
        return Err(format!("more than {MAX_EXECUTIONS} {what}"));
    }
    out.resize(out.len() + n as usize, value);
    Ok(())
}

/// Child execution states as one letter each in the checkpoint, a run of one state as its
/// letter and the run's length (`"S1200R4P8796"`): most of a big run sits in a few long
/// stretches, and every checkpoint carries every open run's states. A letter without a
/// length stands for one, which also reads state version 2's one letter per child.
mod state_letters {
    use super::{ExecState, push_run};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Write;

    fn letter(s: ExecState) -> char {
        match s {
            ExecState::Pending => 'P',
            ExecState::Running => 'R',
            ExecState::Succeeded => 'S',
            ExecState::Failed => 'F',
            ExecState::TimedOut => 'T',
            ExecState::Aborted => 'A',
        }
    }

    pub fn serialize<S: Serializer>(states: &[ExecState], s: S) -> Result<S::Ok, S::Error> {
        let mut text = String::new();
        for run in states.chunk_by(|a, b| a == b) {
            text.push(letter(run[0]));
            if run.len() > 1 {
                let _ = write!(text, "{}", run.len());
            }
        }
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ExecState>, D::Error> {
        use serde::de::Error;
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut states = Vec::new();
        let mut rest = text.as_ref();
        while let Some(c) = rest.chars().next() {
            let state = match c {
                'P' => ExecState::Pending,
                'R' => ExecState::Running,
                'S' => ExecState::Succeeded,
                'F' => ExecState::Failed,
                'T' => ExecState::TimedOut,
                'A' => ExecState::Aborted,
                other => {
                    return Err(D::Error::custom(format!(
                        "{other:?} is not a child execution state letter"
                    )));
                }
            };
            rest = &rest[c.len_utf8()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let n = match digits {
                0 => 1,
                _ => rest[..digits]
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        D::Error::custom(format!("{:?} is not a run length", &rest[..digits]))
                    })?,
            };
            rest = &rest[digits..];
            push_run(&mut states, state, n, "child execution states").map_err(D::Error::custom)?;
        }
        Ok(states)
    }
}

/// Attempt numbers in the checkpoint as runs, `"1*1200,0*8800"` (a number without `*n` is
/// one attempt), for the reason [`state_letters`] gives; reads state version 2's array too.
mod attempt_runs {
    use super::push_run;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt::{self, Write};

    pub fn serialize<S: Serializer>(attempts: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let mut text = String::new();
        for run in attempts.chunk_by(|a, b| a == b) {
            if !text.is_empty() {
                text.push(',');
            }
            let _ = write!(text, "{}", run[0]);
            if run.len() > 1 {
                let _ = write!(text, "*{}", run.len());
            }
        }
        s.serialize_str(&text)
    }

    struct Runs;

    impl<'de> Visitor<'de> for Runs {
        type Value = Vec<u32>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("attempt runs (\"1*20,0*5\") or an array of attempt numbers")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Vec<u32>, E> {
            let mut attempts = Vec::new();
            for token in text.split(',').filter(|t| !t.is_empty()) {
                let (value, n) = token.split_once('*').unwrap_or((token, "1"));
                let bad = || E::custom(format!("{token:?} is not an attempt run"));
                let value: u32 = value.parse().map_err(|_| bad())?;
                let n: u64 = n.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
                push_run(&mut attempts, value, n, "attempt numbers").map_err(E::custom)?;
            }
            Ok(attempts)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u32>, A::Error> {
            let mut attempts = Vec::new();
            while let Some(a) = seq.next_element()? {
                attempts.push(a);
            }
            Ok(attempts)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        d.deserialize_any(Runs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecState {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
}

impl ExecState {
    /// Succeeded, failed, timed out or aborted: what has a record.
    pub fn is_finished(self) -> bool {
        !matches!(self, ExecState::Pending | ExecState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecState::Pending => "PENDING",
            ExecState::Running => "RUNNING",
            ExecState::Succeeded => "SUCCEEDED",
            ExecState::Failed => "FAILED",
            ExecState::TimedOut => "TIMED_OUT",
            ExecState::Aborted => "ABORTED",
        }
    }
}

/// The Step Functions counters, as `DescribeMapRun` returns them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub aborted: u64,
    pub total: u64,
    pub results_written: u64,
    /// Failed executions that a redrive cannot re-run (none in fleetmap: all can).
    pub failures_not_redrivable: u64,
    /// Executions a redrive queued that have not been dispatched yet.
    pub pending_redrive: u64,
}

/// Failure tolerance (`ToleratedFailureCount` / `ToleratedFailurePercentage`); the run fails
/// when either is *exceeded*. Both unset means no failure is tolerated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub count: Option<u64>,
    pub percentage: Option<f64>,
}

impl Tolerance {
    pub fn exceeded(&self, failed: u64, total: u64) -> bool {
        if failed == 0 {
            return false;
        }
        let by_count = self.count.is_some_and(|c| failed > c);
        let by_pct = self
            .percentage
            .is_some_and(|p| total > 0 && (failed as f64) * 100.0 / (total as f64) > p);
        match (self.count, self.percentage) {
            (None, None) => true,
            _ => by_count || by_pct,
        }
    }
}

/// What happened to a child execution, in order (its "execution history").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecEvent {
    pub timestamp: String,
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readings: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<i64>,
}

/// Events kept per child execution; older ones are dropped (the count says how many).
pub const MAX_EVENTS_PER_EXECUTION: usize = 64;

/// The final record of one child execution, for ResultWriter and history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRecord {
    pub execution: u32,
    pub attempt: u32,
    pub state: ExecState,
    pub worker_id: Option<String>,
    /// When the attempt that finished was dispatched; with the rest of the record it
    /// rebuilds an ordinary history, which is then not stored (see [`MapRun::history`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub bytes_read: u64,
    pub readings: u64,
    pub anomalies: AnomalyCounts,
    pub result_key: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
}

/// What applying an outcome did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The outcome changed the run.
    Recorded,
    /// The execution failed and will be dispatched again at `due_ms` under the Retry policy.
    RetryScheduled { due_ms: i64 },
    /// Already applied, stale, or for an execution that is no longer running: ignored.
    Ignored(String),
}

/// Why a control request (abort, redrive) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Serializable as a whole: the coordinator's checkpoint is these structs as they are.
/// What is empty or zero is left out (since state version 4): a run waiting in the backlog
/// is mostly defaults, and every checkpoint carries every such run.
#[derive(Debug, Serialize, Deserialize)]
pub struct MapRun {
    pub id: RunId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    status: RunStatus,
    max_concurrency: u32,
    tolerance: Tolerance,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retry: Vec<Retrier>,
    /// Not serialised with the run: a checkpoint keeps children in [`ChildSegment`]s beside
    /// it, restored by [`MapRun::restore_children`]. Read when present, as state version 2
    /// wrote them inline.
    #[serde(default, skip_serializing)]
    children: Children,
    /// When the first children were planned: the time of every execution's
    /// `ExecutionQueued` (the reader's later stretches follow within its run time).
    queued_ms: i64,
    /// The item reader is still adding children: the run cannot finish yet, and its total
    /// is not final. Kept through an abort, so a redrive reads the rest.
    #[serde(default, skip_serializing_if = "is_default")]
    reading: bool,
    #[serde(with = "state_letters")]
    states: Vec<ExecState>,
    #[serde(with = "attempt_runs")]
    attempts: Vec<u32>,
    /// Next never-dispatched execution; everything before it has been dispatched once.
    cursor: usize,
    /// Executions a redrive made pending again, in order.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    redrive_queue: VecDeque<u32>,
    /// Failed executions waiting out a Retry delay: still RUNNING, still holding a credit.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    retry_wait: BTreeSet<(i64, u32)>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    waiting: HashMap<u32, i64>,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    retries_used: HashMap<u32, Vec<u32>>,
    counts: Counts,
    /// Not serialised with the run: a checkpoint keeps them in segment objects and inline
    /// beside it (see [`MapRun::log_records`]), restored by [`MapRun::restore_records`].
    /// Read when present, as state version 2 wrote them inline.
    #[serde(default, skip_serializing)]
    records: BTreeMap<u32, ExecRecord>,
    /// Executions whose record was written since the log was last trimmed, in order, while
    /// [`MapRun::log_records`] is on: what the next checkpoint must save.
    #[serde(skip)]
    record_log: Option<Vec<u32>>,
    /// Stored events, only for executions whose history [`MapRun::history`] cannot rebuild
    /// from the run and the record: running ones, and those that failed, retried, were
    /// redriven or aborted mid-flight. `ExecutionQueued` is never stored.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    history: HashMap<u32, Vec<ExecEvent>>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub redrive_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive_ms: Option<i64>,
    pub created_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub readings: u64,
    #[serde(default, skip_serializing_if = "is_default")]
    pub anomalies: AnomalyCounts,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub devices_with_anomalies: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub executions_by_worker: BTreeMap<String, u64>,
    seed: u64,
}

/// For `skip_serializing_if`: a zero, `false` or an all-zero struct is left out.
pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl MapRun {
    /// A new run, PENDING until [`MapRun::open`]. `children` may be empty until the item
    /// reader has run ([`MapRun::set_children`]).
    pub fn new(
        id: RunId,
        label: Option<String>,
        max_concurrency: u32,
        tolerance: Tolerance,
        now_ms: i64,
    ) -> Self {
        let seed = id.0.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        MapRun {
            id,
            label,
            status: RunStatus::Pending,
            max_concurrency,
            tolerance,
            retry: Vec::new(),
            children: Children::default(),
            queued_ms: now_ms,
            reading: false,
            states: Vec::new(),
            attempts: Vec::new(),
            cursor: 0,
            redrive_queue: VecDeque::new(),
            retry_wait: BTreeSet::new(),
            waiting: HashMap::new(),
            retries_used: HashMap::new(),
            counts: Counts::default(),
            records: BTreeMap::new(),
            record_log: None,
            history: HashMap::new(),
            redrive_count: 0,
            redrive_ms: None,
            created_ms: now_ms,
            start_ms: None,
            stop_ms: None,
            error: None,
            cause: None,
            readings: 0,
            anomalies: AnomalyCounts::default(),
            devices_with_anomalies: BTreeMap::new(),
            executions_by_worker: BTreeMap::new(),
            seed,
        }
    }

    pub fn with_retry(mut self, retry: Vec<Retrier>) -> Self {
        self.retry = retry;
        self
    }

    pub fn status(&self) -> RunStatus {
        self.status
    }

    pub fn counts(&self) -> Counts {
        Counts {
            pending_redrive: self.redrive_queue.len() as u64,
            ..self.counts
        }
    }

    /// `itemCounts`: like [`MapRun::counts`] but in items (readings) where the item reader
    /// knew each child's size; children of unknown size count as one item.
    pub fn item_counts(&self) -> Counts {
        let mut c = Counts::default();
        for (items, state) in self.children.items().zip(&self.states) {
            let n = items.unwrap_or(1);
            c.total += n;
            match state {
                ExecState::Pending => c.pending += n,
                ExecState::Running => c.running += n,
                ExecState::Succeeded => {
                    c.succeeded += n;
                    c.results_written += n;
                }
                ExecState::Failed => c.failed += n,
                ExecState::TimedOut => c.timed_out += n,
                ExecState::Aborted => c.aborted += n,
            }
        }
        c
    }

    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency
    }

    pub fn tolerance(&self) -> Tolerance {
        self.tolerance
    }

    pub fn set_tolerance(&mut self, tolerance: Tolerance) {
        self.tolerance = tolerance;
    }

    /// How many child executions the run has (0 until its items are read).
    pub fn execution_count(&self) -> u32 {
        self.children.len() as u32
    }

    pub fn child(&self, execution: u32) -> Option<ChildRef<'_>> {
        self.children.get(execution as usize)
    }

    pub fn state(&self, execution: u32) -> Option<ExecState> {
        self.states.get(execution as usize).copied()
    }

    pub fn attempt(&self, execution: u32) -> Option<u32> {
        self.attempts.get(execution as usize).copied()
    }

    pub fn records(&self) -> impl Iterator<Item = &ExecRecord> {
        self.records.values()
    }

    pub fn record(&self, execution: u32) -> Option<&ExecRecord> {
        self.records.get(&execution)
    }

    /// An execution's history: `ExecutionQueued`, then the stored events, or for an
    /// execution that went the ordinary way (dispatched once and succeeded, or aborted before
    /// dispatch) the same events rebuilt from its record. Storing those for every child would
    /// cost more than everything else the run holds.
    pub fn history(&self, execution: u32) -> Vec<ExecEvent> {
        if execution as usize >= self.states.len() {
            return Vec::new();
        }
        let mut h = vec![self.new_event(self.queued_ms, "ExecutionQueued", 0)];
        match (self.history.get(&execution), self.records.get(&execution)) {
            (Some(stored), _) => h.extend(stored.iter().cloned()),
            (None, Some(rec)) => h.extend(self.ordinary_history(rec)),
            (None, None) => {}
        }
        h
    }

    /// The events an execution that went the ordinary way has after `ExecutionQueued`.
    fn ordinary_history(&self, r: &ExecRecord) -> Vec<ExecEvent> {
        match r.state {
            ExecState::Succeeded => {
                let mut h = Vec::with_capacity(3);
                if let Some(at) = r.dispatched_ms {
                    h.push(self.new_event(at, "ExecutionDispatched", r.attempt));
                }
                let started = r.started_ms.unwrap_or_default();
                if r.worker_id.is_some() {
                    let mut e = self.new_event(started, "ExecutionStarted", r.attempt);
                    e.worker.clone_from(&r.worker_id);
                    h.push(e);
                }
                let finished = r.finished_ms.unwrap_or_default();
                let mut e = self.new_event(finished, "ExecutionSucceeded", r.attempt);
                e.worker.clone_from(&r.worker_id);
                e.bytes_read = Some(r.bytes_read);
                e.readings = Some(r.readings);
                h.push(e);
                h
            }
            ExecState::Aborted if r.attempt == 0 => {
                vec![self.new_event(r.finished_ms.unwrap_or_default(), "ExecutionAborted", 0)]
            }
            _ => Vec::new(),
        }
    }

    /// Drops an execution's stored events once its record rebuilds exactly the same.
    fn forget_ordinary_history(&mut self, execution: u32) {
        let (Some(stored), Some(rec)) =
            (self.history.get(&execution), self.records.get(&execution))
        else {
            return;
        };
        if *stored == self.ordinary_history(rec) {
            self.history.remove(&execution);
        }
    }

    /// When the execution's current attempt was dispatched, from its stored events.
    fn dispatched_ms(&self, execution: u32) -> Option<i64> {
        let e = self
            .history
            .get(&execution)?
            .iter()
            .rev()
            .find(|e| e.kind == "ExecutionDispatched")?;
        chrono::DateTime::parse_from_rfc3339(&e.timestamp)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The effective credit window: 0 means the Step Functions cap.
    pub fn window(&self) -> u64 {
        match self.max_concurrency {
            0 => u64::from(MAX_CONCURRENCY_CAP),
            n => u64::from(n.min(MAX_CONCURRENCY_CAP)),
        }
    }

    pub fn set_max_concurrency(&mut self, n: u32) {
        self.max_concurrency = n;
    }

    pub fn set_children(&mut self, children: Vec<ChildSpec>, now_ms: i64) {
        let n = children.len();
        self.children = Children::pack(children);
        self.queued_ms = now_ms;
        self.states = vec![ExecState::Pending; n];
        self.attempts = vec![0; n];
        self.cursor = 0;
        self.redrive_queue.clear();
        self.counts = Counts {
            pending: n as u64,
            total: n as u64,
            ..Counts::default()
        };
        self.history.clear();
        self.records.clear();
        if let Some(log) = &mut self.record_log {
            log.clear();
        }
        self.reading = false;
    }

    /// Children `range` (clamped to those planned) as a segment for the checkpoint.
    pub fn children_segment(&self, range: std::ops::Range<usize>) -> ChildSegment {
        ChildSegment(self.children.slice(range))
    }

    /// After a run is read back from a checkpoint: appends its children's segments, in
    /// order, and checks they are one per child execution the run holds.
    pub fn restore_children(
        &mut self,
        segments: impl IntoIterator<Item = ChildSegment>,
    ) -> Result<(), String> {
        for s in segments {
            if self.children.len() == 0 {
                self.children = s.0;
            } else if let Err(i) = self.children.append(&s.0) {
                return Err(format!(
                    "child {} of a segment starting at {} is damaged",
                    i,
                    self.children.len() - i
                ));
            }
        }
        if self.children.len() != self.states.len() || self.attempts.len() != self.states.len() {
            return Err(format!(
                "holds {} children, {} states and {} attempt numbers; they must agree",
                self.children.len(),
                self.states.len(),
                self.attempts.len()
            ));
        }
        Ok(())
    }

    fn insert_record(&mut self, record: ExecRecord) {
        if let Some(log) = &mut self.record_log {
            log.push(record.execution);
        }
        self.records.insert(record.execution, record);
    }

    /// Logs the executions whose record is written from now on, for a coordinator that
    /// checkpoints: records never change once written (a redrive removes a failed one and
    /// a new one comes), so a checkpoint saves only those logged since its last segment.
    pub fn log_records(&mut self) {
        self.record_log.get_or_insert_with(Vec::new);
    }

    /// How many record writes are logged.
    pub fn record_log_len(&self) -> usize {
        self.record_log.as_ref().map_or(0, Vec::len)
    }

    /// The records written by the first `n` logged writes, once each, by execution; a
    /// record a redrive has removed since is left out.
    pub fn logged_records(&self, n: usize) -> Vec<&ExecRecord> {
        let Some(log) = &self.record_log else {
            return Vec::new();
        };
        let executions: BTreeSet<u32> = log.iter().take(n).copied().collect();
        executions
            .iter()
            .filter_map(|e| self.records.get(e))
            .collect()
    }

    /// Forgets the first `n` logged writes: their records are in a durable segment.
    pub fn trim_record_log(&mut self, n: usize) {
        if let Some(log) = &mut self.record_log {
            log.drain(..n.min(log.len()));
            if log.capacity() > 4 * log.len().max(64) {
                log.shrink_to_fit();
            }
        }
    }

    /// After a run is read back from a checkpoint: its records, those of segments in the
    /// order written, then the inline ones (a later record of an execution wins). Only a
    /// finished execution has one, so a record whose execution is no longer finished (a
    /// redrive made it pending after that record was saved) is dropped. Turns
    /// [`MapRun::log_records`] on, and logs the inline records (and those state version 2
    /// held in the run) again, as no segment holds them yet.
    pub fn restore_records(
        &mut self,
        segments: impl IntoIterator<Item = ExecRecord>,
        inline: impl IntoIterator<Item = ExecRecord>,
    ) {
        let held = std::mem::take(&mut self.records);
        self.log_records();
        for r in segments {
            self.records.insert(r.execution, r);
        }
        for r in held.into_values().chain(inline) {
            self.insert_record(r);
        }
        let states = &self.states;
        self.records
            .retain(|&e, _| states.get(e as usize).is_some_and(|s| s.is_finished()));
    }

    /// The item reader starts (or, after a restart or a redrive, resumes) adding children
    /// with [`MapRun::add_children`].
    pub fn start_reading(&mut self) {
        self.reading = true;
    }

    /// True while the item reader may still add children.
    pub fn reading(&self) -> bool {
        self.reading
    }

    /// Appends the next stretch of planned children, pending, after those already held.
    pub fn add_children(&mut self, children: Vec<ChildSpec>, now_ms: i64) {
        if self.states.is_empty() {
            self.queued_ms = now_ms;
        }
        let n = children.len();
        self.children.extend(children);
        self.states
            .resize(self.states.len() + n, ExecState::Pending);
        self.attempts.resize(self.attempts.len() + n, 0);
        self.counts.pending += n as u64;
        self.counts.total += n as u64;
    }

    /// The item reader has added every child: the total is final, so a tolerated failure
    /// percentage can be judged, and the run can finish once nothing is left to run.
    pub fn finish_reading(&mut self, now_ms: i64) {
        self.reading = false;
        self.children.shrink_to_fit();
        self.states.shrink_to_fit();
        self.attempts.shrink_to_fit();
        self.check_tolerance(now_ms);
    }

    /// Admitted: starts dispatching.
    pub fn open(&mut self, now_ms: i64) {
        if self.status == RunStatus::Pending {
            self.status = RunStatus::Running;
            if self.start_ms.is_none() {
                self.start_ms = Some(now_ms);
            }
        }
    }

    /// Fails a run that never got going (its item reader failed).
    pub fn fail(&mut self, error: &str, cause: String, now_ms: i64) {
        self.abort_unfinished(now_ms);
        self.status = RunStatus::Failed;
        self.error = Some(error.to_owned());
        self.cause = Some(cause);
        self.stop_ms = Some(now_ms);
    }

    /// Writing the ResultWriter output failed: the run fails even if every child succeeded,
    /// because its declared output does not exist.
    pub fn result_writer_failed(&mut self, cause: String) {
        self.status = RunStatus::Failed;
        self.error = Some(errors::RESULT_WRITER_FAILED.to_owned());
        self.cause = Some(cause);
    }

    /// A user's abort: stops dispatching, aborts pending and running executions.
    pub fn abort(&mut self, now_ms: i64) -> Result<(), Refused> {
        if self.status.is_terminal() {
            return Err(Refused(format!(
                "map run {} is already {}",
                self.id,
                self.status.as_str()
            )));
        }
        self.abort_unfinished(now_ms);
        self.status = RunStatus::Aborted;
        self.cause = Some("aborted by request".into());
        self.stop_ms = Some(now_ms);
        Ok(())
    }

    /// `RedriveExecution`: re-runs only the failed, timed-out and aborted child executions;
    /// succeeded ones keep their results. The run goes back to PENDING for admission.
    /// Returns how many executions were queued again.
    pub fn redrive(&mut self, now_ms: i64) -> Result<u64, Refused> {
        if !matches!(self.status, RunStatus::Failed | RunStatus::Aborted) {
            return Err(Refused(format!(
                "map run {} is {}: only FAILED or ABORTED runs can be redriven",
                self.id,
                self.status.as_str()
            )));
        }
        let mut n = 0;
        for i in 0..self.states.len() {
            if matches!(
                self.states[i],
                ExecState::Failed | ExecState::TimedOut | ExecState::Aborted
            ) {
                self.states[i] = ExecState::Pending;
                // The record goes; keep the events it stood for (an abort before dispatch).
                if !self.history.contains_key(&(i as u32))
                    && let Some(rec) = self.records.get(&(i as u32))
                {
                    let h = self.ordinary_history(rec);
                    if !h.is_empty() {
                        self.history.insert(i as u32, h);
                    }
                }
                self.records.remove(&(i as u32));
                self.retries_used.remove(&(i as u32));
                self.redrive_queue.push_back(i as u32);
                let attempt = self.attempts[i];
                self.event(i as u32, now_ms, "ExecutionRedriven", attempt, None);
                n += 1;
            }
        }
        self.counts.pending += n;
        self.counts.failed = 0;
        self.counts.timed_out = 0;
        self.counts.aborted = 0;
        self.redrive_count += 1;
        self.redrive_ms = Some(now_ms);
        self.status = RunStatus::Pending;
        self.error = None;
        self.cause = None;
        self.stop_ms = None;
        Ok(n)
    }

    /// When the earliest Retry wait ends, if any.
    pub fn next_due(&self) -> Option<i64> {
        self.retry_wait.first().map(|(due, _)| *due)
    }

    /// The next execution to publish, if the run is open and has a free credit (or a retry
    /// is due — a retrying execution keeps its credit). Marks it running; the caller must
    /// publish it (or call [`MapRun::undispatch`]).
    pub fn next_dispatch(&mut self, now_ms: i64) -> Option<(u32, u32)> {
        if self.status != RunStatus::Running {
            return None;
        }
        if let Some(&(due, i)) = self.retry_wait.first()
            && due <= now_ms
        {
            self.retry_wait.pop_first();
            self.waiting.remove(&i);
            let idx = i as usize;
            self.attempts[idx] += 1;
            let attempt = self.attempts[idx];
            self.event(i, now_ms, "ExecutionDispatched", attempt, None);
            return Some((i, attempt));
        }
        if self.counts.running >= self.window() {
            return None;
        }
        let i = if let Some(i) = self.redrive_queue.pop_front() {
            i as usize
        } else {
            // Skip anything a redrive or abort already moved on.
            while self.cursor < self.states.len() && self.states[self.cursor] != ExecState::Pending
            {
                self.cursor += 1;
            }
            if self.cursor >= self.states.len() {
                return None;
            }
            self.cursor += 1;
            self.cursor - 1
        };
        self.states[i] = ExecState::Running;
        self.attempts[i] += 1;
        self.counts.pending -= 1;
        self.counts.running += 1;
        let attempt = self.attempts[i];
        self.event(i as u32, now_ms, "ExecutionDispatched", attempt, None);
        Some((i as u32, attempt))
    }

    /// Returns an execution to pending when its publish was refused, so it is sent again.
    pub fn undispatch(&mut self, execution: u32) {
        let i = execution as usize;
        if self.states.get(i) == Some(&ExecState::Running) && !self.waiting.contains_key(&execution)
        {
            self.states[i] = ExecState::Pending;
            self.attempts[i] -= 1;
            self.counts.running -= 1;
            self.counts.pending += 1;
            self.redrive_queue.push_front(execution);
        }
    }

    /// Applies a worker's outcome once.
    pub fn apply_outcome(&mut self, o: &OutcomeMessage, now_ms: i64) -> Applied {
        let i = o.execution as usize;
        match (self.states.get(i), self.attempts.get(i)) {
            (Some(ExecState::Running), Some(&a))
                if a == o.attempt && !self.waiting.contains_key(&o.execution) => {}
            (Some(state), Some(&a)) => {
                return Applied::Ignored(format!(
                    "execution {} attempt {} is {state:?} at attempt {a}",
                    o.execution, o.attempt
                ));
            }
            _ => {
                return Applied::Ignored(format!(
                    "execution {} does not exist in run {}",
                    o.execution, self.id
                ));
            }
        }
        let worker = (o.worker_id != COORDINATOR).then(|| o.worker_id.clone());
        if let Some(w) = &worker {
            *self.executions_by_worker.entry(w.clone()).or_default() += 1;
        }
        if let Some(w) = &worker {
            let mut e = self.new_event(o.started_ms, "ExecutionStarted", o.attempt);
            e.worker = Some(w.clone());
            self.push_event(o.execution, e);
        }
        let mut record = ExecRecord {
            execution: o.execution,
            attempt: o.attempt,
            state: ExecState::Succeeded,
            worker_id: worker.clone(),
            dispatched_ms: self.dispatched_ms(o.execution),
            started_ms: Some(o.started_ms),
            finished_ms: Some(o.finished_ms),
            bytes_read: o.bytes_read,
            readings: 0,
            anomalies: AnomalyCounts::default(),
            result_key: None,
            error: None,
            cause: None,
        };
        match &o.status {
            ItemStatus::Succeeded {
                readings,
                anomalies,
                devices,
                result_key,
                ..
            } => {
                let mut e = self.new_event(o.finished_ms, "ExecutionSucceeded", o.attempt);
                e.worker = worker;
                e.bytes_read = Some(o.bytes_read);
                e.readings = Some(*readings);
                self.push_event(o.execution, e);
                record.readings = *readings;
                record.anomalies = *anomalies;
                record.result_key = Some(result_key.clone());
                self.readings += readings;
                self.anomalies.add(anomalies);
                for d in devices {
                    *self
                        .devices_with_anomalies
                        .entry(d.deviceid.clone())
                        .or_default() += d.readings_with_anomalies;
                }
                self.finish_exec(i, record, now_ms);
                Applied::Recorded
            }
            ItemStatus::Failed { error, cause } => {
                let timed_out = error == errors::TIMEOUT;
                let kind = if timed_out {
                    "ExecutionTimedOut"
                } else {
                    "ExecutionFailed"
                };
                let mut e = self.new_event(o.finished_ms.max(o.started_ms), kind, o.attempt);
                e.worker = worker;
                e.bytes_read = Some(o.bytes_read);
                e.error = Some(error.clone());
                e.cause = Some(cause.clone());
                self.push_event(o.execution, e);
                if let Some(due_ms) = self.schedule_retry(o.execution, error, now_ms) {
                    return Applied::RetryScheduled { due_ms };
                }
                record.state = if timed_out {
                    ExecState::TimedOut
                } else {
                    ExecState::Failed
                };
                record.error = Some(error.clone());
                record.cause = Some(cause.clone());
                self.finish_exec(i, record, now_ms);
                Applied::Recorded
            }
        }
    }

    /// Records a failure that did not come from a worker's outcome (a dead-lettered item).
    pub fn apply_failure(
        &mut self,
        execution: u32,
        attempt: u32,
        error: &str,
        cause: String,
        now_ms: i64,
    ) -> Applied {
        let o = OutcomeMessage {
            run_id: self.id.0.clone(),
            execution,
            attempt,
            worker_id: COORDINATOR.into(),
            started_ms: now_ms,
            finished_ms: now_ms,
            bytes_read: 0,
            status: ItemStatus::Failed {
                error: error.to_owned(),
                cause,
            },
        };
        self.apply_outcome(&o, now_ms)
    }

    fn schedule_retry(&mut self, execution: u32, error: &str, now_ms: i64) -> Option<i64> {
        if self.retry.is_empty() || self.status != RunStatus::Running {
            return None;
        }
        let used = self.retries_used.entry(execution).or_default();
        let which = retry::choose(&self.retry, error, used)?;
        if used.len() <= which {
            used.resize(which + 1, 0);
        }
        used[which] += 1;
        let n = used[which];
        let attempt = self.attempts[execution as usize];
        let u = retry::unit_draw(self.seed, execution, attempt);
        let delay = self.retry[which].delay_ms(n, u);
        let due = now_ms + delay;
        self.retry_wait.insert((due, execution));
        self.waiting.insert(execution, due);
        let mut e = self.new_event(now_ms, "ExecutionRetryScheduled", attempt);
        e.retry_in_ms = Some(delay);
        e.error = Some(error.to_owned());
        self.push_event(execution, e);
        Some(due)
    }

    fn finish_exec(&mut self, i: usize, record: ExecRecord, now_ms: i64) {
        self.counts.running -= 1;
        match record.state {
            ExecState::Succeeded => {
                self.counts.succeeded += 1;
                self.counts.results_written += 1;
            }
            ExecState::TimedOut => self.counts.timed_out += 1,
            _ => self.counts.failed += 1,
        }
        self.states[i] = record.state;
        self.retries_used.remove(&record.execution);
        let execution = record.execution;
        self.insert_record(record);
        self.forget_ordinary_history(execution);
        self.check_tolerance(now_ms);
    }

    /// Fails the run once its failures exceed the tolerance. While the item reader is still
    /// adding children the total is not known, so only a count limit can be exceeded then:
    /// judging a percentage against the children read so far would fail a run for its
    /// first failure.
    fn check_tolerance(&mut self, now_ms: i64) {
        let failures = self.counts.failed + self.counts.timed_out;
        let exceeded = if self.reading && self.tolerance.percentage.is_some() {
            self.tolerance.count.is_some_and(|c| failures > c)
        } else {
            self.tolerance.exceeded(failures, self.counts.total)
        };
        if self.status == RunStatus::Running && exceeded {
            self.status = RunStatus::Failed;
            self.error = Some(errors::EXCEED_TOLERATED_FAILURE_THRESHOLD.to_owned());
            self.cause = Some(format!(
                "{failures} of {} child executions failed, more than the tolerated {}",
                self.counts.total,
                self.describe_tolerance()
            ));
            self.abort_unfinished(now_ms);
        }
    }

    fn describe_tolerance(&self) -> String {
        match (self.tolerance.count, self.tolerance.percentage) {
            (None, None) => "0".into(),
            (Some(c), None) => format!("count {c}"),
            (None, Some(p)) => format!("{p}%"),
            (Some(c), Some(p)) => format!("count {c} / {p}%"),
        }
    }

    fn abort_unfinished(&mut self, now_ms: i64) {
        for i in 0..self.states.len() {
            if !self.states[i].is_finished() {
                self.states[i] = ExecState::Aborted;
                let attempt = self.attempts[i];
                // Never dispatched and nothing stored: the record alone rebuilds the history,
                // so aborting a million pending children allocates no history for them.
                if self.history.contains_key(&(i as u32)) || attempt > 0 {
                    self.event(i as u32, now_ms, "ExecutionAborted", attempt, None);
                }
                self.insert_record(ExecRecord {
                    execution: i as u32,
                    attempt,
                    state: ExecState::Aborted,
                    worker_id: None,
                    dispatched_ms: None,
                    started_ms: None,
                    finished_ms: Some(now_ms),
                    bytes_read: 0,
                    readings: 0,
                    anomalies: AnomalyCounts::default(),
                    result_key: None,
                    error: None,
                    cause: None,
                });
            }
        }
        self.counts.aborted += self.counts.pending + self.counts.running;
        self.counts.pending = 0;
        self.counts.running = 0;
        self.redrive_queue.clear();
        self.retry_wait.clear();
        self.waiting.clear();
        self.cursor = self.states.len();
    }

    fn new_event(&self, at_ms: i64, kind: &'static str, attempt: u32) -> ExecEvent {
        ExecEvent {
            timestamp: iso(at_ms),
            kind: Cow::Borrowed(kind),
            attempt,
            worker: None,
            bytes_read: None,
            readings: None,
            error: None,
            cause: None,
            retry_in_ms: None,
        }
    }

    fn event(
        &mut self,
        execution: u32,
        at_ms: i64,
        kind: &'static str,
        attempt: u32,
        worker: Option<String>,
    ) {
        let mut e = self.new_event(at_ms, kind, attempt);
        e.worker = worker;
        self.push_event(execution, e);
    }

    fn push_event(&mut self, execution: u32, e: ExecEvent) {
        let h = self.history.entry(execution).or_default();
        // `ExecutionQueued`, never stored, is the first of the MAX kept.
        if h.len() >= MAX_EVENTS_PER_EXECUTION - 1 {
            h.remove(0);
        }
        h.push(e);
    }

    /// Once nothing is pending or running, decides the run's final status. Returns true when
    /// the run has just become terminal (or already was).
    pub fn settle(&mut self, now_ms: i64) -> bool {
        if self.status.is_terminal() {
            if self.stop_ms.is_none() {
                self.stop_ms = Some(now_ms);
            }
            return true;
        }
        if self.status != RunStatus::Running
            || self.reading
            || self.counts.pending + self.counts.running > 0
        {
            return false;
        }
        self.status = RunStatus::Succeeded;
        self.stop_ms = Some(now_ms);
        true
    }
}

/// The worker id recorded for failures the coordinator itself decided (dead letters).
pub const COORDINATOR: &str = "coordinator";

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmap_protocol::DeviceAnomalies;

    fn child(i: u32) -> ChildSpec {
        ChildSpec {
            bucket: "data".into(),
            key: format!("f{i}"),
            row_groups: None,
            first_index: 0,
            items: Some(24),
        }
    }

    fn run(n: u32, max_concurrency: u32, tolerance: Tolerance) -> MapRun {
        let mut r = MapRun::new(RunId("r".into()), None, max_concurrency, tolerance, 0);
        r.set_children((0..n).map(child).collect(), 0);
        r.open(1);
        r
    }

    #[test]
    fn a_waiting_run_leaves_its_empty_fields_out_of_the_checkpoint() {
        let fresh = MapRun::new(RunId("r".into()), None, 10, Tolerance::default(), 5);
        let json = serde_json::to_value(&fresh).unwrap();
        let written: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        for absent in [
            "label",
            "retry",
            "history",
            "waiting",
            "retry_wait",
            "retries_used",
            "redrive_queue",
            "anomalies",
            "readings",
            "executions_by_worker",
            "devices_with_anomalies",
            "start_ms",
            "error",
        ] {
            assert!(!written.contains(&absent), "{absent} written: {json}");
        }
        assert!(json.to_string().len() < 400, "{json}");
        // Read back, it is the same run, and a run with everything set keeps it all.
        let back: MapRun = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        let mut busy = run(3, 2, Tolerance::default());
        busy.next_dispatch(2);
        busy.apply_outcome(&ok(0, 1, 24), 3);
        let json = serde_json::to_value(&busy).unwrap();
        let back: MapRun = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(back.counts(), busy.counts());
        assert_eq!(back.readings, 24);
    }

    fn ok(execution: u32, attempt: u32, readings: u64) -> OutcomeMessage {
        OutcomeMessage {
            run_id: "r".into(),
            execution,
            attempt,
            worker_id: "w1".into(),
            started_ms: 1,
            finished_ms: 2,
            bytes_read: 10,
            status: ItemStatus::Succeeded {
                readings,
                anomalies: AnomalyCounts {
                    temperature_spike: 1,
                    humidity_anomaly: 0,
                    low_battery: 0,
                    readings_with_anomalies: 1,
                },
                devices: vec![DeviceAnomalies {
                    deviceid: "sensor-001".into(),
                    readings_with_anomalies: 1,
                }],
                devices_truncated: false,
                result_key: format!("k{execution}"),
            },
        }
    }

    fn failed(execution: u32, attempt: u32) -> OutcomeMessage {
        OutcomeMessage {
            status: ItemStatus::Failed {
                error: errors::OBJECT_NOT_FOUND.into(),
                cause: "gone".into(),
            },
            ..ok(execution, attempt, 0)
        }
    }

    fn drain(r: &mut MapRun) -> Vec<(u32, u32)> {
        drain_at(r, 1)
    }

    fn drain_at(r: &mut MapRun, now: i64) -> Vec<(u32, u32)> {
        std::iter::from_fn(|| r.next_dispatch(now)).collect()
    }

    #[test]
    fn pending_run_dispatches_nothing_until_opened() {
        let mut r = MapRun::new(RunId("r".into()), None, 2, Tolerance::default(), 0);
        r.set_children(vec![child(0)], 0);
        assert_eq!(r.next_dispatch(1), None);
        r.open(5);
        assert_eq!(r.next_dispatch(1), Some((0, 1)));
        assert_eq!(r.start_ms, Some(5));
    }

    #[test]
    fn max_concurrency_bounds_in_flight_executions() {
        let mut r = run(5, 2, Tolerance::default());
        assert_eq!(drain(&mut r), [(0, 1), (1, 1)]);
        assert_eq!(r.apply_outcome(&ok(0, 1, 24), 1), Applied::Recorded);
        assert_eq!(drain(&mut r), [(2, 1)]);
        r.set_max_concurrency(4);
        assert_eq!(drain(&mut r), [(3, 1), (4, 1)]);
        assert_eq!(r.counts().running, 4);
        assert_eq!(r.counts().pending, 0);
    }

    #[test]
    fn zero_max_concurrency_means_the_step_functions_cap() {
        let mut r = run(3, 0, Tolerance::default());
        assert_eq!(r.window(), 10_000);
        assert_eq!(drain(&mut r).len(), 3);
    }

    #[test]
    fn duplicate_and_stale_outcomes_are_ignored() {
        let mut r = run(2, 2, Tolerance::default());
        drain(&mut r);
        assert_eq!(r.apply_outcome(&ok(0, 1, 24), 1), Applied::Recorded);
        assert!(matches!(
            r.apply_outcome(&ok(0, 1, 24), 1),
            Applied::Ignored(_)
        ));
        assert!(matches!(
            r.apply_outcome(&ok(1, 2, 24), 1),
            Applied::Ignored(_)
        ));
        assert!(matches!(
            r.apply_outcome(&ok(9, 1, 24), 1),
            Applied::Ignored(_)
        ));
        assert_eq!(r.readings, 24);
        assert_eq!(r.counts().succeeded, 1);
        assert_eq!(r.devices_with_anomalies["sensor-001"], 1);
    }

    #[test]
    fn all_succeeded_settles_to_succeeded() {
        let mut r = run(2, 10, Tolerance::default());
        drain(&mut r);
        r.apply_outcome(&ok(0, 1, 24), 1);
        assert!(!r.settle(3));
        r.apply_outcome(&ok(1, 1, 24), 1);
        assert!(r.settle(3));
        assert_eq!(r.status(), RunStatus::Succeeded);
        let c = r.counts();
        assert_eq!((c.succeeded, c.total, c.results_written), (2, 2, 2));
        assert_eq!(r.executions_by_worker["w1"], 2);
    }

    #[test]
    fn one_failure_fails_a_run_without_tolerance_and_aborts_the_rest() {
        let mut r = run(4, 2, Tolerance::default());
        drain(&mut r);
        r.apply_outcome(&failed(0, 1), 1);
        assert_eq!(r.status(), RunStatus::Failed);
        assert_eq!(
            r.error.as_deref(),
            Some(errors::EXCEED_TOLERATED_FAILURE_THRESHOLD)
        );
        let c = r.counts();
        assert_eq!((c.failed, c.aborted, c.pending, c.running), (1, 3, 0, 0));
        assert_eq!(r.next_dispatch(1), None);
        assert!(matches!(
            r.apply_outcome(&ok(1, 1, 24), 1),
            Applied::Ignored(_)
        ));
        assert!(r.settle(9));
        assert_eq!(r.stop_ms, Some(9));
    }

    #[test]
    fn tolerance_is_exceeded_only_past_the_limit() {
        let t = Tolerance {
            count: None,
            percentage: Some(20.0),
        };
        assert!(!t.exceeded(2, 10));
        assert!(t.exceeded(3, 10));
        let t = Tolerance {
            count: Some(3),
            percentage: None,
        };
        assert!(!t.exceeded(3, 10));
        assert!(t.exceeded(4, 10));
        assert!(!Tolerance::default().exceeded(0, 10));
        assert!(Tolerance::default().exceeded(1, 10));
    }

    #[test]
    fn tolerated_failures_still_succeed() {
        let mut r = run(
            3,
            3,
            Tolerance {
                count: Some(1),
                percentage: None,
            },
        );
        drain(&mut r);
        r.apply_outcome(&failed(0, 1), 1);
        r.apply_outcome(&ok(1, 1, 1), 1);
        r.apply_outcome(&ok(2, 1, 1), 1);
        assert!(r.settle(4));
        assert_eq!(r.status(), RunStatus::Succeeded);
        assert_eq!(r.counts().failed, 1);
    }

    #[test]
    fn dead_lettered_item_becomes_a_failed_execution() {
        let mut r = run(1, 1, Tolerance::default());
        drain(&mut r);
        let a = r.apply_failure(0, 1, errors::RUNTIME, "delivery limit".into(), 7);
        assert_eq!(a, Applied::Recorded);
        assert_eq!(r.counts().failed, 1);
        assert!(r.executions_by_worker.is_empty());
        let rec = r.records().next().unwrap();
        assert_eq!(rec.error.as_deref(), Some(errors::RUNTIME));
    }

    #[test]
    fn refused_publish_is_dispatched_again() {
        let mut r = run(2, 1, Tolerance::default());
        assert_eq!(r.next_dispatch(1), Some((0, 1)));
        r.undispatch(0);
        assert_eq!(r.counts().pending, 2);
        assert_eq!(r.next_dispatch(1), Some((0, 1)));
    }

    #[test]
    fn redrive_reruns_only_failed_executions() {
        let mut r = run(
            4,
            4,
            Tolerance {
                count: Some(0),
                percentage: None,
            },
        );
        drain(&mut r);
        r.apply_outcome(&ok(0, 1, 24), 1);
        r.apply_outcome(&ok(1, 1, 24), 1);
        r.apply_outcome(&failed(2, 1), 1);
        assert_eq!(r.status(), RunStatus::Failed);
        assert_eq!(r.counts().aborted, 1);
        assert!(r.settle(2));
        assert_eq!(r.redrive(3).unwrap(), 2);
        assert_eq!(r.status(), RunStatus::Pending);
        assert_eq!(r.redrive_count, 1);
        let c = r.counts();
        assert_eq!(
            (
                c.succeeded,
                c.failed,
                c.aborted,
                c.pending,
                c.pending_redrive
            ),
            (2, 0, 0, 2, 2)
        );
        r.open(4);
        assert_eq!(drain_at(&mut r, 4), [(2, 2), (3, 2)]);
        r.apply_outcome(&ok(2, 2, 24), 5);
        r.apply_outcome(&ok(3, 2, 24), 5);
        assert!(r.settle(6));
        assert_eq!(r.status(), RunStatus::Succeeded);
        assert_eq!(r.readings, 4 * 24);
        assert_eq!(
            r.executions_by_worker["w1"], 5,
            "attempts, the failed one included"
        );
        let history = r.history(2);
        let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_ref()).collect();
        assert_eq!(
            kinds,
            [
                "ExecutionQueued",
                "ExecutionDispatched",
                "ExecutionStarted",
                "ExecutionFailed",
                "ExecutionRedriven",
                "ExecutionDispatched",
                "ExecutionStarted",
                "ExecutionSucceeded"
            ]
        );
    }

    #[test]
    fn succeeded_and_running_runs_cannot_be_redriven() {
        let mut r = run(1, 1, Tolerance::default());
        assert!(r.redrive(1).is_err());
        drain(&mut r);
        r.apply_outcome(&ok(0, 1, 1), 1);
        r.settle(1);
        assert!(r.redrive(2).unwrap_err().0.contains("SUCCEEDED"));
    }

    #[test]
    fn abort_stops_dispatch_and_ignores_late_outcomes() {
        let mut r = run(5, 2, Tolerance::default());
        drain(&mut r);
        r.abort(3).unwrap();
        assert_eq!(r.status(), RunStatus::Aborted);
        let c = r.counts();
        assert_eq!((c.aborted, c.running, c.pending), (5, 0, 0));
        assert_eq!(r.next_dispatch(4), None);
        assert!(matches!(
            r.apply_outcome(&ok(0, 1, 1), 4),
            Applied::Ignored(_)
        ));
        assert!(r.abort(5).is_err());
        assert_eq!(r.redrive(6).unwrap(), 5);
    }

    #[test]
    fn retry_policy_redispatches_with_backoff_holding_the_credit() {
        let policy = vec![Retrier {
            error_equals: vec!["States.ALL".into()],
            interval_seconds: 1.0,
            max_attempts: 2,
            backoff_rate: 2.0,
            max_delay_seconds: None,
            jitter_strategy: retry::JitterStrategy::None,
        }];
        let mut r =
            MapRun::new(RunId("r".into()), None, 1, Tolerance::default(), 0).with_retry(policy);
        r.set_children(vec![child(0), child(1)], 0);
        r.open(0);
        assert_eq!(r.next_dispatch(0), Some((0, 1)));
        assert_eq!(
            r.apply_outcome(&failed(0, 1), 100),
            Applied::RetryScheduled { due_ms: 1100 }
        );
        // Still running and holding the only credit: nothing else goes out, not even early.
        assert_eq!(r.counts().running, 1);
        assert_eq!(r.next_dispatch(1099), None);
        assert_eq!(r.next_due(), Some(1100));
        assert_eq!(r.next_dispatch(1100), Some((0, 2)));
        assert_eq!(
            r.apply_outcome(&failed(0, 2), 1200),
            Applied::RetryScheduled { due_ms: 3200 }
        );
        assert_eq!(r.next_dispatch(3200), Some((0, 3)));
        // Attempts exhausted: the failure is final and, untolerated, fails the run.
        assert_eq!(r.apply_outcome(&failed(0, 3), 3300), Applied::Recorded);
        assert_eq!(r.status(), RunStatus::Failed);
        assert_eq!(r.counts().failed, 1);
    }

    #[test]
    fn item_counts_use_readings_per_child() {
        let mut r = run(3, 3, Tolerance::default());
        drain(&mut r);
        r.apply_outcome(&ok(0, 1, 24), 1);
        let items = r.item_counts();
        assert_eq!((items.total, items.succeeded, items.running), (72, 24, 48));
    }

    /// The same history an execution would have had with every event stored.
    fn kinds_and_times(h: &[ExecEvent]) -> Vec<(String, String, u32, Option<String>)> {
        h.iter()
            .map(|e| {
                (
                    e.kind.to_string(),
                    e.timestamp.clone(),
                    e.attempt,
                    e.worker.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn an_ordinary_success_stores_no_events_yet_reports_its_whole_history() {
        let mut r = run(3, 3, Tolerance::default());
        assert!(r.history.is_empty(), "queued children store nothing");
        drain_at(&mut r, 5);
        assert_eq!(r.history.len(), 3, "running ones keep their dispatch");
        r.apply_outcome(&ok(1, 1, 24), 7);
        assert!(!r.history.contains_key(&1), "rebuilt from the record");
        let h = r.history(1);
        assert_eq!(
            kinds_and_times(&h),
            [
                ("ExecutionQueued".into(), iso(0), 0, None),
                ("ExecutionDispatched".into(), iso(5), 1, None),
                ("ExecutionStarted".into(), iso(1), 1, Some("w1".into())),
                ("ExecutionSucceeded".into(), iso(2), 1, Some("w1".into())),
            ]
        );
        assert_eq!((h[3].bytes_read, h[3].readings), (Some(10), Some(24)));
        assert_eq!(r.history(3), Vec::new(), "no such execution");
    }

    #[test]
    fn a_run_aborted_before_dispatch_rebuilds_its_aborts_and_a_redrive_keeps_them() {
        let mut r = MapRun::new(RunId("r".into()), None, 1, Tolerance::default(), 0);
        r.set_children((0..3).map(child).collect(), 0);
        r.open(1);
        drain_at(&mut r, 2);
        r.abort(9).unwrap();
        assert_eq!(
            r.history.len(),
            1,
            "only the dispatched one stores its abort"
        );
        let kinds = |r: &MapRun, i| -> Vec<String> {
            r.history(i).iter().map(|e| e.kind.to_string()).collect()
        };
        assert_eq!(kinds(&r, 2), ["ExecutionQueued", "ExecutionAborted"]);
        assert_eq!(
            kinds(&r, 0),
            ["ExecutionQueued", "ExecutionDispatched", "ExecutionAborted"]
        );
        r.redrive(10).unwrap();
        assert_eq!(
            kinds(&r, 2),
            ["ExecutionQueued", "ExecutionAborted", "ExecutionRedriven"]
        );
    }

    #[test]
    fn children_are_packed_and_survive_the_checkpoint() {
        let mut r = MapRun::new(RunId("r".into()), None, 1, Tolerance::default(), 0);
        let specs = vec![
            ChildSpec {
                bucket: "b".into(),
                key: "one".into(),
                row_groups: Some((0, 2)),
                first_index: 0,
                items: Some(10),
            },
            ChildSpec {
                bucket: "b".into(),
                key: "one".into(),
                row_groups: Some((2, 4)),
                first_index: 10,
                items: None,
            },
            ChildSpec {
                bucket: "b".into(),
                key: "two".into(),
                row_groups: None,
                first_index: 0,
                items: Some(3),
            },
        ];
        r.set_children(specs.clone(), 0);
        assert_eq!(r.children.key_ends.len(), 2, "one name per object");
        assert_eq!(r.children.keys, "onetwo");
        assert!(r.children.object_buckets.is_empty(), "one bucket");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"states\":\"P3\""), "{json}");
        assert!(
            !json.contains("one"),
            "children are not in the run's JSON: {json}"
        );
        let mut back: MapRun = serde_json::from_str(&json).unwrap();
        let err = serde_json::from_str::<MapRun>(&json)
            .unwrap()
            .restore_children([])
            .unwrap_err();
        assert!(err.contains("0 children, 3 states"), "{err}");
        // Segments, as the checkpoint writes them, through JSON and bincode alike.
        let head: ChildSegment =
            serde_json::from_str(&serde_json::to_string(&r.children_segment(0..2)).unwrap())
                .unwrap();
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(r.children_segment(2..9), config).unwrap();
        let (tail, _): (ChildSegment, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(
            (head.len(), tail.len()),
            (2, 1),
            "a range past the end is clamped"
        );
        back.restore_children([head, tail]).unwrap();
        for (i, spec) in specs.iter().enumerate() {
            let c = back.child(i as u32).unwrap();
            assert_eq!(
                (c.bucket, c.key, c.row_groups, c.first_index, c.items),
                (
                    spec.bucket.as_str(),
                    spec.key.as_str(),
                    spec.row_groups,
                    spec.first_index,
                    spec.items
                )
            );
        }
        assert_eq!(back.child(3), None);
        let bad = json.replace("\"P3\"", "\"PXP\"");
        let err = serde_json::from_str::<MapRun>(&bad).unwrap_err();
        assert!(err.to_string().contains("'X'"), "{err}");
    }

    #[test]
    fn records_are_logged_once_each_and_a_redriven_execution_loses_its_saved_record() {
        let mut r = run(3, 3, Tolerance::default());
        r.log_records();
        drain(&mut r);
        r.apply_outcome(&ok(0, 1, 5), 2);
        r.apply_outcome(&failed(1, 1), 2); // fails the run, aborting execution 2
        assert_eq!(r.status(), RunStatus::Failed);
        assert_eq!(r.record_log_len(), 3);
        // What a checkpoint saves in a record segment, through JSON as it does.
        let saved: Vec<ExecRecord> =
            serde_json::from_str(&serde_json::to_string(&r.logged_records(3)).unwrap()).unwrap();
        assert_eq!(
            saved.iter().map(|x| x.execution).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        r.trim_record_log(3);
        assert_eq!(r.record_log_len(), 0);
        assert!(r.logged_records(3).is_empty());

        r.redrive(3).unwrap();
        assert_eq!(r.record(1), None, "the redrive removed the failed record");
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            !json.contains("\"k0\""),
            "records are not in the run's JSON: {json}"
        );
        let mut back: MapRun = serde_json::from_str(&json).unwrap();
        back.restore_children([r.children_segment(0..3)]).unwrap();
        back.restore_records(saved, []);
        assert_eq!(back.record(0).map(|x| x.readings), Some(5));
        assert_eq!(
            (back.record(1), back.record(2)),
            (None, None),
            "pending again"
        );
        assert_eq!(back.record_log_len(), 0, "all of it was in a segment");

        // Inline records (and state version 2's, held in the run) are logged again: no
        // segment holds them yet, so the next checkpoint must carry them.
        let mut again: MapRun = serde_json::from_str(&json).unwrap();
        let inline = r.record(0).cloned();
        again.restore_records([], inline);
        assert_eq!(again.record_log_len(), 1);
        assert_eq!(again.logged_records(1)[0].execution, 0);
    }

    /// Parses a run's JSON with `field` replaced by `value`.
    fn with_field(r: &MapRun, field: &str, value: serde_json::Value) -> Result<MapRun, String> {
        let mut json = serde_json::to_value(r).unwrap();
        json[field] = value;
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn states_and_attempts_are_run_length_encoded_and_version_2_still_reads() {
        let mut r = run(10, 3, Tolerance::default());
        drain(&mut r);
        r.apply_outcome(&ok(0, 1, 5), 1);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["states"], "SR2P7");
        assert_eq!(json["attempts"], "1*3,0*7");
        let back = with_field(&r, "states", json["states"].clone()).unwrap();
        assert_eq!(back.states, r.states);
        assert_eq!(back.attempts, r.attempts);
        // State version 2: a letter and an array element per child.
        let v2 = with_field(&r, "states", "SRRPPPPPPP".into()).unwrap();
        assert_eq!(v2.states, r.states);
        let v2 = with_field(
            &r,
            "attempts",
            serde_json::json!([1, 1, 1, 0, 0, 0, 0, 0, 0, 0]),
        );
        assert_eq!(v2.unwrap().attempts, r.attempts);
        let empty = with_field(&r, "attempts", "".into()).unwrap();
        assert!(empty.attempts.is_empty());
        // Damage is an error that says what, never a panic or a huge allocation.
        for (field, value, says) in [
            ("states", "P0", "\"0\" is not a run length"),
            ("states", "P99999999999999999999999", "is not a run length"),
            ("states", "PS4294967296", "more than 4294967295"),
            ("states", "3P", "'3' is not a child execution state letter"),
            ("attempts", "1*0", "\"1*0\" is not an attempt run"),
            ("attempts", "x", "\"x\" is not an attempt run"),
            ("attempts", "0*4294967296", "more than 4294967295"),
        ] {
            let err = with_field(&r, field, value.into()).unwrap_err();
            assert!(err.contains(says), "{field} {value}: {err}");
        }
    }

    #[test]
    fn children_across_buckets_keep_theirs() {
        let spec = |b: &str, k: &str| ChildSpec {
            bucket: b.into(),
            key: k.into(),
            row_groups: None,
            first_index: 0,
            items: None,
        };
        let specs = vec![
            spec("a", "x"),
            spec("b", "x"),
            spec("a", "y"),
            spec("a", ""),
        ];
        let c = Children::pack(specs.clone());
        assert_eq!(c.buckets, ["a", "b"]);
        assert!(c.first_index.is_empty() && c.items.is_empty(), "{c:?}");
        for (i, s) in specs.iter().enumerate() {
            let got = c.get(i).unwrap();
            assert_eq!(
                (got.bucket, got.key, got.items),
                (s.bucket.as_str(), s.key.as_str(), None)
            );
        }
        // Offsets out of range, as a damaged checkpoint could hold: no child, no panic.
        let mut bad = c.clone();
        bad.key_ends[1] = 999;
        assert_eq!(bad.get(1), None);
    }
    #[test]
    fn children_added_by_stretches_pack_like_children_set_at_once() {
        let spec = |b: &str, k: &str, first_index, items| ChildSpec {
            bucket: b.into(),
            key: k.into(),
            row_groups: None,
            first_index,
            items,
        };
        // The first stretch needs none of the optional columns; later ones need each.
        let specs = vec![
            spec("a", "x", 0, None),
            spec("a", "x", 0, None),
            spec("a", "y", 0, None),
            spec("a", "y", 7, None),
            spec("b", "y", 9, Some(3)),
            spec("a", "z", 12, None),
        ];
        let whole = Children::pack(specs.clone());
        for cut in [1, 2, 3, 4, 5] {
            let mut by_stretches = Children::default();
            by_stretches.extend(specs[..cut].to_vec());
            by_stretches.extend(specs[cut..].to_vec());
            for i in 0..specs.len() {
                assert_eq!(by_stretches.get(i), whole.get(i), "cut {cut}, child {i}");
            }
            assert_eq!(by_stretches.get(specs.len()), None);
        }
        // A key continued across a stretch boundary is still named once.
        let mut c = Children::default();
        c.extend(specs[..1].to_vec());
        c.extend(specs[1..2].to_vec());
        assert_eq!((c.keys.as_str(), c.key_ends.len()), ("x", 1));
    }

    fn reading_run(tolerance: Tolerance) -> MapRun {
        let mut r = MapRun::new(RunId("r".into()), None, 0, tolerance, 0);
        r.open(1);
        r.start_reading();
        r
    }

    #[test]
    fn a_run_still_reading_its_items_runs_what_it_has_but_does_not_finish() {
        let mut r = reading_run(Tolerance::default());
        assert!(!r.settle(2), "nothing read yet");
        r.add_children((0..2).map(child).collect(), 2);
        assert_eq!(drain(&mut r), [(0, 1), (1, 1)]);
        r.apply_outcome(&ok(0, 1, 24), 3);
        r.apply_outcome(&ok(1, 1, 24), 3);
        assert!(!r.settle(3), "more children may come");
        assert_eq!(r.status(), RunStatus::Running);
        r.add_children(vec![child(2)], 4);
        assert_eq!(r.counts().total, 3);
        assert_eq!(drain(&mut r), [(2, 1)]);
        r.apply_outcome(&ok(2, 1, 24), 5);
        r.finish_reading(6);
        assert!(r.settle(6));
        assert_eq!(r.status(), RunStatus::Succeeded);
        assert_eq!(r.counts().succeeded, 3);
    }

    #[test]
    fn a_failure_percentage_waits_for_the_final_total_but_a_count_does_not() {
        let pct = Tolerance {
            count: None,
            percentage: Some(10.0),
        };
        let mut r = reading_run(pct);
        r.add_children((0..2).map(child).collect(), 2);
        drain(&mut r);
        r.apply_outcome(&failed(0, 1), 3);
        assert_eq!(
            r.status(),
            RunStatus::Running,
            "1 of 2 read so far is not the rate"
        );
        r.add_children((2..20).map(child).collect(), 4);
        r.finish_reading(5);
        assert_eq!(r.status(), RunStatus::Running, "1 of 20 is within 10%");
        let mut r = reading_run(pct);
        r.add_children((0..2).map(child).collect(), 2);
        drain(&mut r);
        r.apply_outcome(&failed(0, 1), 3);
        r.apply_outcome(&failed(1, 1), 3);
        r.add_children((2..10).map(child).collect(), 4);
        r.finish_reading(5);
        assert_eq!(r.status(), RunStatus::Failed, "2 of 10 exceeds 10%");
        assert_eq!(
            r.error.as_deref(),
            Some(errors::EXCEED_TOLERATED_FAILURE_THRESHOLD)
        );

        let mut r = reading_run(Tolerance {
            count: Some(1),
            percentage: Some(90.0),
        });
        r.add_children((0..2).map(child).collect(), 2);
        drain(&mut r);
        r.apply_outcome(&failed(0, 1), 3);
        assert_eq!(r.status(), RunStatus::Running);
        r.apply_outcome(&failed(1, 1), 3);
        assert_eq!(r.status(), RunStatus::Failed, "a count is exceeded at once");
    }

    #[test]
    fn a_run_aborted_while_reading_reads_the_rest_when_redriven() {
        let mut r = reading_run(Tolerance::default());
        r.add_children((0..2).map(child).collect(), 2);
        drain(&mut r);
        r.abort(3).unwrap();
        assert!(r.settle(3));
        assert!(r.reading(), "the reader did not finish");
        assert_eq!(r.redrive(4).unwrap(), 2);
        r.open(5);
        r.add_children(vec![child(2)], 6);
        r.finish_reading(6);
        let sent = drain(&mut r);
        assert_eq!(sent.len(), 3, "{sent:?}");
        for (e, a) in sent {
            r.apply_outcome(&ok(e, a, 24), 7);
        }
        assert!(r.settle(7));
        assert_eq!(r.status(), RunStatus::Succeeded);
    }
}
