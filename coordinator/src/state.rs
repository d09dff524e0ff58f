//! The coordinator's checkpoint in the object store: persist before ack.
//!
//! The whole control-plane state — every run (spec, per-execution state, counters,
//! histories), the admission backlog in order, items awaiting re-publication — is written as
//! one JSON object. Two objects take turns (`coordinator-state.0.json`, `.1.json`, chosen by
//! the snapshot's generation), so a save never overwrites the last one that succeeded: a
//! store that is not atomic (or a writer killed mid-PUT on one) can tear at most the newer
//! object, one whose PUT was never confirmed and so covers nothing acked or answered, and
//! the coordinator restarts from the other. Outcomes are acked to RabbitMQ only
//! after a checkpoint that includes them, and API requests that change state are answered
//! only after theirs, so a coordinator killed at any moment restarts from a state that has
//! lost nothing acknowledged: unacked outcomes are redelivered and applied (set-once makes
//! that idempotent), items it cannot prove were dispatched are published again (their
//! result keys are deterministic, so a duplicate overwrites the same objects).

use aws_sdk_s3::Client;
use bytes::Bytes;
use fleetmap_objstore::{ObjStoreError, S3Uri, get_bytes, put_bytes};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::admission::AdmissionControl;
use crate::run::{MapRun, RunId};
use crate::spec::RunSpec;

/// Bump when the snapshot's shape changes incompatibly.
pub const STATE_VERSION: u32 = 2;
/// Where a single-object checkpoint lived before the two slots (state version 1); read only
/// on a start that finds neither slot, so that an upgrade refuses the old state by name
/// instead of starting afresh beside it.
const LEGACY_OBJECT: &str = "coordinator-state.json";
const SLOTS: [&str; 2] = ["coordinator-state.0.json", "coordinator-state.1.json"];
/// A torn read may be a GET racing a PUT the store has not finished; look once more before
/// calling the object torn.
const TORN_RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, Serialize, Deserialize)]
pub struct RunSnapshot {
    pub run: MapRun,
    pub spec: RunSpec,
    pub writer_prefix: String,
    pub finalized: bool,
    pub manifest_key: Option<String>,
    pub open_order: Option<u64>,
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
    /// Open runs in dispatch rotation.
    pub open: Vec<RunId>,
    pub admission: AdmissionControl,
    pub republish: Vec<(RunId, u32, u32)>,
    pub opened: u64,
    pub runs_finished: u64,
    pub executions_finished: u64,
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
                        newest = Some(snap);
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
                Slot::Ok(snap) => Some(snap),
            };
        }
        if let Some(snap) = &newest {
            self.durable = snap.generation;
        }
        Ok(newest)
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
        if version != STATE_VERSION {
            return Err(StateError::Corrupt {
                uri: self.uri_of(object),
                reason: format!(
                    "state version {version} is not {STATE_VERSION}, which this build reads; \
                     finish its runs with the fleetmap that wrote it, or move it away to start afresh"
                ),
            });
        }
        let snap: Snapshot = match serde_json::from_slice(&body) {
            Ok(snap) => snap,
            Err(e) => return Ok(Slot::Torn(e.to_string())),
        };
        Ok(Slot::Ok(snap))
    }

    /// Writes the snapshot of `generation` (from [`StateStore::next_generation`]) into the
    /// slot that does not hold the last durable one.
    pub async fn save(&mut self, generation: u64, body: Vec<u8>) -> Result<(), StateError> {
        let object = SLOTS[(generation % 2) as usize];
        put_bytes(
            &self.s3,
            &self.bucket,
            &self.key(object),
            Bytes::from(body),
            "application/json",
        )
        .await
        .map_err(|source| StateError::Store {
            uri: self.uri_of(object),
            source,
        })?;
        self.durable = generation;
        Ok(())
    }
}

enum Slot {
    Missing,
    /// The object exists but is not a whole snapshot; why.
    Torn(String),
    Ok(Snapshot),
}

/// The same shape as [`Snapshot`], borrowed, for saving without cloning the state.
#[derive(Serialize)]
pub struct SnapshotRef<'a> {
    pub version: u32,
    pub generation: u64,
    pub saved_ms: i64,
    pub runs: Vec<RunSnapshotRef<'a>>,
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
    pub manifest_key: &'a Option<String>,
    pub open_order: Option<u64>,
}
