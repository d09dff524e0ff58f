//! The coordinator's AMQP session and how it is replaced when the broker goes away.
//!
//! Everything that dies with a connection lives in one [`Link`]: the connection, the
//! confirm-mode publish channel and the two consumers. The event loop holds at most one and,
//! when it breaks, opens a fresh one in a background task — so the API keeps answering while
//! the broker is away — on the schedule of a [`Backoff`].

use std::time::Duration;

use fleetmap_protocol::{Topology, amqp};
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};

use crate::error::CoordinatorError;

/// Reconnects since the process started; a rate above zero means the broker is flapping.
pub const AMQP_RECONNECTS: &str = "fleetmap_coordinator_amqp_reconnects_total";
/// 1 while the coordinator holds a working broker session, 0 while it reconnects.
pub const AMQP_CONNECTED: &str = "fleetmap_coordinator_amqp_connected";

/// Outcomes RabbitMQ may push before the coordinator acks. With `--state-uri` an outcome is
/// acked only once a checkpoint holding it is durable, so the window must cover what
/// arrives during a checkpoint cycle (serialise, write, the spacing after it: a few hundred
/// ms on a large run) or the broker stops delivering and dispatch waits: at 1,000, B4 with
/// state ran 50,000 items in 9.7 s, at 4,000 in 7.6 s. A few hundred bytes each.
const OUTCOME_PREFETCH: u16 = 4_000;
/// A connection attempt to a host that swallows packets would otherwise wait for the OS's
/// TCP timeout (minutes); the next attempt may reach a broker that is back.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

fn amqp_err(what: &'static str) -> impl FnOnce(lapin::Error) -> CoordinatorError {
    move |source| CoordinatorError::Amqp { what, source }
}

/// One broker session. Deliveries and confirms belong to its channels, so none of them can
/// be carried over to the next one.
pub(super) struct Link {
    pub conn: Connection,
    pub publish: Channel,
    pub outcomes: Consumer,
    pub dead: Consumer,
}

impl Link {
    /// Connects, declares the topology (a restarted broker may have lost it, and declaring
    /// is idempotent) and starts consuming outcomes and dead-lettered items.
    pub async fn open(url: &str, topology: &Topology) -> Result<Link, CoordinatorError> {
        let conn = amqp::connect(url, "fleetmap-coordinator").await?;
        let publish = conn
            .create_channel()
            .await
            .map_err(amqp_err("open publish channel"))?;
        topology.declare(&publish).await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_err("enable publisher confirms"))?;
        let consume = conn
            .create_channel()
            .await
            .map_err(amqp_err("open consume channel"))?;
        consume
            .basic_qos(OUTCOME_PREFETCH, BasicQosOptions::default())
            .await
            .map_err(amqp_err("set outcome prefetch"))?;
        let outcomes = consumer(&consume, &topology.outcomes_queue(), "outcomes").await?;
        let dead = consumer(&consume, &topology.dead_items_queue(), "dead-items").await?;
        Ok(Link {
            conn,
            publish,
            outcomes,
            dead,
        })
    }

    /// [`Link::open`] bounded by [`CONNECT_TIMEOUT`].
    pub async fn open_within(url: &str, topology: &Topology) -> Result<Link, CoordinatorError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, Link::open(url, topology)).await {
            Ok(r) => r,
            Err(_) => Err(CoordinatorError::Connect(amqp::ConnectError {
                url: amqp::redact_url(url),
                reason: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            })),
        }
    }

    /// Closes a session that may already be dead without holding up the caller: a broken
    /// socket can take a while to give up.
    pub fn close_in_background(self, reason: &'static str) {
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.conn.close(200, reason.into()))
                    .await;
        });
    }
}

async fn consumer(ch: &Channel, queue: &str, tag: &str) -> Result<Consumer, CoordinatorError> {
    ch.basic_consume(
        ShortString::from(queue.to_owned()),
        ShortString::from(format!("fleetmap-coordinator-{tag}")),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(amqp_err("consume"))
}

/// Exponential backoff with "equal jitter": attempt `n` waits a random time between half and
/// all of `min · 2ⁿ` (capped at `max`), so a fleet that lost the same broker does not knock
/// on it in lockstep when it comes back, yet nobody waits much longer than the schedule says.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The coordinator's schedule: quick first retries (a `stop_app`/`start_app` takes
    /// seconds), and never more than 10 s between tries once the broker is back.
    pub const COORDINATOR: Backoff = Backoff {
        min: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };

    /// The wait before attempt `attempt` (0-based), for a uniform draw `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(31)))
            .min(self.max);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling / 2 + ceiling.div_f64(2.0).mul_f64(unit)
    }

    /// [`Backoff::delay`] with a fresh random draw.
    pub fn delay_now(&self, attempt: u32) -> Duration {
        // A v4 UUID's first 48 bits are random (its version bits come later): a uniform
        // draw in [0, 1) without another dependency.
        let bits = (uuid::Uuid::new_v4().as_u128() >> 80) as u64;
        self.delay(attempt, bits as f64 / (1u64 << 48) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        min: Duration::from_millis(200),
        max: Duration::from_secs(10),
    };

    #[test]
    fn backoff_doubles_until_the_ceiling() {
        let top: Vec<u128> = (0..9).map(|n| B.delay(n, 1.0).as_millis()).collect();
        assert_eq!(
            top,
            [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(B.delay(u32::MAX, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_step() {
        assert_eq!(B.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(B.delay(3, 0.5), Duration::from_millis(1200));
        assert_eq!(B.delay(1, f64::NAN), Duration::from_millis(200));
        assert_eq!(B.delay(1, 7.0), Duration::from_millis(400));
        for n in 0..40 {
            let d = B.delay_now(n % 8);
            let step = B.delay(n % 8, 1.0);
            assert!(d >= step / 2 && d <= step, "{d:?} outside {step:?}");
        }
    }
}
