use fleetmap_protocol::amqp::ConnectError;
use fleetmap_protocol::{EncodeError, TopologyError};

/// Everything the coordinator's API can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("RabbitMQ {what} failed: {source}")]
    Amqp {
        what: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// The broker cancelled one of the coordinator's consumers (the queue was deleted, or
    /// the node is going down): the session is treated as lost.
    #[error("RabbitMQ ended the coordinator's consumer of {queue}")]
    ConsumerEnded { queue: String },
    #[error("encoding an item of run {run}: {source}")]
    Encode {
        run: String,
        #[source]
        source: EncodeError,
    },
    /// The run request itself is wrong; nothing was created.
    #[error("invalid map run request: {0}")]
    InvalidRequest(String),
    /// The request is valid but not in the run's current state (abort a finished run…).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("no map run with id {0:?}")]
    UnknownRun(String),
    #[error("the coordinator has stopped")]
    Stopped,
}

impl CoordinatorError {
    /// Whether retrying the same call later may succeed (broker trouble), as opposed to a
    /// request that will always be refused.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CoordinatorError::Connect(_)
                | CoordinatorError::Amqp { .. }
                | CoordinatorError::ConsumerEnded { .. }
                | CoordinatorError::Topology(_)
                | CoordinatorError::Stopped
        )
    }
}
