//! `fleetmap`: one binary for every role — coordinator, worker, sample data, demo.
//!
//! Thin over the libraries: each subcommand parses typed flags (every flag also reads an
//! environment variable), sets up logging, metrics and signal handling, and calls into
//! `fleetmap-coordinator`, `fleetmap-worker` or `fleetmap-sample`.

mod cmd;
mod common;
mod ops;
mod report;
mod runargs;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fleetmap",
    version,
    about = "A self-hosted Distributed Map for data in object storage"
)]
struct Cli {
    #[command(flatten)]
    client: cmd::client::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the AWS IoT sample end to end on this machine: S3-protocol server, sample data,
    /// coordinator and two workers.
    Demo(cmd::demo::DemoArgs),
    /// Generate the sample IoT data set (Parquet under Hive partitions, plus the manifest).
    Gen(cmd::gen_data::GenArgs),
    /// Run a worker: consume items, process them, publish outcomes.
    Worker(cmd::worker::WorkerArgs),
    /// Run one map run to completion as the coordinator and print its summary.
    Run(Box<cmd::run::RunArgs>),
    /// Run the coordinator: the HTTP API, admission control and dispatch for many runs.
    Coordinator(cmd::coordinator::CoordinatorArgs),
    #[command(flatten)]
    Client(cmd::client::ClientCommand),
    /// Serve a loopback S3-protocol server from a folder (for local stacks without MinIO).
    S3Server(cmd::s3_server::S3ServerArgs),
    /// Load-test the map run backlog: K runs of M tiny items against an open-run limit L.
    Loadtest(cmd::loadtest::LoadtestArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo and the load test print their own progress and summary; their logs would
    // only bury them.
    let level = match cli.command {
        Command::Demo(_) | Command::Loadtest(_) => "warn",
        _ => "info",
    };
    common::init_tracing(level);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Demo(a) => cmd::demo::run(a, cli.client.output).await,
            Command::Gen(a) => cmd::gen_data::run(a).await,
            Command::Worker(a) => cmd::worker::run(a).await,
            Command::Run(a) => cmd::run::run(*a, cli.client.output).await,
            Command::S3Server(a) => cmd::s3_server::run(a).await,
            Command::Coordinator(a) => cmd::coordinator::run(a).await,
            Command::Client(c) => cmd::client::run(cli.client, c).await,
            Command::Loadtest(a) => cmd::loadtest::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
