//! Typed worker configuration. Defaults live here and only here.

use std::time::Duration;

use fleetmap_protocol::Topology;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub topology: Topology,
    /// Names this worker in outcomes, logs and child execution histories.
    pub worker_id: String,
    /// Deliveries processed at once: each is one child execution, holding at most one row
    /// group in memory, or a pack of small ones (10,000 readings at most each) run side by
    /// side.
    pub concurrency: usize,
    /// How long a SIGTERM'd worker waits for in-flight items before giving them back to
    /// the broker (they are redelivered elsewhere). Keep it below Kubernetes'
    /// `terminationGracePeriodSeconds`.
    pub drain_timeout: Duration,
    /// First and longest wait between reconnect attempts when the broker goes away.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// A Parquet row group needing more compressed bytes than this fails its child
    /// execution instead of exhausting memory (Step Functions' 256 MB by default).
    pub max_row_group_bytes: u64,
    /// The child execution timeout (Step Functions' `TimeoutSeconds`): an item still running
    /// after this fails with `States.Timeout` and is acked. It must stay below the broker's
    /// consumer timeout (RabbitMQ's `consumer_timeout`, 30 minutes by default), or the
    /// broker closes the channel first and redelivers the item — a silent loop that ends
    /// only at the delivery limit, with the wrong error.
    pub child_execution_timeout: Duration,
}

impl WorkerConfig {
    pub const DEFAULT_CONCURRENCY: usize = 4;
    /// 25 minutes: under RabbitMQ's default 30-minute consumer timeout, with room for the
    /// outcome to be published and the delivery acked.
    pub const DEFAULT_CHILD_EXECUTION_TIMEOUT: Duration = Duration::from_secs(25 * 60);

    pub fn new(
        amqp_url: impl Into<String>,
        topology: Topology,
        worker_id: impl Into<String>,
    ) -> Self {
        WorkerConfig {
            amqp_url: amqp_url.into(),
            topology,
            worker_id: worker_id.into(),
            concurrency: Self::DEFAULT_CONCURRENCY,
            drain_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            max_row_group_bytes: crate::reader::DEFAULT_MAX_ROW_GROUP_BYTES,
            child_execution_timeout: Self::DEFAULT_CHILD_EXECUTION_TIMEOUT,
        }
    }

    /// `basic.qos` prefetch: exactly the items we can work on, so the broker keeps the rest
    /// for other workers instead of parking them behind a busy one.
    pub fn prefetch(&self) -> u16 {
        u16::try_from(self.concurrency.max(1)).unwrap_or(u16::MAX)
    }
}
