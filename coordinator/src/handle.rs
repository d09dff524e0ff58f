//! The coordinator's API as Rust: commands to the event loop and the documents it returns.
//!
//! The HTTP API and the CLI are thin over [`CoordinatorHandle`]; the documents use Step
//! Functions' field names (`DescribeMapRun`, `ListMapRuns`, child executions with their
//! history) so users can map what they know one to one.

use std::collections::BTreeMap;
use std::time::Duration;

use fleetmap_protocol::AnomalyCounts;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::error::CoordinatorError;
use crate::run::{Counts, ExecEvent, ExecState, RunId, RunStatus};
use crate::spec::RunSpec;

/// `DescribeMapRun`, with the reference job's totals.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub redrive_count: u32,
    pub redrive_date: Option<String>,
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
    /// The order in which runs were admitted (opened), counting from 1; FIFO means this
    /// follows creation order.
    pub open_order: Option<u64>,
}

/// One child execution, with its history when asked for one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildExecution {
    pub execution: u32,
    pub name: String,
    pub status: ExecState,
    pub attempt: u32,
    pub source: String,
    pub row_groups: Option<(u32, u32)>,
    pub index: u64,
    pub items: Option<u64>,
    pub worker: Option<String>,
    pub start_date: Option<String>,
    pub stop_date: Option<String>,
    pub bytes_read: Option<u64>,
    pub readings: Option<u64>,
    pub result_key: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<ExecEvent>>,
}

/// A page of a listing; pass `next_token` back for the next one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: Option<String>,
}

/// Listing limits, as Step Functions' `maxResults` (default 100, at most 1,000).
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1_000;

#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub max_results: Option<usize>,
    pub next_token: Option<String>,
}

impl PageRequest {
    /// Offset and size, or a message naming what is wrong with the request.
    pub fn resolve(&self) -> Result<(usize, usize), CoordinatorError> {
        let size = self.max_results.unwrap_or(DEFAULT_PAGE);
        if size == 0 || size > MAX_PAGE {
            return Err(CoordinatorError::InvalidRequest(format!(
                "maxResults must be between 1 and {MAX_PAGE}, got {size}"
            )));
        }
        let offset = match &self.next_token {
            None => 0,
            Some(t) => t.parse().map_err(|_| {
                CoordinatorError::InvalidRequest(format!(
                    "nextToken {t:?} is not a token we issued"
                ))
            })?,
        };
        Ok((offset, size))
    }
}

/// `UpdateMapRun`: only what is given changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRequest {
    pub max_concurrency: Option<u32>,
    pub tolerated_failure_count: Option<u64>,
    pub tolerated_failure_percentage: Option<f64>,
}

/// The open-map-run admission numbers (Step Functions' three CloudWatch metrics).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionView {
    pub open_map_run_limit: usize,
    pub open_map_runs: usize,
    pub backlog_size: usize,
    /// Run ids waiting, first to open first.
    pub backlog: Vec<String>,
    /// Runs that reached a terminal state since the coordinator started.
    pub runs_finished: u64,
    /// Child execution outcomes applied since the coordinator started.
    pub executions_finished: u64,
}

pub(crate) enum Command {
    Start {
        spec: Box<RunSpec>,
        reply: oneshot::Sender<Result<RunId, CoordinatorError>>,
    },
    Describe {
        id: RunId,
        reply: oneshot::Sender<Result<RunDescription, CoordinatorError>>,
    },
    List {
        status: Option<RunStatus>,
        page: PageRequest,
        reply: oneshot::Sender<Result<Page<RunDescription>, CoordinatorError>>,
    },
    Update {
        id: RunId,
        update: UpdateRequest,
        reply: oneshot::Sender<Result<RunDescription, CoordinatorError>>,
    },
    Abort {
        id: RunId,
        reply: oneshot::Sender<Result<RunDescription, CoordinatorError>>,
    },
    Redrive {
        id: RunId,
        reply: oneshot::Sender<Result<RunDescription, CoordinatorError>>,
    },
    Executions {
        id: RunId,
        status: Option<ExecState>,
        page: PageRequest,
        reply: oneshot::Sender<Result<Page<ChildExecution>, CoordinatorError>>,
    },
    Execution {
        id: RunId,
        execution: u32,
        reply: oneshot::Sender<Result<ChildExecution, CoordinatorError>>,
    },
    Admission {
        reply: oneshot::Sender<AdmissionView>,
    },
}

/// A cheap, cloneable way to talk to the running coordinator.
#[derive(Clone)]
pub struct CoordinatorHandle {
    pub(crate) tx: mpsc::Sender<Command>,
}

impl CoordinatorHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, CoordinatorError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| CoordinatorError::Stopped)?;
        rx.await.map_err(|_| CoordinatorError::Stopped)
    }

    pub async fn start_run(&self, spec: RunSpec) -> Result<RunId, CoordinatorError> {
        self.ask(|reply| Command::Start {
            spec: Box::new(spec),
            reply,
        })
        .await?
    }

    pub async fn describe(&self, id: &RunId) -> Result<RunDescription, CoordinatorError> {
        self.ask(|reply| Command::Describe {
            id: id.clone(),
            reply,
        })
        .await?
    }

    /// `ListMapRuns`, newest first, optionally only runs in `status`.
    pub async fn list(
        &self,
        status: Option<RunStatus>,
        page: PageRequest,
    ) -> Result<Page<RunDescription>, CoordinatorError> {
        self.ask(|reply| Command::List {
            status,
            page,
            reply,
        })
        .await?
    }

    /// `UpdateMapRun`: `MaxConcurrency` and failure tolerance, effective immediately.
    pub async fn update(
        &self,
        id: &RunId,
        update: UpdateRequest,
    ) -> Result<RunDescription, CoordinatorError> {
        self.ask(|reply| Command::Update {
            id: id.clone(),
            update,
            reply,
        })
        .await?
    }

    pub async fn update_max_concurrency(
        &self,
        id: &RunId,
        max_concurrency: u32,
    ) -> Result<RunDescription, CoordinatorError> {
        self.update(
            id,
            UpdateRequest {
                max_concurrency: Some(max_concurrency),
                ..UpdateRequest::default()
            },
        )
        .await
    }

    pub async fn abort(&self, id: &RunId) -> Result<RunDescription, CoordinatorError> {
        self.ask(|reply| Command::Abort {
            id: id.clone(),
            reply,
        })
        .await?
    }

    /// `RedriveExecution` of a FAILED or ABORTED run.
    pub async fn redrive(&self, id: &RunId) -> Result<RunDescription, CoordinatorError> {
        self.ask(|reply| Command::Redrive {
            id: id.clone(),
            reply,
        })
        .await?
    }

    pub async fn executions(
        &self,
        id: &RunId,
        status: Option<ExecState>,
        page: PageRequest,
    ) -> Result<Page<ChildExecution>, CoordinatorError> {
        self.ask(|reply| Command::Executions {
            id: id.clone(),
            status,
            page,
            reply,
        })
        .await?
    }

    /// One child execution with its event history.
    pub async fn execution(
        &self,
        id: &RunId,
        execution: u32,
    ) -> Result<ChildExecution, CoordinatorError> {
        self.ask(|reply| Command::Execution {
            id: id.clone(),
            execution,
            reply,
        })
        .await?
    }

    pub async fn admission(&self) -> Result<AdmissionView, CoordinatorError> {
        self.ask(|reply| Command::Admission { reply }).await
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
}
