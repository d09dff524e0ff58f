//! `fleetmap s3-server`: the loopback S3-protocol server as a process of its own, for the
//! multi-process local stack (`deploy/local/`) on machines without Docker or MinIO.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use fleetmap_objstore::local::LocalS3;

use crate::common::shutdown_on_signals;

#[derive(Args, Debug)]
pub struct S3ServerArgs {
    /// Folder holding the buckets (one subfolder each).
    #[arg(long, env = "FLEETMAP_S3_DIR")]
    pub dir: PathBuf,
    /// Address to serve on; loopback only unless you mean it.
    #[arg(long, env = "FLEETMAP_S3_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Buckets to create at start.
    #[arg(long = "bucket")]
    pub buckets: Vec<String>,
}

pub async fn run(args: S3ServerArgs) -> anyhow::Result<ExitCode> {
    let shutdown = shutdown_on_signals();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let server = LocalS3::start_in(dir, args.listen).await?;
    let client = server.client().await;
    for b in &args.buckets {
        fleetmap_objstore::ensure_bucket(&client, b).await?;
    }
    let cfg = server.config();
    // The fixed loopback key pair: print it so scripts can export it.
    println!("AWS_ENDPOINT_URL={}", server.endpoint());
    println!(
        "AWS_ACCESS_KEY_ID={}",
        cfg.access_key_id.unwrap_or_default()
    );
    println!(
        "AWS_SECRET_ACCESS_KEY={}",
        cfg.secret_access_key.unwrap_or_default()
    );
    println!("AWS_REGION={}", cfg.region.unwrap_or_default());
    tracing::info!(endpoint = %server.endpoint(), root = %server.root().display(), "S3-protocol server listening");
    shutdown.cancelled().await;
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
