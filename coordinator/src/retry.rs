//! Step Functions `Retry` rules for child executions: pure arithmetic, no clock.
//!
//! The first retrier whose `ErrorEquals` matches the error decides; each retrier counts its
//! own attempts. Delays grow by `BackoffRate`, are capped by `MaxDelaySeconds`, and with
//! `JitterStrategy: FULL` are drawn uniformly from `[0, delay]` so a burst of failures does
//! not come back as a burst of retries.

use serde::{Deserialize, Serialize};

use fleetmap_protocol::errors;

pub const STATES_ALL: &str = "States.ALL";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JitterStrategy {
    #[default]
    None,
    Full,
}

/// One entry of a `Retry` array, with Step Functions' field names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Retrier {
    pub error_equals: Vec<String>,
    #[serde(default = "default_interval")]
    pub interval_seconds: f64,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff")]
    pub backoff_rate: f64,
    #[serde(default)]
    pub max_delay_seconds: Option<f64>,
    #[serde(default)]
    pub jitter_strategy: JitterStrategy,
}

fn default_interval() -> f64 {
    1.0
}
fn default_max_attempts() -> u32 {
    3
}
fn default_backoff() -> f64 {
    2.0
}

impl Retrier {
    /// Checks the limits Step Functions enforces, so a bad policy is refused at start.
    pub fn validate(&self) -> Result<(), String> {
        if self.error_equals.is_empty() {
            return Err("Retry ErrorEquals must name at least one error".into());
        }
        if !(self.interval_seconds.is_finite() && self.interval_seconds >= 0.0)
            || self.interval_seconds > 99_999_999.0
        {
            return Err(format!(
                "Retry IntervalSeconds must be between 0 and 99999999, got {}",
                self.interval_seconds
            ));
        }
        if self.max_attempts > 99_999_999 {
            return Err(format!(
                "Retry MaxAttempts must be at most 99999999, got {}",
                self.max_attempts
            ));
        }
        if !(self.backoff_rate.is_finite() && self.backoff_rate >= 1.0) {
            return Err(format!(
                "Retry BackoffRate must be at least 1.0, got {}",
                self.backoff_rate
            ));
        }
        if let Some(m) = self.max_delay_seconds
            && !(m.is_finite() && m > 0.0)
        {
            return Err(format!("Retry MaxDelaySeconds must be positive, got {m}"));
        }
        Ok(())
    }

    /// Whether this retrier handles `error`. `States.ALL` matches everything except
    /// `States.Runtime` (as in Step Functions); `States.TaskFailed` matches any task error
    /// except a timeout, which includes fleetmap's own `FleetMap.*` names.
    pub fn matches(&self, error: &str) -> bool {
        self.error_equals.iter().any(|e| {
            e == error
                || (e == STATES_ALL && error != errors::RUNTIME)
                || (e == errors::TASK_FAILED
                    && error != errors::TIMEOUT
                    && error != errors::RUNTIME
                    && (error.starts_with("FleetMap.") || error == errors::TASK_FAILED))
        })
    }

    /// Delay before retry number `n` (1-based), given a uniform draw `u` in `[0, 1)`.
    pub fn delay_ms(&self, n: u32, u: f64) -> i64 {
        let exp = self
            .backoff_rate
            .powi(n.saturating_sub(1).min(1_000) as i32);
        let mut secs = self.interval_seconds * exp;
        if let Some(max) = self.max_delay_seconds {
            secs = secs.min(max);
        }
        if self.jitter_strategy == JitterStrategy::Full {
            secs *= u.clamp(0.0, 1.0);
        }
        (secs.min(1e9) * 1000.0).round() as i64
    }
}

/// Picks the retrier for `error`: its index, if it still has attempts left after `used`.
pub fn choose(retry: &[Retrier], error: &str, used: &[u32]) -> Option<usize> {
    let i = retry.iter().position(|r| r.matches(error))?;
    let used = used.get(i).copied().unwrap_or(0);
    (used < retry[i].max_attempts).then_some(i)
}

/// A small deterministic draw in `[0, 1)` for jitter, from values the run already has, so
/// the state machine stays pure and replays identically.
pub fn unit_draw(seed: u64, execution: u32, attempt: u32) -> f64 {
    let mut x = seed ^ (u64::from(execution) << 32) ^ u64::from(attempt) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retrier(errors: &[&str]) -> Retrier {
        Retrier {
            error_equals: errors.iter().map(|s| s.to_string()).collect(),
            interval_seconds: 1.0,
            max_attempts: 3,
            backoff_rate: 2.0,
            max_delay_seconds: None,
            jitter_strategy: JitterStrategy::None,
        }
    }

    #[test]
    fn delays_back_off_and_cap() {
        let mut r = retrier(&["States.ALL"]);
        assert_eq!(
            [r.delay_ms(1, 0.5), r.delay_ms(2, 0.5), r.delay_ms(3, 0.5)],
            [1000, 2000, 4000]
        );
        r.max_delay_seconds = Some(3.0);
        assert_eq!(r.delay_ms(3, 0.5), 3000);
        r.jitter_strategy = JitterStrategy::Full;
        assert_eq!(r.delay_ms(3, 0.5), 1500);
        assert_eq!(r.delay_ms(3, 0.0), 0);
    }

    #[test]
    fn matching_follows_step_functions() {
        assert!(retrier(&["States.ALL"]).matches("FleetMap.StorageError"));
        assert!(!retrier(&["States.ALL"]).matches("States.Runtime"));
        assert!(retrier(&["States.TaskFailed"]).matches("FleetMap.ObjectNotFound"));
        assert!(!retrier(&["States.TaskFailed"]).matches("States.Timeout"));
        assert!(retrier(&["FleetMap.StorageError"]).matches("FleetMap.StorageError"));
        assert!(!retrier(&["FleetMap.StorageError"]).matches("FleetMap.InvalidInput"));
    }

    #[test]
    fn first_matching_retrier_decides_and_counts_its_attempts() {
        let rs = vec![
            retrier(&["FleetMap.StorageError"]),
            retrier(&["States.ALL"]),
        ];
        assert_eq!(choose(&rs, "FleetMap.StorageError", &[0, 0]), Some(0));
        assert_eq!(choose(&rs, "FleetMap.StorageError", &[3, 0]), None);
        assert_eq!(choose(&rs, "FleetMap.InvalidInput", &[3, 0]), Some(1));
        assert_eq!(choose(&rs, "States.Runtime", &[0, 0]), None);
    }

    #[test]
    fn bad_policies_are_refused() {
        let mut r = retrier(&[]);
        assert!(r.validate().is_err());
        r = retrier(&["States.ALL"]);
        r.backoff_rate = 0.5;
        assert!(r.validate().unwrap_err().contains("BackoffRate"));
        r.backoff_rate = 2.0;
        r.interval_seconds = -1.0;
        assert!(r.validate().unwrap_err().contains("IntervalSeconds"));
    }

    #[test]
    fn draws_are_uniformish_and_deterministic() {
        let draws: Vec<f64> = (0..1000).map(|i| unit_draw(7, i, 1)).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "{mean}");
        assert_eq!(unit_draw(7, 3, 1), unit_draw(7, 3, 1));
    }
}
