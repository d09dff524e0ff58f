//! The load test's own stack: the items every run shares, a coordinator with the limit
//! under test, in-process workers, and the cleanup of their queues.

use std::sync::Arc;

use fleetmap_coordinator::{Coordinator, CoordinatorConfig, CoordinatorHandle};
use fleetmap_objstore::local::LocalS3;
use fleetmap_protocol::{Topology, amqp};
use fleetmap_worker::config::WorkerConfig;
use fleetmap_worker::consumer::{self, WorkerStats};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{DATA_BUCKET, LoadtestArgs, RESULTS_BUCKET};

/// The coordinator and workers of one load test.
pub struct Stack {
    pub handle: CoordinatorHandle,
    coordinator: Coordinator,
    coordinator_stop: CancellationToken,
    workers_stop: CancellationToken,
    workers: Vec<JoinHandle<Result<(), consumer::SessionError>>>,
}

impl Stack {
    /// Writes the shared items, then starts the coordinator and workers; returns the
    /// manifest's URI.
    pub async fn start(
        args: &LoadtestArgs,
        topology: &Topology,
        s3: &LocalS3,
    ) -> anyhow::Result<(Stack, String)> {
        let client = s3.data_client().await;
        for b in [DATA_BUCKET, RESULTS_BUCKET] {
            fleetmap_objstore::ensure_bucket(&client, b).await?;
        }
        let gen_cfg = fleetmap_sample::GenConfig {
            devices: args.items,
            days: 1,
            readings_per_day: 24,
            files: Some(args.items),
            prefix: "loadtest/".into(),
            manifest_key: "loadtest/manifest.csv".into(),
            ..Default::default()
        };
        let generated = fleetmap_sample::generate_to_s3(&client, DATA_BUCKET, &gen_cfg).await?;
        let manifest = format!("s3://{DATA_BUCKET}/{}", generated.manifest);

        let coordinator_stop = CancellationToken::new();
        let coordinator = Coordinator::start(
            CoordinatorConfig {
                amqp_url: args.amqp.amqp_url.clone(),
                topology: topology.clone(),
                open_map_run_limit: args.limit,
                state: args.checkpoint.then(|| fleetmap_objstore::S3Uri {
                    bucket: RESULTS_BUCKET.into(),
                    key: "loadtest-state/".into(),
                }),
                children_per_message: CoordinatorConfig::DEFAULT_CHILDREN_PER_MESSAGE,
            },
            client.clone(),
            coordinator_stop.clone(),
        )
        .await?;
        let workers_stop = CancellationToken::new();
        let workers = (1..=args.workers.max(1))
            .map(|i| {
                let mut cfg = WorkerConfig::new(
                    args.amqp.amqp_url.clone(),
                    topology.clone(),
                    format!("worker-{i}"),
                );
                cfg.concurrency = args.worker_concurrency.max(1);
                tokio::spawn(consumer::run(
                    cfg,
                    client.clone(),
                    Arc::new(WorkerStats::default()),
                    workers_stop.child_token(),
                ))
            })
            .collect();
        let stack = Stack {
            handle: coordinator.handle(),
            coordinator,
            coordinator_stop,
            workers_stop,
            workers,
        };
        Ok((stack, manifest))
    }

    /// Stops workers, then the coordinator, then deletes the load test's queues.
    pub async fn stop(self, amqp_url: &str, topology: &Topology) {
        self.workers_stop.cancel();
        for w in self.workers {
            if let Ok(Err(e)) = w.await {
                tracing::warn!(error = %e, "load test worker ended with an error");
            }
        }
        self.coordinator_stop.cancel();
        drop(self.handle);
        let _ = self.coordinator.join().await;
        delete_queues(amqp_url, topology).await;
    }
}

/// Best effort: a load test that cannot clean up still reports what it measured.
pub async fn delete_queues(amqp_url: &str, topology: &Topology) {
    let Ok(conn) = amqp::connect(amqp_url, "fleetmap-loadtest-cleanup").await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        topology.delete(&ch).await;
        // Closing the channel first keeps lapin from logging an error about it.
        let _ = ch.close(200, "load test done".into()).await;
    }
    let _ = conn.close(200, "load test done".into()).await;
}
