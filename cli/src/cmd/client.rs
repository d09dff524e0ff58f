//! The map run verbs against a running coordinator: start, describe, list, update, abort,
//! redrive, executions, execution. Each prints text for people or `-o json` for scripts.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fleetmap_coordinator::api::{ApiError, StartResponse};
use fleetmap_coordinator::{ChildExecution, RunDescription, RunStatus, UpdateRequest};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cmd::run::Output;
use crate::report;
use crate::runargs::{MapArgs, SourceArgs};

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The coordinator's API (for the map run verbs).
    #[arg(
        long,
        env = "FLEETMAP_COORDINATOR_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub coordinator_url: String,
    /// Bearer token, if the coordinator requires one (for the map run verbs).
    #[arg(
        long = "token",
        env = "FLEETMAP_API_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub client_token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Start a map run (StartMapRun); `--wait` follows it to the end with a progress bar.
    Start(Box<StartArgs>),
    /// Describe a map run (DescribeMapRun).
    Describe { run: String },
    /// List map runs, newest first (ListMapRuns).
    List(ListArgs),
    /// Change MaxConcurrency or failure tolerance of an open run (UpdateMapRun).
    Update(UpdateArgs),
    /// Abort a map run: pending and running child executions are aborted.
    Abort { run: String },
    /// Re-run the failed, timed-out and aborted child executions of a FAILED/ABORTED run.
    Redrive {
        run: String,
        /// Follow the redriven run to the end.
        #[arg(long)]
        wait: bool,
    },
    /// List a run's child executions.
    Executions(ExecutionsArgs),
    /// Show one child execution and its history.
    Execution { run: String, execution: u32 },
    /// Open map runs, the limit and the backlog.
    Admission,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub map: MapArgs,
    /// Wait for the run to end, showing progress; exit 0 only when it SUCCEEDED.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only runs in this status (PENDING, RUNNING, SUCCEEDED, FAILED, ABORTED).
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub max_results: Option<usize>,
    #[arg(long)]
    pub next_token: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    pub run: String,
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    #[arg(long)]
    pub tolerated_failure_count: Option<u64>,
    #[arg(long)]
    pub tolerated_failure_percentage: Option<f64>,
}

#[derive(Args, Debug)]
pub struct ExecutionsArgs {
    pub run: String,
    /// Only executions in this status (PENDING, RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED).
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub max_results: Option<usize>,
    #[arg(long)]
    pub next_token: Option<String>,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(args: &ClientArgs) -> anyhow::Result<Api> {
        Ok(Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: args.coordinator_url.trim_end_matches('/').to_owned(),
            token: args.client_token.clone().filter(|t| !t.is_empty()),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl serde::Serialize>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {url}; is `fleetmap coordinator` running? (FLEETMAP_COORDINATOR_URL)"))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| format!("{}: {}", e.error, e.message))
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{status}: {msg}");
        }
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {url}"))
    }

    async fn describe(&self, run: &str) -> anyhow::Result<RunDescription> {
        self.call(
            Method::GET,
            &format!("/v1/map-runs/{run}"),
            &[],
            None::<&()>,
        )
        .await
    }
}

pub async fn run(args: ClientArgs, cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args)?;
    let json = args.output == Output::Json;
    match cmd {
        ClientCommand::Start(s) => {
            let req = s.map.request(&s.source)?;
            let started: StartResponse = api
                .call(Method::POST, "/v1/map-runs", &[], Some(&req))
                .await?;
            if !s.wait {
                if json {
                    println!("{}", serde_json::to_string_pretty(&started)?);
                } else {
                    println!("{}", started.map_run_id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            wait(&api, &started.map_run_id, json).await
        }
        ClientCommand::Describe { run } => {
            let d = api.describe(&run).await?;
            print_run(&d, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::List(l) => {
            let mut q = Vec::new();
            if let Some(s) = l.status {
                q.push(("status", s));
            }
            if let Some(n) = l.max_results {
                q.push(("maxResults", n.to_string()));
            }
            if let Some(t) = l.next_token {
                q.push(("nextToken", t));
            }
            let v: Value = api
                .call(Method::GET, "/v1/map-runs", &q, None::<&()>)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let runs: Vec<RunDescription> =
                    serde_json::from_value(v["mapRuns"].clone()).unwrap_or_default();
                println!(
                    "{:<34} {:<10} {:>9} {:>9} {:>7}  LABEL",
                    "MAP RUN", "STATUS", "SUCCEEDED", "FAILED", "TOTAL"
                );
                for d in runs {
                    let c = d.execution_counts;
                    println!(
                        "{:<34} {:<10} {:>9} {:>9} {:>7}  {}",
                        d.map_run_id,
                        d.status.as_str(),
                        c.succeeded,
                        c.failed + c.timed_out,
                        c.total,
                        d.label.unwrap_or_default()
                    );
                }
                if let Some(t) = v["nextToken"].as_str() {
                    println!("(more: --next-token {t})");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Update(u) => {
            let body = UpdateRequest {
                max_concurrency: u.max_concurrency,
                tolerated_failure_count: u.tolerated_failure_count,
                tolerated_failure_percentage: u.tolerated_failure_percentage,
            };
            let d: RunDescription = api
                .call(
                    Method::PATCH,
                    &format!("/v1/map-runs/{}", u.run),
                    &[],
                    Some(&body),
                )
                .await?;
            print_run(&d, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Abort { run } => {
            let d: RunDescription = api
                .call(
                    Method::POST,
                    &format!("/v1/map-runs/{run}/abort"),
                    &[],
                    None::<&()>,
                )
                .await?;
            print_run(&d, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Redrive { run, wait: w } => {
            let d: RunDescription = api
                .call(
                    Method::POST,
                    &format!("/v1/map-runs/{run}/redrive"),
                    &[],
                    None::<&()>,
                )
                .await?;
            if w {
                return wait(&api, &run, json).await;
            }
            print_run(&d, json)?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Executions(e) => {
            let mut q = Vec::new();
            if let Some(s) = e.status {
                q.push(("status", s));
            }
            if let Some(n) = e.max_results {
                q.push(("maxResults", n.to_string()));
            }
            if let Some(t) = e.next_token {
                q.push(("nextToken", t));
            }
            let v: Value = api
                .call(
                    Method::GET,
                    &format!("/v1/map-runs/{}/executions", e.run),
                    &q,
                    None::<&()>,
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let list: Vec<ChildExecution> =
                    serde_json::from_value(v["executions"].clone()).unwrap_or_default();
                for c in list {
                    println!(
                        "{:>6} {:<10} attempt {:<2} {}{} {}",
                        c.execution,
                        c.status.as_str(),
                        c.attempt,
                        c.source,
                        c.row_groups
                            .map(|(a, b)| format!(" [row groups {a}..{b})"))
                            .unwrap_or_default(),
                        c.error
                            .map(|e| format!("{e}: {}", c.cause.unwrap_or_default()))
                            .unwrap_or_default()
                    );
                }
                if let Some(t) = v["nextToken"].as_str() {
                    println!("(more: --next-token {t})");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Execution { run, execution } => {
            let c: ChildExecution = api
                .call(
                    Method::GET,
                    &format!("/v1/map-runs/{run}/executions/{execution}"),
                    &[],
                    None::<&()>,
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!("{} {} {}", c.name, c.status.as_str(), c.source);
                for e in c.history.unwrap_or_default() {
                    let mut line =
                        format!("  {} {:<24} attempt {}", e.timestamp, e.kind, e.attempt);
                    if let Some(w) = e.worker {
                        line.push_str(&format!(" on {w}"));
                    }
                    if let Some(b) = e.bytes_read {
                        line.push_str(&format!(", {b} bytes read"));
                    }
                    if let Some(r) = e.readings {
                        line.push_str(&format!(", {r} readings"));
                    }
                    if let Some(err) = e.error {
                        line.push_str(&format!(", {err}: {}", e.cause.unwrap_or_default()));
                    }
                    if let Some(ms) = e.retry_in_ms {
                        line.push_str(&format!(", retry in {ms} ms"));
                    }
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Admission => {
            let v: Value = api
                .call(Method::GET, "/v1/admission", &[], None::<&()>)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn wait(api: &Api, run: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut progress = report::Progress::new(!json);
    let d = loop {
        let d = api.describe(run).await?;
        progress.update(&d);
        if d.status.is_terminal() {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    progress.finish();
    print_run(&d, json)?;
    Ok(if d.status == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_run(d: &RunDescription, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(d)?);
    } else {
        print!("{}", report::summary(d, None));
    }
    Ok(())
}
