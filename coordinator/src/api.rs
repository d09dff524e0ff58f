//! The coordinator's HTTP/JSON API: Step Functions' map run verbs over [`CoordinatorHandle`].
//!
//! ```text
//! POST  /v1/map-runs                       StartMapRun (body: StartRequest)
//! GET   /v1/map-runs?status=&maxResults=&nextToken=      ListMapRuns
//! GET   /v1/map-runs/{id}                  DescribeMapRun
//! PATCH /v1/map-runs/{id}                  UpdateMapRun (maxConcurrency, tolerated failure)
//! POST  /v1/map-runs/{id}/abort            abort
//! POST  /v1/map-runs/{id}/redrive          RedriveExecution
//! GET   /v1/map-runs/{id}/executions?status=&maxResults=&nextToken=
//! GET   /v1/map-runs/{id}/executions/{n}   one child execution with its history
//! GET   /v1/admission                      open runs, limit, backlog
//! ```
//!
//! Bodies are parsed strictly (unknown fields are errors) and bounded in size; every error
//! is a JSON `{"error": <name>, "message": <what is wrong>}` with a 4xx or 5xx status. When a
//! bearer token is configured every `/v1` route requires it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleetmap_protocol::{InputType, ResultTarget, Thresholds};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::batcher::ItemBatcher;
use crate::error::CoordinatorError;
use crate::handle::{CoordinatorHandle, PageRequest, UpdateRequest};
use crate::reader::ItemSource;
use crate::retry::Retrier;
use crate::run::{ExecState, RunId, RunStatus, Tolerance};
use crate::spec::RunSpec;

/// Request bodies above this are refused with 413: a run request is a few hundred bytes, an
/// explicit item list a few MB at most.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// `StartMapRun`: the Map state's fields, in Step Functions' spelling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct StartRequest {
    pub item_reader: ItemReaderRequest,
    #[serde(default)]
    pub max_concurrency: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_failure_percentage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerated_failure_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_batcher: Option<ItemBatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<Retrier>,
    pub results: Location,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_writer: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
}

/// Where items come from: exactly one of `Manifest`, `Prefix`, `Items`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ItemReaderRequest {
    /// `ATHENA_DATA` for an Athena UNLOAD manifest (the only manifest type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_type: Option<String>,
    /// `PARQUET` (default), `CSV`, `JSONL` or `JSON` (one array of objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Location {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
}

impl TryFrom<StartRequest> for RunSpec {
    type Error = CoordinatorError;

    fn try_from(r: StartRequest) -> Result<RunSpec, CoordinatorError> {
        let bad = |m: String| CoordinatorError::InvalidRequest(m);
        let reader = r.item_reader;
        if let Some(t) = &reader.manifest_type
            && t != "ATHENA_DATA"
        {
            return Err(bad(format!(
                "ItemReader ManifestType {t:?} is not supported: use ATHENA_DATA"
            )));
        }
        let input_type: InputType = match &reader.input_type {
            Some(t) => t.parse().map_err(bad)?,
            None => InputType::Parquet,
        };
        let source = match (reader.manifest, reader.prefix, reader.items) {
            (Some(uri), None, None) => ItemSource::AthenaManifest { uri },
            (None, Some(uri), None) => ItemSource::Prefix { uri },
            (None, None, Some(uris)) => ItemSource::Objects { uris },
            _ => {
                return Err(bad(
                    "ItemReader needs exactly one of Manifest, Prefix or Items".into(),
                ));
            }
        };
        Ok(RunSpec {
            source,
            input_type,
            max_concurrency: r.max_concurrency,
            tolerance: Tolerance {
                count: r.tolerated_failure_count,
                percentage: r.tolerated_failure_percentage,
            },
            batcher: r.item_batcher,
            retry: r.retry,
            results: ResultTarget {
                bucket: r.results.bucket,
                prefix: r.results.prefix.trim_matches('/').to_owned(),
            },
            result_writer: r
                .result_writer
                .map(|l| format!("s3://{}/{}", l.bucket, l.prefix)),
            label: r.label,
            thresholds: r.thresholds.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartResponse {
    pub map_run_id: String,
    pub map_run_arn: String,
}

/// The JSON error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub message: String,
}

struct Failure(StatusCode, &'static str, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ApiError {
                error: self.1.to_owned(),
                message: self.2,
            }),
        )
            .into_response()
    }
}

impl From<CoordinatorError> for Failure {
    fn from(e: CoordinatorError) -> Self {
        let (status, name) = match &e {
            CoordinatorError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
            CoordinatorError::UnknownRun(_) | CoordinatorError::NotFound(_) => {
                (StatusCode::NOT_FOUND, "ResourceNotFound")
            }
            CoordinatorError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        };
        Failure(status, name, e.to_string())
    }
}

/// Parses a request body, naming the field at fault: serde_json alone reports `invalid
/// value: integer -1, expected u32 at line 1 column 118`, which leaves the caller to count
/// columns; with the path it reads `… at MaxConcurrency: invalid value …`.
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, Failure> {
    let invalid = |m: String| Failure(StatusCode::BAD_REQUEST, "InvalidRequest", m);
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        let e = e.into_inner();
        let what = match e.classify() {
            serde_json::error::Category::Data => "a valid request",
            _ => "valid JSON",
        };
        invalid(format!("request body is not {what}{at}: {e}"))
    })?;
    de.end()
        .map_err(|e| invalid(format!("request body is not valid JSON: {e}")))?;
    Ok(value)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    max_results: Option<usize>,
    next_token: Option<String>,
}

fn parse_status<T: DeserializeOwned>(s: &Option<String>) -> Result<Option<T>, Failure> {
    match s {
        None => Ok(None),
        Some(v) => serde_json::from_value(serde_json::Value::String(v.to_ascii_uppercase()))
            .map(Some)
            .map_err(|_| {
                Failure(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    format!("unknown status {v:?}"),
                )
            }),
    }
}

struct Api {
    handle: CoordinatorHandle,
    token: Option<String>,
}

/// The `/v1` routes; merge them into the process's HTTP server.
pub fn router(handle: CoordinatorHandle, token: Option<String>) -> Router {
    let api = Arc::new(Api { handle, token });
    Router::new()
        .route("/v1/map-runs", post(start).get(list))
        .route("/v1/map-runs/{id}", get(describe).patch(update))
        .route("/v1/map-runs/{id}/abort", post(abort))
        .route("/v1/map-runs/{id}/redrive", post(redrive))
        .route("/v1/map-runs/{id}/executions", get(executions))
        .route("/v1/map-runs/{id}/executions/{n}", get(execution))
        .route("/v1/admission", get(admission))
        .layer(middleware::from_fn_with_state(api.clone(), auth))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

async fn auth(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.as_bytes()).into();
        if !ok {
            return Failure(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "missing or wrong bearer token".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn start(State(api): State<Arc<Api>>, body: Bytes) -> Result<Response, Failure> {
    let req: StartRequest = parse_json(&body)?;
    let spec = RunSpec::try_from(req)?;
    let id = api.handle.start_run(spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(StartResponse {
            map_run_arn: crate::result_writer::map_run_arn(&id.0),
            map_run_id: id.0,
        }),
    )
        .into_response())
}

async fn list(
    State(api): State<Arc<Api>>,
    Query(p): Query<ListParams>,
) -> Result<Response, Failure> {
    let status: Option<RunStatus> = parse_status(&p.status)?;
    let page = api
        .handle
        .list(
            status,
            PageRequest {
                max_results: p.max_results,
                next_token: p.next_token,
            },
        )
        .await?;
    Ok(
        Json(serde_json::json!({ "mapRuns": page.items, "nextToken": page.next_token }))
            .into_response(),
    )
}

async fn describe(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    Ok(Json(api.handle.describe(&RunId(id)).await?).into_response())
}

async fn update(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Failure> {
    let u: UpdateRequest = parse_json(&body)?;
    Ok(Json(api.handle.update(&RunId(id), u).await?).into_response())
}

async fn abort(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Result<Response, Failure> {
    Ok(Json(api.handle.abort(&RunId(id)).await?).into_response())
}

async fn redrive(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Result<Response, Failure> {
    Ok(Json(api.handle.redrive(&RunId(id)).await?).into_response())
}

async fn executions(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<Response, Failure> {
    let status: Option<ExecState> = parse_status(&p.status)?;
    let page = api
        .handle
        .executions(
            &RunId(id),
            status,
            PageRequest {
                max_results: p.max_results,
                next_token: p.next_token,
            },
        )
        .await?;
    Ok(
        Json(serde_json::json!({ "executions": page.items, "nextToken": page.next_token }))
            .into_response(),
    )
}

async fn execution(
    State(api): State<Arc<Api>>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, Failure> {
    let n: u32 = n.parse().map_err(|_| {
        Failure(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            format!("child execution index {n:?} is not a number"),
        )
    })?;
    Ok(Json(api.handle.execution(&RunId(id), n).await?).into_response())
}

async fn admission(State(api): State<Arc<Api>>) -> Result<Response, Failure> {
    Ok(Json(api.handle.admission().await?).into_response())
}
