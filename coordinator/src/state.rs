//! The coordinator's checkpoint in the object store: persist before ack.
//!
//! The whole control-plane state — every run (spec, per-execution state, counters,
//! histories), the admission backlog in order, items awaiting re-publication — is written as
//! one JSON object, replaced atomically by each PUT. Outcomes are acked to RabbitMQ only
//! after a checkpoint that includes them, and API requests that change state are answered
//! only after theirs, so a coordinator killed at any moment restarts from a state that has
//! lost nothing acknowledged: unacked outcomes are redelivered and applied (set-once makes
//! that idempotent), items it cannot prove were dispatched are published again (their
//! result keys are deterministic, so a duplicate overwrites the same objects).

use aws_sdk_s3::Client;
use bytes::Bytes;
use fleetmap_objstore::{ObjStoreError, S3Uri, get_bytes, put_bytes};
use serde::{Deserialize, Serialize};

use crate::admission::AdmissionControl;
use crate::run::{MapRun, RunId};
use crate::spec::RunSpec;

/// Bump when the snapshot's shape changes incompatibly.
pub const STATE_VERSION: u32 = 1;
const OBJECT: &str = "coordinator-state.json";

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

/// Where the checkpoint lives: `<prefix>/coordinator-state.json`.
#[derive(Debug, Clone)]
pub struct StateStore {
    s3: Client,
    bucket: String,
    key: String,
}

impl StateStore {
    pub fn new(s3: Client, prefix: &S3Uri) -> Self {
        let p = prefix.key.trim_end_matches('/');
        let key = if p.is_empty() {
            OBJECT.to_owned()
        } else {
            format!("{p}/{OBJECT}")
        };
        StateStore {
            s3,
            bucket: prefix.bucket.clone(),
            key,
        }
    }

    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// The last checkpoint, or `None` on a first start.
    pub async fn load(&self) -> Result<Option<Snapshot>, StateError> {
        match get_bytes(&self.s3, &self.bucket, &self.key).await {
            Ok(body) => {
                let snap: Snapshot =
                    serde_json::from_slice(&body).map_err(|e| StateError::Corrupt {
                        uri: self.uri(),
                        reason: e.to_string(),
                    })?;
                if snap.version != STATE_VERSION {
                    return Err(StateError::Corrupt {
                        uri: self.uri(),
                        reason: format!(
                            "state version {} is not {STATE_VERSION}, which this build reads",
                            snap.version
                        ),
                    });
                }
                Ok(Some(snap))
            }
            Err(ObjStoreError::NotFound { .. }) => Ok(None),
            Err(source) => Err(StateError::Store {
                uri: self.uri(),
                source,
            }),
        }
    }

    pub async fn save(&self, body: Vec<u8>) -> Result<(), StateError> {
        put_bytes(
            &self.s3,
            &self.bucket,
            &self.key,
            Bytes::from(body),
            "application/json",
        )
        .await
        .map_err(|source| StateError::Store {
            uri: self.uri(),
            source,
        })
    }
}

/// The same shape as [`Snapshot`], borrowed, for saving without cloning the state.
#[derive(Serialize)]
pub struct SnapshotRef<'a> {
    pub version: u32,
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
