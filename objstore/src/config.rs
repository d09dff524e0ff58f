//! How to reach an S3-protocol store, and the one place an `aws_sdk_s3::Client` is built.
//!
//! Every process (coordinator, worker, CLI, tests) goes through [`client`], so the retry
//! policy, timeouts and path-style addressing are the same everywhere.

use std::fmt;
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::retry::{RetryPartition, TokenBucket};

/// Region used when neither the config nor the environment names one; S3-protocol servers
/// other than AWS ignore it, but SigV4 signing needs some region.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Attempts per S3 call (first try plus retries) for throttling, 5xx and connection errors.
///
/// Ten, not the SDK's three: a worker has no cheaper fallback than failing the whole child
/// execution, and S3 answers bursts with `503 SlowDown` until its partitions scale. At a 20 %
/// fault rate three attempts lose one call in 125 (two in the ~250 calls of the fault test's
/// run); ten lose one in ~10⁷. With [`INITIAL_BACKOFF`] and [`MAX_BACKOFF`] a call gives up
/// after at most ~33 s of waiting (about half that on average, the jitter being uniform),
/// which bounds how long an item waits out a real outage before it fails as retryable.
pub const MAX_ATTEMPTS: u32 = 10;

/// Upper bound of the first retry's delay. The SDK waits a uniformly random fraction of
/// `INITIAL_BACKOFF × 2^retry` (full jitter), so retries from many workers spread out instead
/// of arriving at S3 in waves.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Cap of one retry delay (before jitter).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Config for reaching any S3-protocol store (AWS S3, MinIO, the loopback server).
#[derive(Clone, Default)]
pub struct S3Config {
    /// Custom endpoint such as `http://127.0.0.1:9000`; `None` means AWS S3.
    pub endpoint: Option<String>,
    /// Region; `None` means the AWS default chain, then [`DEFAULT_REGION`].
    pub region: Option<String>,
    /// Static access key; used only together with `secret_access_key`.
    pub access_key_id: Option<String>,
    /// Static secret key; never printed.
    pub secret_access_key: Option<String>,
    /// Address buckets as `endpoint/bucket/key` rather than `bucket.endpoint/key`; MinIO and
    /// the loopback server need this. Always applied when `endpoint` is set.
    pub force_path_style: bool,
}

/// Written by hand so the secret never reaches a log line.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("force_path_style", &self.force_path_style)
            .finish()
    }
}

impl S3Config {
    /// Reads `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` from the process environment.
    pub fn from_env() -> S3Config {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`S3Config::from_env`] but with the environment passed in, so it can be tested
    /// without mutating the process environment. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> S3Config {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let endpoint = get("AWS_ENDPOINT_URL");
        S3Config {
            force_path_style: endpoint.is_some(),
            endpoint,
            region: get("AWS_REGION"),
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
        }
    }
}

/// Builds an S3 client from `cfg`.
///
/// Static credentials are used when both keys are set; otherwise the standard AWS chain
/// (environment, profile, web identity, ECS, IMDS). The SDK's standard retry strategy is kept
/// and made explicit, because workers lean on it to ride out S3 throttling (`SlowDown`, which
/// it classifies as a throttling error) and 5xx answers: see [`MAX_ATTEMPTS`].
///
/// The standard strategy's client-side retry quota is switched off (an unlimited token bucket
/// in a retry partition of this client's own). By default every client in the process that
/// talks to the same region shares one 500-token bucket; each retry takes 5 tokens (10 after
/// a timeout), and once it is empty the SDK stops retrying altogether and hands the 503 to
/// the caller. Measured through the test fault proxy with 32 calls in flight, it holds at
/// 20 % throttling, but at 35 % one call in ten fails that way and at 50 % one in three,
/// where ten attempts alone lose about one in a thousand. For fleetmap each such call is a
/// failed child execution to redrive, which costs S3 more than the retries saved, and one
/// caller's failing calls (a bad bucket, the coordinator's) would drain the quota of unrelated
/// ones. The retry storm the quota guards against cannot build up here: calls in flight are
/// bounded by prefetch, item concurrency and fetches per item, each backs off exponentially
/// with jitter, and each gives up after [`MAX_ATTEMPTS`].
pub async fn client(cfg: &S3Config) -> aws_sdk_s3::Client {
    let region = RegionProviderChain::first_try(cfg.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::from_static(DEFAULT_REGION));

    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(INITIAL_BACKOFF)
                .with_max_backoff(MAX_BACKOFF),
        )
        // Only the connect is bounded: a large ranged GET may legitimately take long, and
        // the SDK's stalled-stream protection already catches a body that stops flowing.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .build(),
        );
    if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            id.clone(),
            secret.clone(),
            None,
            None,
            "fleetmap-static",
        ));
    }
    if let Some(endpoint) = &cfg.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    let shared = loader.load().await;

    let s3_config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(cfg.force_path_style || cfg.endpoint.is_some())
        .retry_partition(
            RetryPartition::custom("fleetmap-s3")
                .token_bucket(TokenBucket::unlimited())
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(s3_config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_print_the_secret() {
        let cfg = S3Config {
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI-very-secret".into()),
            ..S3Config::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("wJalrXUtnFEMI-very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
    }

    #[test]
    fn from_lookup_sets_path_style_when_an_endpoint_is_given() {
        let env = |name: &str| match name {
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:9000".to_owned()),
            "AWS_REGION" => Some("eu-west-1".to_owned()),
            "AWS_ACCESS_KEY_ID" => Some("id".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some(String::new()),
            _ => None,
        };
        let cfg = S3Config::from_lookup(env);
        assert_eq!(cfg.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(cfg.force_path_style);
        assert_eq!(cfg.region.as_deref(), Some("eu-west-1"));
        assert_eq!(cfg.access_key_id.as_deref(), Some("id"));
        assert_eq!(cfg.secret_access_key, None, "empty counts as unset");
    }

    #[test]
    fn from_lookup_without_endpoint_targets_aws() {
        let cfg = S3Config::from_lookup(|_| None);
        assert_eq!(cfg.endpoint, None);
        assert!(!cfg.force_path_style);
    }
}
