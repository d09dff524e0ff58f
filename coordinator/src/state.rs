//! The coordinator's checkpoint in the object store: persist before ack.
//!
//! The control-plane state — every run still in motion (spec, per-execution state,
//! counters, histories), the admission backlog in order, items awaiting re-publication — is
//! written as one JSON object. A run that has finished and written its results no longer
//! changes, so it is written once, to an object of its own (`runs/<id>.<redrive>.json`),
//! before the first checkpoint that names it; checkpoints then carry only its id. Without
//! that, every checkpoint rewrote every run ever held, and its cost (and the latency of
//! every acknowledged change) grew without bound. A redrive puts the run back in the
//! checkpoint; its next archive has a new key, so an archive object, once named by a
//! checkpoint, is never overwritten. A run's children (the objects and row groups its child
//! executions read) never change once planned, and were 93 % of a checkpoint's bytes at
//! 10,000 children a run, so they too are written once, in segments of their own
//! (`children/<id>/<start>-<end>.bin`, bincode), before the first checkpoint (or archive)
//! that names them; only a run still being read carries its newest few inline. Finished
//! child executions' records, which never change once written either, go the same way
//! (`records/<id>/<seq>.json`) a few thousand at a time, the newest inline. Two objects
//! take turns (`coordinator-state.0.json`, `.1.json`, chosen by the snapshot's generation),
//! so a save never overwrites the last one that succeeded: a store that is not atomic (or a
//! writer killed mid-PUT on one) can tear at most the newer object, one whose PUT was never
//! confirmed and so covers nothing acked or answered, and the coordinator restarts from the
//! other. Outcomes are acked to RabbitMQ only after a checkpoint that includes them, and
//! API requests that change state are answered only after theirs, so a coordinator killed
//! at any moment restarts from a state that has lost nothing acknowledged: unacked outcomes
//! are redelivered and applied (set-once makes that idempotent), items it cannot prove were
//! dispatched are published again (their result keys are deterministic, so a duplicate
//! overwrites the same objects).

use aws_sdk_s3::Client;
use bytes::Bytes;
use fleetmap_objstore::{ObjStoreError, S3Uri, get_bytes, put_bytes};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::admission::AdmissionControl;
use crate::run::{ChildSegment, ExecRecord, MapRun, RunId};
use crate::spec::RunSpec;

/// Bump when the snapshot's shape changes incompatibly.
pub const STATE_VERSION: u32 = 4;
/// Versions this build reads: version 2 held children inline, one state letter and one
/// attempt number per child, all of which version 3 reads as such; version 4 leaves out a
/// run's empty and zero fields, which every earlier version wrote (a version 3 build would
/// find them missing, so version 4 is refused there with the version named).
const READABLE_VERSIONS: std::ops::RangeInclusive<u32> = 2..=STATE_VERSION;
/// Where a single-object checkpoint lived before the two slots (state version 1); read only
/// on a start that finds neither slot, so that an upgrade refuses the old state by name
/// instead of starting afresh beside it.
const LEGACY_OBJECT: &str = "coordinator-state.json";
const SLOTS: [&str; 2] = ["coordinator-state.0.json", "coordinator-state.1.json"];
/// A torn read may be a GET racing a PUT the store has not finished; look once more before
/// calling the object torn.
const TORN_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);
/// Archived runs read or written at once: enough to hide the store's latency, few enough
/// not to open a connection per run.
const ARCHIVE_IO: usize = 16;
const JSON: &str = "application/json";
/// A children segment may not decode into more than this: a damaged length prefix must not
/// make decoding allocate the machine away. Segments hold at most
/// [`MAX_SEGMENT_CHILDREN`], tens of MB.
const MAX_SEGMENT_DECODED: usize = 1 << 30;
/// The most children one segment holds; a run planned in one go is cut into several.
pub const MAX_SEGMENT_CHILDREN: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct RunSnapshot {
    pub run: MapRun,
    pub spec: RunSpec,
    pub writer_prefix: String,
    pub finalized: bool,
    #[serde(default)]
    pub manifest_key: Option<String>,
    #[serde(default)]
    pub open_order: Option<u64>,
    /// The run's children in segment objects, in order from the first. Empty in state
    /// version 2, which held them in the run.
    #[serde(default)]
    pub segments: Vec<SegmentRef>,
    /// Children after the last segment, held here while the run is still being read.
    #[serde(default)]
    pub tail: Option<ChildSegment>,
    /// The run's record segments (`records/<id>/<seq>.json`), in the order written.
    #[serde(default)]
    pub record_segments: Vec<u32>,
    /// Records written since the last record segment.
    #[serde(default)]
    pub records: Vec<ExecRecord>,
}

/// The body of a record segment: finished child executions' records, in JSON like the
/// checkpoint (a record's optional fields are left out, which bincode cannot do).
#[derive(Serialize, Deserialize)]
struct RecordSegment<R> {
    version: u32,
    run: RunId,
    seq: u32,
    records: Vec<R>,
}

/// A record segment serialised for [`StateStore::write_segments`].
pub struct RecordWrite {
    pub run: RunId,
    pub seq: u32,
    /// How many logged record writes it covers ([`MapRun::trim_record_log`] once durable).
    pub logged: usize,
    object: ObjectWrite,
}

/// One segment object of a run's children: children `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    pub start: u64,
    pub end: u64,
}

impl SegmentRef {
    /// The segment of children `range`.
    pub fn of(range: &std::ops::Range<usize>) -> Self {
        SegmentRef {
            start: range.start as u64,
            end: range.end as u64,
        }
    }
}

/// The body of a segment object, bincode-encoded: which run and where, then the children.
#[derive(Serialize, Deserialize)]
struct Segment<C> {
    version: u32,
    run: RunId,
    start: u64,
    children: C,
}

/// A segment serialised for [`StateStore::write_segments`].
pub struct SegmentWrite {
    pub run: RunId,
    pub segment: SegmentRef,
    object: ObjectWrite,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// Counts saves; the higher of the two slots is the newer state. Absent (0) in a
    /// legacy single-object checkpoint.
    #[serde(default)]
    pub generation: u64,
    pub saved_ms: i64,
    pub runs: Vec<RunSnapshot>,
    /// Finished runs kept in objects of their own, in creation order. Absent in checkpoints
    /// written before archiving existed, which hold every run in `runs`.
    #[serde(default)]
    pub archived: Vec<ArchivedRun>,
    /// The runs `archived` names, read by [`StateStore::load`].
    #[serde(skip)]
    pub archived_runs: Vec<RunSnapshot>,
    /// Open runs in dispatch rotation.
    pub open: Vec<RunId>,
    pub admission: AdmissionControl,
    pub republish: Vec<(RunId, u32, u32)>,
    pub opened: u64,
    pub runs_finished: u64,
    pub executions_finished: u64,
}

/// A finished run's archive object, as a checkpoint names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedRun {
    pub id: RunId,
    pub redrive_count: u32,
}

/// The body of an archive object: one finished run, with the state version that wrote it.
#[derive(Deserialize)]
struct Archive {
    version: u32,
    run: RunSnapshot,
}

#[derive(Serialize)]
struct ArchiveRef<'a> {
    version: u32,
    run: &'a RunSnapshotRef<'a>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("coordinator state at {uri}: {source}")]
    Store {
        uri: String,
        #[source]
        source: ObjStoreError,
    },
    #[error("coordinator state at {uri} is unreadable: {reason}")]
    Corrupt { uri: String, reason: String },
}

/// Where the checkpoint lives: two slots under `<prefix>/`, written in turn.
#[derive(Debug, Clone)]
pub struct StateStore {
    s3: Client,
    bucket: String,
    /// `<prefix>/` or empty.
    dir: String,
    /// The generation of the last snapshot known to be durable (loaded or saved).
    durable: u64,
}

impl StateStore {
    pub fn new(s3: Client, prefix: &S3Uri) -> Self {
        let p = prefix.key.trim_end_matches('/');
        let dir = if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        StateStore {
            s3,
            bucket: prefix.bucket.clone(),
            dir,
            durable: 0,
        }
    }

    fn key(&self, object: &str) -> String {
        format!("{}{object}", self.dir)
    }

    fn uri_of(&self, object: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(object))
    }

    /// The folder holding the checkpoint, for messages.
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.dir)
    }

    /// The generation the next [`StateStore::save`] must carry in its body.
    pub fn next_generation(&self) -> u64 {
        self.durable + 1
    }

    /// The newest readable checkpoint, or `None` on a first start.
    ///
    /// A slot whose body fails the store's checksum or does not parse is torn; the other
    /// slot is used and the reason logged. Anything else (a store that cannot be reached,
    /// access denied, a snapshot from a newer build) stops the start instead: falling back
    /// on those could resume from a state older than what was already acknowledged.
    pub async fn load(&mut self) -> Result<Option<Snapshot>, StateError> {
        let mut newest: Option<Snapshot> = None;
        let mut torn = Vec::new();
        for object in SLOTS {
            match self.read(object).await? {
                Slot::Missing => {}
                Slot::Torn(reason) => {
                    warn!(object = %self.uri_of(object), %reason, "checkpoint slot is torn; using the other");
                    torn.push((object, reason));
                }
                Slot::Ok(snap) => {
                    if newest
                        .as_ref()
                        .is_none_or(|n| snap.generation > n.generation)
                    {
                        newest = Some(*snap);
                    }
                }
            }
        }
        if newest.is_none() {
            if let Some((object, reason)) = torn.into_iter().next() {
                // Both torn, or one torn and nothing else: nothing safe to resume from.
                return Err(StateError::Corrupt {
                    uri: self.uri_of(object),
                    reason,
                });
            }
            newest = match self.read(LEGACY_OBJECT).await? {
                Slot::Missing => None,
                Slot::Torn(reason) => {
                    return Err(StateError::Corrupt {
                        uri: self.uri_of(LEGACY_OBJECT),
                        reason,
                    });
                }
                Slot::Ok(snap) => Some(*snap),
            };
        }
        if let Some(snap) = &mut newest {
            self.durable = snap.generation;
            snap.archived_runs = self.load_archived(&snap.archived).await?;
            self.load_children(&mut snap.runs).await?;
            self.load_children(&mut snap.archived_runs).await?;
            self.load_records(&mut snap.runs).await?;
            self.load_records(&mut snap.archived_runs).await?;
        }
        Ok(newest)
    }

    fn segment_object(id: &RunId, s: SegmentRef) -> String {
        format!("children/{id}/{}-{}.bin", s.start, s.end)
    }

    /// Reads the children segments `runs` name and gives each run its children: segments
    /// in order, then the tail. Each segment was confirmed before the checkpoint naming it
    /// was written, so one that is missing, damaged or of another run stops the start.
    async fn load_children(&self, runs: &mut [RunSnapshot]) -> Result<(), StateError> {
        let reads: Vec<_> = runs
            .iter()
            .flat_map(|r| r.segments.iter().map(|&s| (r.run.id.clone(), s)))
            .map(|(id, s)| {
                let object = Self::segment_object(&id, s);
                read_segment(
                    self.s3.clone(),
                    self.bucket.clone(),
                    self.key(&object),
                    self.uri_of(&object),
                    id,
                    s,
                )
            })
            .collect();
        let mut segments = futures::stream::iter(reads).buffered(ARCHIVE_IO);
        for r in runs {
            let mut mine = Vec::with_capacity(r.segments.len() + 1);
            let mut expected = 0;
            for s in &r.segments {
                if s.start != expected {
                    return Err(StateError::Corrupt {
                        uri: self.uri_of(&Self::segment_object(&r.run.id, *s)),
                        reason: format!(
                            "map run {}'s segments skip from child {expected} to {}",
                            r.run.id, s.start
                        ),
                    });
                }
                expected = s.end;
                let segment = segments.next().await.ok_or_else(|| StateError::Corrupt {
                    uri: self.uri(),
                    reason: "a segment read was lost".into(),
                })??;
                mine.push(segment);
            }
            mine.extend(r.tail.take());
            r.run
                .restore_children(mine)
                .map_err(|reason| StateError::Corrupt {
                    uri: self.uri(),
                    reason: format!("map run {}: {reason}", r.run.id),
                })?;
        }
        Ok(())
    }

    fn record_object(id: &RunId, seq: u32) -> String {
        format!("records/{id}/{seq}.json")
    }

    /// Reads the record segments `runs` name and gives each run its records back
    /// ([`MapRun::restore_records`]). Like children segments, each was durable before the
    /// checkpoint naming it, so one missing or of another run stops the start.
    async fn load_records(&self, runs: &mut [RunSnapshot]) -> Result<(), StateError> {
        let reads: Vec<_> = runs
            .iter()
            .flat_map(|r| r.record_segments.iter().map(|&seq| (r.run.id.clone(), seq)))
            .map(|(id, seq)| {
                let object = Self::record_object(&id, seq);
                read_records(
                    self.s3.clone(),
                    self.bucket.clone(),
                    self.key(&object),
                    self.uri_of(&object),
                    id,
                    seq,
                )
            })
            .collect();
        let mut segments = futures::stream::iter(reads).buffered(ARCHIVE_IO);
        for r in runs {
            let mut saved = Vec::new();
            for _ in &r.record_segments {
                let records = segments.next().await.ok_or_else(|| StateError::Corrupt {
                    uri: self.uri(),
                    reason: "a record segment read was lost".into(),
                })??;
                saved.extend(records);
            }
            let inline = std::mem::take(&mut r.records);
            r.run.restore_records(saved, inline);
        }
        Ok(())
    }

    /// Serialises the records of run `id`'s segment `seq`, covering `logged` record writes.
    pub fn record_body(
        &self,
        id: &RunId,
        seq: u32,
        logged: usize,
        records: Vec<&ExecRecord>,
    ) -> Result<RecordWrite, StateError> {
        let object = Self::record_object(id, seq);
        let body = RecordSegment {
            version: STATE_VERSION,
            run: id.clone(),
            seq,
            records,
        };
        let object = self.object_write(&object, serde_json::to_vec(&body), JSON, || {
            format!("map run {id}'s records")
        })?;
        Ok(RecordWrite {
            run: id.clone(),
            seq,
            logged,
            object,
        })
    }

    /// `object` and its body, serialised for [`put_object`]; a body that could not be
    /// serialised is an error naming the object and `what` it holds.
    fn object_write<E: std::fmt::Display>(
        &self,
        object: &str,
        body: Result<Vec<u8>, E>,
        content_type: &'static str,
        what: impl FnOnce() -> String,
    ) -> Result<ObjectWrite, StateError> {
        match body {
            Ok(body) => Ok(ObjectWrite {
                key: self.key(object),
                uri: self.uri_of(object),
                body,
                content_type,
            }),
            Err(e) => Err(StateError::Corrupt {
                uri: self.uri_of(object),
                reason: format!("cannot serialise {}: {e}", what()),
            }),
        }
    }

    /// Serialises children `segment` of run `id` for [`StateStore::write_segments`].
    pub fn segment_body(
        &self,
        id: &RunId,
        segment: SegmentRef,
        children: &ChildSegment,
    ) -> Result<SegmentWrite, StateError> {
        let object = Self::segment_object(id, segment);
        let body = Segment {
            version: STATE_VERSION,
            run: id.clone(),
            start: segment.start,
            children,
        };
        let body = bincode::serde::encode_to_vec(&body, bincode::config::standard());
        let object = self.object_write(&object, body, "application/octet-stream", || {
            format!("map run {id}'s children")
        })?;
        Ok(SegmentWrite {
            run: id.clone(),
            segment,
            object,
        })
    }

    /// Writes serialised children and record segments, [`ARCHIVE_IO`] at a time, owning
    /// all it needs so the coordinator can run it beside its event loop. All or an error: a
    /// checkpoint names every segment it wrote.
    pub fn write_segments(
        &self,
        children: Vec<SegmentWrite>,
        records: Vec<RecordWrite>,
    ) -> impl Future<Output = Result<(), StateError>> + Send + 'static {
        let (s3, bucket) = (self.s3.clone(), self.bucket.clone());
        let writes: Vec<ObjectWrite> = children
            .into_iter()
            .map(|w| w.object)
            .chain(records.into_iter().map(|w| w.object))
            .collect();
        async move {
            let puts = writes
                .into_iter()
                .map(|w| put_object(s3.clone(), bucket.clone(), w));
            futures::stream::iter(puts)
                .buffer_unordered(ARCHIVE_IO)
                .try_collect::<()>()
                .await
        }
    }

    fn archive_object(id: &RunId, redrive_count: u32) -> String {
        format!("runs/{id}.{redrive_count}.json")
    }

    /// Reads the archives a durable checkpoint names. Each was confirmed before that
    /// checkpoint was written, so one that is missing or unreadable was lost or damaged
    /// behind the coordinator's back: the start stops and names it rather than forget a run.
    async fn load_archived(&self, refs: &[ArchivedRun]) -> Result<Vec<RunSnapshot>, StateError> {
        // Owned futures: the engine's task must be `Send` for every lifetime, which futures
        // borrowing from a closure's argument are not.
        let reads: Vec<_> = refs
            .iter()
            .map(|r| {
                let object = Self::archive_object(&r.id, r.redrive_count);
                read_archive(
                    self.s3.clone(),
                    self.bucket.clone(),
                    self.key(&object),
                    self.uri_of(&object),
                    r.clone(),
                )
            })
            .collect();
        futures::stream::iter(reads)
            .buffered(ARCHIVE_IO)
            .try_collect()
            .await
    }

    /// Writes finished runs to their archive objects, [`ARCHIVE_IO`] at a time. Returns the
    /// ones that are durable, in the order given, and the first error if any failed: those
    /// stay in the checkpoint until a later attempt archives them.
    pub async fn archive(
        &self,
        runs: &[RunSnapshotRef<'_>],
    ) -> (Vec<ArchivedRun>, Option<StateError>) {
        let (writes, first_error) = self.archive_bodies(runs);
        let (done, error) = self.write_archives(writes).await;
        (done, first_error.or(error))
    }

    /// Serialises finished runs' archives, ready for [`StateStore::write_archives`]. A run
    /// that cannot be serialised is left out, and the first such error returned.
    pub fn archive_bodies(
        &self,
        runs: &[RunSnapshotRef<'_>],
    ) -> (Vec<ArchiveWrite>, Option<StateError>) {
        let mut first_error = None;
        let mut writes = Vec::with_capacity(runs.len());
        for r in runs {
            let id = &r.run.id;
            let object = Self::archive_object(id, r.run.redrive_count);
            let body = ArchiveRef {
                version: STATE_VERSION,
                run: r,
            };
            let body = serde_json::to_vec(&body);
            match self.object_write(&object, body, JSON, || format!("map run {id}")) {
                Ok(object) => writes.push(ArchiveWrite {
                    archived: ArchivedRun {
                        id: id.clone(),
                        redrive_count: r.run.redrive_count,
                    },
                    object,
                }),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        (writes, first_error)
    }

    /// Writes serialised archives, [`ARCHIVE_IO`] at a time, owning all it needs so the
    /// coordinator can run it beside its event loop. Returns the durable ones in order, and
    /// the first error if any failed.
    pub fn write_archives(
        &self,
        writes: Vec<ArchiveWrite>,
    ) -> impl Future<Output = (Vec<ArchivedRun>, Option<StateError>)> + Send + 'static {
        let (s3, bucket) = (self.s3.clone(), self.bucket.clone());
        async move {
            let puts = writes
                .into_iter()
                .map(|w| put_archive(s3.clone(), bucket.clone(), w));
            let results: Vec<Result<ArchivedRun, StateError>> = futures::stream::iter(puts)
                .buffered(ARCHIVE_IO)
                .collect()
                .await;
            let mut done = Vec::with_capacity(results.len());
            let mut first_error = None;
            for r in results {
                match r {
                    Ok(a) => done.push(a),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            (done, first_error)
        }
    }

    async fn read(&self, object: &str) -> Result<Slot, StateError> {
        let key = self.key(object);
        let mut rechecked = false;
        let body = loop {
            match get_bytes(&self.s3, &self.bucket, &key).await {
                Ok(body) => break body,
                Err(ObjStoreError::NotFound { .. }) => return Ok(Slot::Missing),
                Err(e) if e.is_checksum_mismatch() => {
                    if rechecked {
                        return Ok(Slot::Torn(e.to_string()));
                    }
                    rechecked = true;
                    tokio::time::sleep(TORN_RECHECK).await;
                }
                Err(source) => {
                    return Err(StateError::Store {
                        uri: self.uri_of(object),
                        source,
                    });
                }
            }
        };
        // The version first, so a snapshot of another build is refused by name rather than
        // taken for a torn one (and silently passed over for the other slot).
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version = match serde_json::from_slice::<Version>(&body) {
            Ok(v) => v.version,
            Err(e) => return Ok(Slot::Torn(e.to_string())),
        };
        if !READABLE_VERSIONS.contains(&version) {
            return Err(StateError::Corrupt {
                uri: self.uri_of(object),
                reason: format!(
                    "state version {version} is not one of {READABLE_VERSIONS:?}, which this build \
                     reads; finish its runs with the fleetmap that wrote it, or move it away to \
                     start afresh"
                ),
            });
        }
        let snap: Snapshot = match serde_json::from_slice(&body) {
            Ok(snap) => snap,
            Err(e) => return Ok(Slot::Torn(e.to_string())),
        };
        Ok(Slot::Ok(Box::new(snap)))
    }

    /// Writes the snapshot of `generation` (from [`StateStore::next_generation`]) into the
    /// slot that does not hold the last durable one.
    pub async fn save(&mut self, generation: u64, body: Vec<u8>) -> Result<(), StateError> {
        self.write_slot(generation, body).await?;
        self.saved(generation);
        Ok(())
    }

    /// [`StateStore::save`]'s write alone, owning all it needs so it can run beside the
    /// event loop; [`StateStore::saved`] records its success.
    pub fn write_slot(
        &self,
        generation: u64,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), StateError>> + Send + 'static {
        let object = SLOTS[(generation % 2) as usize];
        let write = ObjectWrite {
            key: self.key(object),
            uri: self.uri_of(object),
            body,
            content_type: JSON,
        };
        put_object(self.s3.clone(), self.bucket.clone(), write)
    }

    /// The snapshot of `generation` is durable: the next one goes to the other slot.
    pub fn saved(&mut self, generation: u64) {
        self.durable = generation;
    }
}

/// Reads an object a durable checkpoint names (`what`, for the message). Each was confirmed
/// before that checkpoint was written, so one that is missing or damaged was lost behind
/// the coordinator's back: the start stops and names it rather than forget what it held.
async fn get_named(
    s3: &Client,
    bucket: &str,
    key: &str,
    uri: &str,
    what: impl FnOnce() -> String,
) -> Result<Bytes, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        uri: uri.to_owned(),
        reason,
    };
    match get_bytes(s3, bucket, key).await {
        Ok(body) => Ok(body),
        Err(ObjStoreError::NotFound { .. }) => Err(corrupt(format!(
            "the checkpoint names {} but it is missing",
            what()
        ))),
        Err(e) if e.is_checksum_mismatch() => Err(corrupt(e.to_string())),
        Err(source) => Err(StateError::Store {
            uri: uri.to_owned(),
            source,
        }),
    }
}

/// Refuses an object of a state version this build does not read.
fn readable(version: u32) -> Result<(), String> {
    if READABLE_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(format!(
            "state version {version} is not one of {READABLE_VERSIONS:?}, which this build reads"
        ))
    }
}

/// Reads one archive object and checks it holds the run the checkpoint names.
async fn read_archive(
    s3: Client,
    bucket: String,
    key: String,
    uri: String,
    r: ArchivedRun,
) -> Result<RunSnapshot, StateError> {
    let body = get_named(&s3, &bucket, &key, &uri, || {
        format!(
            "the archive of finished map run {} (redrive {})",
            r.id, r.redrive_count
        )
    })
    .await?;
    let corrupt = |reason: String| StateError::Corrupt {
        uri: uri.clone(),
        reason,
    };
    let archive: Archive = serde_json::from_slice(&body).map_err(|e| corrupt(e.to_string()))?;
    readable(archive.version).map_err(corrupt)?;
    if archive.run.run.id != r.id || archive.run.run.redrive_count != r.redrive_count {
        return Err(corrupt(format!(
            "holds map run {} (redrive {}), not the {} (redrive {}) the checkpoint names",
            archive.run.run.id, archive.run.run.redrive_count, r.id, r.redrive_count
        )));
    }
    Ok(archive.run)
}

/// Reads one children segment and checks it is the one the checkpoint names.
async fn read_segment(
    s3: Client,
    bucket: String,
    key: String,
    uri: String,
    id: RunId,
    s: SegmentRef,
) -> Result<ChildSegment, StateError> {
    let body = get_named(&s3, &bucket, &key, &uri, || {
        format!(
            "the segment of children {}..{} of map run {id}",
            s.start, s.end
        )
    })
    .await?;
    let corrupt = |reason: String| StateError::Corrupt {
        uri: uri.clone(),
        reason,
    };
    let config = bincode::config::standard().with_limit::<MAX_SEGMENT_DECODED>();
    let (segment, read): (Segment<ChildSegment>, usize) =
        bincode::serde::decode_from_slice(&body, config).map_err(|e| corrupt(e.to_string()))?;
    if read != body.len() {
        return Err(corrupt(format!(
            "{} bytes follow the segment",
            body.len() - read
        )));
    }
    readable(segment.version).map_err(corrupt)?;
    let len = segment.children.len() as u64;
    if segment.run != id || segment.start != s.start || segment.start + len != s.end {
        return Err(corrupt(format!(
            "holds children {}..{} of map run {}, not {}..{} of {id}, which the checkpoint names",
            segment.start,
            segment.start + len,
            segment.run,
            s.start,
            s.end
        )));
    }
    Ok(segment.children)
}

/// One object a checkpoint writes before its slot.
struct ObjectWrite {
    key: String,
    uri: String,
    body: Vec<u8>,
    content_type: &'static str,
}

async fn put_object(s3: Client, bucket: String, w: ObjectWrite) -> Result<(), StateError> {
    put_bytes(&s3, &bucket, &w.key, Bytes::from(w.body), w.content_type)
        .await
        .map_err(|source| StateError::Store { uri: w.uri, source })
}

/// Reads one record segment and checks it is the one the checkpoint names.
async fn read_records(
    s3: Client,
    bucket: String,
    key: String,
    uri: String,
    id: RunId,
    seq: u32,
) -> Result<Vec<ExecRecord>, StateError> {
    let body = get_named(&s3, &bucket, &key, &uri, || {
        format!("record segment {seq} of map run {id}")
    })
    .await?;
    let corrupt = |reason: String| StateError::Corrupt {
        uri: uri.clone(),
        reason,
    };
    let segment: RecordSegment<ExecRecord> =
        serde_json::from_slice(&body).map_err(|e| corrupt(e.to_string()))?;
    readable(segment.version).map_err(corrupt)?;
    if segment.run != id || segment.seq != seq {
        return Err(corrupt(format!(
            "holds record segment {} of map run {}, not {seq} of {id}, which the checkpoint names",
            segment.seq, segment.run
        )));
    }
    Ok(segment.records)
}

/// A finished run's archive, serialised ([`StateStore::archive_bodies`]).
pub struct ArchiveWrite {
    pub archived: ArchivedRun,
    object: ObjectWrite,
}

async fn put_archive(
    s3: Client,
    bucket: String,
    w: ArchiveWrite,
) -> Result<ArchivedRun, StateError> {
    put_object(s3, bucket, w.object).await.map(|()| w.archived)
}

enum Slot {
    Missing,
    /// The object exists but is not a whole snapshot; why.
    Torn(String),
    Ok(Box<Snapshot>),
}

/// The same shape as [`Snapshot`], borrowed, for saving without cloning the state.
#[derive(Serialize)]
pub struct SnapshotRef<'a> {
    pub version: u32,
    pub generation: u64,
    pub saved_ms: i64,
    pub runs: Vec<RunSnapshotRef<'a>>,
    pub archived: Vec<ArchivedRunRef<'a>>,
    pub open: &'a [RunId],
    pub admission: &'a AdmissionControl,
    pub republish: Vec<&'a (RunId, u32, u32)>,
    pub opened: u64,
    pub runs_finished: u64,
    pub executions_finished: u64,
}

#[derive(Serialize)]
pub struct RunSnapshotRef<'a> {
    pub run: &'a MapRun,
    pub spec: &'a RunSpec,
    pub writer_prefix: String,
    pub finalized: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_key: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_order: Option<u64>,
    /// Every segment of the run's children, those written with this checkpoint included.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail: Option<ChildSegment>,
    /// Every record segment of the run, those written with this checkpoint included.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub record_segments: Vec<u32>,
    /// Records no segment holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<&'a ExecRecord>,
}

/// The same shape as [`ArchivedRun`], borrowed.
#[derive(Serialize)]
pub struct ArchivedRunRef<'a> {
    pub id: &'a RunId,
    pub redrive_count: u32,
}
