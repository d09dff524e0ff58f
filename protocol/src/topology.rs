//! Queue names and their declaration, shared so both sides declare identical arguments.
//!
//! RabbitMQ refuses a redeclaration whose arguments differ (`PRECONDITION_FAILED`), so the
//! coordinator and every worker declare the same topology from this one function; whoever
//! starts first creates it. All names hang off a prefix (default `fleetmap`) so several
//! deployments — or tests — can share a vhost without seeing each other's messages.
//!
//! ```text
//! {p}.items     quorum, delivery limit, dead-letters to {p}.dlx → {p}.items.dead
//! {p}.outcomes  quorum
//! ```

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Default delivery limit: an item redelivered this many times (its worker crashed or was
/// killed each time) is dead-lettered and reported as a failed child execution.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("declaring {what} {name:?} failed: {source}")]
    Declare {
        what: &'static str,
        name: String,
        #[source]
        source: lapin::Error,
    },
}

/// The names of one deployment's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
    pub delivery_limit: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new("fleetmap")
    }
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Topology {
            prefix: prefix.into(),
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
        }
    }

    pub fn items_queue(&self) -> String {
        format!("{}.items", self.prefix)
    }

    pub fn outcomes_queue(&self) -> String {
        format!("{}.outcomes", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn dead_items_queue(&self) -> String {
        format!("{}.items.dead", self.prefix)
    }

    /// Deletes the queues and the dead-letter exchange, ignoring failures: for tests and
    /// load tests that own a prefix and clean up after themselves, where a queue already
    /// gone is not an error.
    pub async fn delete(&self, channel: &Channel) {
        for q in [
            self.items_queue(),
            self.outcomes_queue(),
            self.dead_items_queue(),
        ] {
            let _ = channel
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                self.dead_letter_exchange().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }

    /// Declares every exchange, queue and binding; idempotent.
    pub async fn declare(&self, channel: &Channel) -> Result<(), TopologyError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let dlx = self.dead_letter_exchange();
        channel
            .exchange_declare(
                ShortString::from(dlx.clone()),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| TopologyError::Declare {
                what: "exchange",
                name: dlx.clone(),
                source,
            })?;

        let dead = self.dead_items_queue();
        self.queue(channel, &dead, durable, quorum()).await?;
        channel
            .queue_bind(
                ShortString::from(dead.clone()),
                ShortString::from(dlx.clone()),
                ShortString::from(dead.clone()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| TopologyError::Declare {
                what: "binding",
                name: dead.clone(),
                source,
            })?;

        let mut items_args = quorum();
        items_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
        );
        items_args.insert("x-dead-letter-exchange".into(), long_string(&dlx));
        items_args.insert("x-dead-letter-routing-key".into(), long_string(&dead));
        self.queue(channel, &self.items_queue(), durable, items_args)
            .await?;
        self.queue(channel, &self.outcomes_queue(), durable, quorum())
            .await?;
        Ok(())
    }

    async fn queue(
        &self,
        channel: &Channel,
        name: &str,
        options: QueueDeclareOptions,
        args: FieldTable,
    ) -> Result<(), TopologyError> {
        channel
            .queue_declare(ShortString::from(name.to_owned()), options, args)
            .await
            .map(|_| ())
            .map_err(|source| TopologyError::Declare {
                what: "queue",
                name: name.to_owned(),
                source,
            })
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_owned()))
}
