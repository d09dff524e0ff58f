//! What one S3 request costs the process that sends it, through the aws-sdk-s3 client and
//! through the direct lane the coordinator and the workers use for these calls
//! (`fleetmap_objstore::DataClient`), side by side in one process.
//!
//! B3 tiny is three requests per child execution (the coordinator's footer read, the
//! worker's GET of the file and its PUT of the records), so a floor under its CPU per child
//! is three times this, before any Parquet, JSON or AMQP work.
//!
//! ```text
//! fleetmap-bench s3-requests --get s3://BUCKET/KEY --put s3://BUCKET/PREFIX
//!                            [--requests N] [--in-flight N] [--put-bytes N]
//! ```
//!
//! Reads the endpoint and keys as every fleetmap process does (`AWS_ENDPOINT_URL`, …). Sends
//! `--requests` suffix-range GETs of 64 KiB of the `--get` object (the footer read, which for a
//! tiny file is all of it), then as many PutObjects of `--put-bytes` to keys under `--put`
//! (500 keys, overwritten in turn), `--in-flight` at a time, after a warm-up of 200 of each.
//! Prints one JSON line: CPU microseconds of this process per GET and per PUT through the SDK
//! (`get_cpu_us`, `put_cpu_us`) and through the direct lane (`direct_get_cpu_us`, …),
//! requests per second, and `sent`, every request including the warm-ups (to divide the
//! server's CPU by).

use std::time::Instant;

use bytes::Bytes;
use fleetmap_objstore::{DataClient, S3Config, S3Uri, get_suffix, put_bytes};
use tokio::task::JoinSet;

use crate::cpu_seconds;

type Res = Result<(), Box<dyn std::error::Error>>;

/// The suffix the worker's and the coordinator's footer reads ask for.
const SUFFIX: u64 = 64 * 1024;
/// Distinct keys the PUTs cycle through.
const PUT_KEYS: usize = 500;
const WARM_UP: usize = 200;

struct Args {
    get: S3Uri,
    put: S3Uri,
    requests: usize,
    in_flight: usize,
    put_bytes: usize,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let (mut get, mut put) = (None, None);
    let (mut requests, mut in_flight, mut put_bytes) = (4000, 16, 10_600);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--get" => get = Some(S3Uri::parse(value).map_err(|e| e.to_string())?),
            "--put" => put = Some(S3Uri::parse_prefix(value).map_err(|e| e.to_string())?),
            "--requests" => requests = number()?,
            "--in-flight" => in_flight = number()?,
            "--put-bytes" => put_bytes = number()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        get: get.ok_or("--get s3://BUCKET/KEY is required")?,
        put: put.ok_or("--put s3://BUCKET/PREFIX is required")?,
        requests: requests.max(1),
        in_flight: in_flight.max(1),
        put_bytes,
    })
}

pub fn main(args: &[String]) -> Res {
    let args = parse(args)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(args))
}

#[derive(Clone, Copy)]
enum Op {
    Get,
    Put,
}

/// Which client sends the requests.
#[derive(Clone, Copy)]
enum Lane {
    Sdk,
    Direct,
}

async fn run(a: Args) -> Res {
    let client = fleetmap_objstore::data_client(&S3Config::from_env()).await;
    if !client.is_direct() {
        return Err("the direct lane is off (FLEETMAP_S3_DIRECT, or no credentials)".into());
    }
    let body = Bytes::from(vec![b'x'; a.put_bytes]);
    let mut line = Vec::new();
    let runs = [
        (Lane::Sdk, Op::Get, "get"),
        (Lane::Sdk, Op::Put, "put"),
        (Lane::Direct, Op::Get, "direct_get"),
        (Lane::Direct, Op::Put, "direct_put"),
    ];
    for (lane, op, name) in runs {
        send(&client, lane, &a, &body, op, WARM_UP).await?;
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        send(&client, lane, &a, &body, op, a.requests).await?;
        let (cpu, secs) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
        line.push(format!(
            "\"{name}_cpu_us\": {:.1}, \"{name}_per_s\": {:.0}",
            cpu * 1e6 / a.requests as f64,
            a.requests as f64 / secs
        ));
    }
    println!(
        "{{\"requests\": {}, \"sent\": {}, \"in_flight\": {}, \"put_bytes\": {}, {}}}",
        a.requests,
        runs.len() * (a.requests + WARM_UP),
        a.in_flight,
        a.put_bytes,
        line.join(", ")
    );
    Ok(())
}

/// `n` requests of one kind, `a.in_flight` at a time; the first error ends the run.
async fn send(client: &DataClient, lane: Lane, a: &Args, body: &Bytes, op: Op, n: usize) -> Res {
    let prefix = a.put.key.trim_end_matches('/');
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (c, body) = (client.clone(), body.clone());
        let (bucket, key) = match op {
            Op::Get => (a.get.bucket.clone(), a.get.key.clone()),
            Op::Put => (a.put.bucket.clone(), format!("{prefix}/{}", i % PUT_KEYS)),
        };
        tasks.spawn(async move {
            let ndjson = "application/x-ndjson";
            match (lane, op) {
                (Lane::Sdk, Op::Get) => get_suffix(&c, &bucket, &key, SUFFIX).await.map(drop),
                (Lane::Sdk, Op::Put) => put_bytes(&c, &bucket, &key, body, ndjson).await,
                (Lane::Direct, Op::Get) => c.get_suffix(&bucket, &key, SUFFIX).await.map(drop),
                (Lane::Direct, Op::Put) => c.put_bytes(&bucket, &key, body, ndjson).await,
            }
        });
        if tasks.len() >= a.in_flight
            && let Some(done) = tasks.join_next().await
        {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
