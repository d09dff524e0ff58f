//! `fleetmap loadtest`: K map runs of M tiny items against an open-map-run limit L.
//!
//! Everything is real and in this process, as in the demo: a loopback S3-protocol server
//! holding M Parquet files of 24 readings and one manifest shared by every run, a coordinator
//! with `open_map_run_limit` L, and in-process workers on the RabbitMQ at `AMQP_URL` (under
//! queues of their own, deleted at the end). It starts all K runs as fast as the coordinator
//! takes them, samples the admission numbers (the values behind the three Prometheus gauges)
//! and throughput every `--sample-ms` until every run is terminal, writes `samples.csv` and
//! `chart.png`, and then checks the invariants itself: open runs never above L, the backlog
//! drained to 0, every run SUCCEEDED, runs opened in FIFO order. It exits non-zero naming
//! each invariant that broke, so CI can run it as a test.

mod chart;
mod check;
mod stack;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use fleetmap_coordinator::{AdmissionView, CoordinatorHandle, ItemSource, RunId, RunSpec};
use fleetmap_objstore::local::LocalS3;
use fleetmap_protocol::{ResultTarget, Topology, amqp};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use self::check::{RunRecord, Sample};
use self::stack::{Stack, delete_queues};
use crate::common::{AmqpArgs, shutdown_on_signals};

const DATA_BUCKET: &str = "fleetmap-data";
const RESULTS_BUCKET: &str = "fleetmap-results";
/// Progress lines on stderr this often, so a long run shows it is moving.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// Map runs to start (K).
    #[arg(long, default_value_t = 5_000)]
    pub runs: usize,
    /// Items per run (M): tiny Parquet files of 24 readings, the same for every run.
    #[arg(long, default_value_t = 2)]
    pub items: u32,
    /// Open map run limit (L) of the coordinator.
    #[arg(long, default_value_t = fleetmap_coordinator::admission::DEFAULT_OPEN_MAP_RUN_LIMIT)]
    pub limit: usize,
    /// Workers (in-process, each with its own broker connection).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Child executions each worker runs at once.
    #[arg(long, default_value_t = 8)]
    pub worker_concurrency: usize,
    /// MaxConcurrency of every run (0 = up to 10,000).
    #[arg(long, default_value_t = 0)]
    pub max_concurrency: u32,
    /// Milliseconds between samples of the admission numbers.
    #[arg(long, default_value_t = 100)]
    pub sample_ms: u64,
    /// Folder for samples.csv and chart.png.
    #[arg(long, default_value = "target/loadtest")]
    pub out: PathBuf,
    /// Checkpoint the coordinator's state to the loopback S3 server, as a production
    /// coordinator with `--state-uri` does (off: state in memory only).
    #[arg(long)]
    pub checkpoint: bool,
    /// Give up (and fail) if the runs are not all terminal this long after the first start.
    #[arg(long, default_value_t = 1_800)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub amqp: AmqpArgs,
}

/// What one load test measured.
struct Measured {
    samples: Vec<Sample>,
    /// In creation order.
    runs: Vec<RunRecord>,
    starts_done_ms: u64,
    final_view: AdmissionView,
    ended: Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    AllFinished,
    TimedOut,
    Interrupted,
}

pub async fn run(args: LoadtestArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.items == 0 || args.limit == 0 || args.sample_ms == 0 {
        bail!("--runs, --items, --limit and --sample-ms must each be at least 1");
    }
    let shutdown = shutdown_on_signals();
    // Queues of its own, so it never touches a deployment's items and several load tests
    // (CI, a developer) can share a broker.
    let topology = Topology {
        prefix: format!("{}-loadtest-{}", args.amqp.queue_prefix, std::process::id()),
        delivery_limit: args.amqp.delivery_limit,
    };
    // Fail fast, before generating anything, when RabbitMQ is not there.
    amqp::connect(&args.amqp.amqp_url, "fleetmap-loadtest-check")
        .await?
        .close(200, "reachable".into())
        .await
        .ok();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the output folder {}", args.out.display()))?;

    let setup = Instant::now();
    let s3 = LocalS3::start().await?;
    let result = match Stack::start(&args, &topology, &s3).await {
        Ok((stack, manifest)) => {
            eprintln!(
                "S3-protocol server, {} items, coordinator and {} workers ready in {:.1} s",
                args.items,
                args.workers,
                setup.elapsed().as_secs_f64()
            );
            let measured = measure(&args, &stack.handle, &manifest, &shutdown).await;
            let stopping = Instant::now();
            stack.stop(&args.amqp.amqp_url, &topology).await;
            eprintln!(
                "workers and coordinator stopped, queues deleted in {:.1} s",
                stopping.elapsed().as_secs_f64()
            );
            measured
        }
        Err(e) => {
            delete_queues(&args.amqp.amqp_url, &topology).await;
            Err(e)
        }
    };
    // Report before removing the S3 server's temporary folder: after a full-size run that
    // is tens of thousands of small files, and seconds to delete.
    let code = result.and_then(|m| report(&args, m));
    eprintln!(
        "removing the S3-protocol server's temporary folder {}",
        s3.root().display()
    );
    s3.shutdown().await;
    code
}

/// Starts the runs while a sampler watches, waits for the end, and collects every run's
/// description in creation order.
async fn measure(
    args: &LoadtestArgs,
    handle: &CoordinatorHandle,
    manifest: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Measured> {
    let mut spec = RunSpec::new(
        ItemSource::AthenaManifest {
            uri: manifest.to_owned(),
        },
        ResultTarget {
            bucket: RESULTS_BUCKET.into(),
            prefix: "analytics".into(),
        },
    );
    spec.max_concurrency = args.max_concurrency;
    spec.label = Some("loadtest".into());

    eprintln!(
        "starting {} map runs of {} items against an open map run limit of {} \
         ({} workers × {}{})",
        args.runs,
        args.items,
        args.limit,
        args.workers,
        args.worker_concurrency,
        if args.checkpoint {
            ", checkpointing"
        } else {
            ""
        }
    );
    // The first sample, taken before any start, anchors the chart at zero.
    let before = handle.admission().await?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(args.timeout_secs);
    let sampler = tokio::spawn(sample(
        handle.clone(),
        Sample {
            t_ms: 0,
            open_map_run_limit: before.open_map_run_limit,
            open_map_runs: before.open_map_runs,
            backlog_size: before.backlog_size,
            runs_finished: before.runs_finished,
            executions_finished: before.executions_finished,
            executions_per_s: 0.0,
        },
        t0,
        Duration::from_millis(args.sample_ms),
        args.runs as u64,
        deadline,
        shutdown.clone(),
    ));
    // One at a time, so `ids` is exactly the coordinator's creation order.
    let mut ids: Vec<RunId> = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        if shutdown.is_cancelled() {
            break;
        }
        ids.push(handle.start_run(spec.clone()).await?);
    }
    let starts_done_ms = t0.elapsed().as_millis() as u64;
    eprintln!(
        "started {} runs in {:.2} s; waiting for them to finish",
        ids.len(),
        starts_done_ms as f64 / 1000.0
    );
    let (samples, ended) = sampler.await.context("the sampler task")??;

    let mut runs = Vec::with_capacity(ids.len());
    for id in &ids {
        runs.push(RunRecord::from(&handle.describe(id).await?));
    }
    let final_view = handle.admission().await?;
    Ok(Measured {
        samples,
        runs,
        starts_done_ms,
        final_view,
        ended,
    })
}

/// Reads the admission numbers every `every` until `runs` runs have finished, the deadline
/// passes, or the user interrupts.
async fn sample(
    handle: CoordinatorHandle,
    first: Sample,
    t0: Instant,
    every: Duration,
    runs: u64,
    deadline: Instant,
    shutdown: CancellationToken,
) -> anyhow::Result<(Vec<Sample>, Ended)> {
    let mut tick = tokio::time::interval_at(t0 + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut samples = vec![first];
    let mut next_progress = t0 + PROGRESS_EVERY;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return Ok((samples, Ended::Interrupted)),
        }
        let v = handle.admission().await?;
        let now = Instant::now();
        let t_ms = now.duration_since(t0).as_millis() as u64;
        let executions_per_s = match samples.last() {
            Some(p) if t_ms > p.t_ms => {
                v.executions_finished.saturating_sub(p.executions_finished) as f64 * 1000.0
                    / (t_ms - p.t_ms) as f64
            }
            _ => 0.0,
        };
        samples.push(Sample {
            t_ms,
            open_map_run_limit: v.open_map_run_limit,
            open_map_runs: v.open_map_runs,
            backlog_size: v.backlog_size,
            runs_finished: v.runs_finished,
            executions_finished: v.executions_finished,
            executions_per_s,
        });
        if now >= next_progress {
            next_progress += PROGRESS_EVERY;
            eprintln!(
                "  t = {:>6.1} s: open {:>5}, backlog {:>5}, finished {:>6} of {runs} runs, \
                 {executions_per_s:.0} child executions/s",
                t_ms as f64 / 1000.0,
                v.open_map_runs,
                v.backlog_size,
                v.runs_finished
            );
        }
        if v.runs_finished >= runs {
            return Ok((samples, Ended::AllFinished));
        }
        if now >= deadline {
            return Ok((samples, Ended::TimedOut));
        }
    }
}

/// Writes the files, prints the figures and the invariants, and decides the exit code.
fn report(args: &LoadtestArgs, m: Measured) -> anyhow::Result<ExitCode> {
    let csv = args.out.join("samples.csv");
    let png = args.out.join("chart.png");
    chart::write_csv(&csv, &m.samples).with_context(|| format!("writing {}", csv.display()))?;
    let font = chart::font();
    let title = format!(
        "fleetmap loadtest: {} runs × {} items, open map run limit {}",
        args.runs, args.items, args.limit
    );
    chart::draw(&png, &m.samples, &title, font.is_some()).map_err(anyhow::Error::msg)?;

    let s = check::summarize(&m.samples, args.runs as u64, m.starts_done_ms);
    let secs = |ms: Option<u64>| {
        ms.map_or("—".to_owned(), |ms| {
            format!("{:.1} s", ms as f64 / 1000.0)
        })
    };
    let rate = |r: Option<f64>| r.map_or("—".to_owned(), |r| format!("{r:.0}"));
    let exact = check::exact_peak_open(&m.runs).map_or("—".to_owned(), |p| p.to_string());
    println!("Load test: {title}");
    println!(
        "  started:                 {} runs in {:.2} s ({} workers × {}, MaxConcurrency {})",
        m.runs.len(),
        m.starts_done_ms as f64 / 1000.0,
        args.workers,
        args.worker_concurrency,
        args.max_concurrency
    );
    println!(
        "  peak open map runs:      {} sampled, {exact} from the runs' open/stop times (limit {})",
        s.peak_open, args.limit
    );
    println!("  peak backlog:            {}", s.peak_backlog);
    println!(
        "  drain time:              backlog 0 at {}, all runs done at {} after the first start",
        secs(s.backlog_drained_ms),
        secs(s.all_done_ms)
    );
    println!(
        "  throughput:              {} runs/s, {} child executions/s (peak {:.0}/s)",
        rate(s.runs_per_s),
        rate(s.executions_per_s),
        s.peak_executions_per_s
    );
    println!(
        "  samples:                 {} ({} rows, every {} ms)",
        csv.display(),
        m.samples.len(),
        args.sample_ms
    );
    match font {
        Some(_) => println!("  chart:                   {}", png.display()),
        None => println!(
            "  chart:                   {} (drawn without text: no font found among {})",
            png.display(),
            chart::font_candidates().join(", ")
        ),
    }

    if m.ended == Ended::Interrupted {
        eprintln!("loadtest interrupted before every run finished; invariants not checked");
        return Ok(ExitCode::FAILURE);
    }
    let violations = check::check(
        args.limit,
        u64::from(args.items),
        &m.samples,
        m.final_view.backlog_size,
        &m.runs,
        m.ended == Ended::AllFinished,
    );
    println!("Invariants:");
    for name in [
        check::OPEN_WITHIN_LIMIT,
        check::BACKLOG_DRAINED,
        check::ALL_SUCCEEDED,
        check::FIFO,
    ] {
        if !violations.iter().any(|v| v.invariant == name) {
            println!("  ok      {name}");
        }
    }
    for v in &violations {
        println!("  BROKEN  {}: {}", v.invariant, v.detail);
    }
    if violations.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<&str> = violations.iter().map(|v| v.invariant).collect();
    eprintln!("loadtest FAILED: invariant broken: {}", names.join("; "));
    Ok(ExitCode::FAILURE)
}
