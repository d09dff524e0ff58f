//! How to reach an S3-protocol store, and the one place an `aws_sdk_s3::Client` is built.
//!
//! Every process (coordinator, worker, CLI, tests) goes through [`client`], so the retry
//! policy, timeouts, path-style addressing and trusted CAs are the same everywhere.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::config::SharedHttpClient;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::retry::{RetryPartition, TokenBucket};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_http_client::{ConnectorBuilder, proxy::ProxyConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_types::service_config::ServiceConfigKey;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::direct::{DataClient, DirectSettings};

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
    /// PEM file of extra CA certificates to trust for HTTPS, on top of the system's roots: for
    /// an endpoint whose certificate comes from a private CA. Env `AWS_CA_BUNDLE`, the name
    /// the AWS CLI and other SDKs use (the Rust SDK itself does not read it).
    pub ca_bundle: Option<PathBuf>,
    /// Send the data path's GETs and PUTs through aws-sdk-s3 too, instead of the direct lane
    /// ([`crate::direct`]). Env `FLEETMAP_S3_DIRECT=off`.
    pub sdk_only: bool,
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
            .field("ca_bundle", &self.ca_bundle)
            .field("sdk_only", &self.sdk_only)
            .finish()
    }
}

impl S3Config {
    /// Reads `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_CA_BUNDLE` and `FLEETMAP_S3_DIRECT` from the process environment.
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
            ca_bundle: get("AWS_CA_BUNDLE").map(PathBuf::from),
            sdk_only: get(crate::direct::DIRECT_ENV).is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "off" | "0" | "false" | "no"
                )
            }),
        }
    }
}

/// Whether request bodies may be left out of the SigV4 signature (`x-amz-content-sha256:
/// UNSIGNED-PAYLOAD`) for the store at `endpoint` (`None`: AWS S3, always over HTTPS).
///
/// Signing a body hashes all of it with SHA-256 before the request leaves, and the server
/// hashes it again to check: for a worker writing results that was 40 % of its CPU (B3 large,
/// `perf`), and the server paid as much again. The body needs no signature where something
/// else already protects it: TLS on an `https` endpoint, AWS S3 itself included (AWS's Java
/// and Go SDKs leave S3 bodies unsigned over TLS by default), or a loopback endpoint, where it
/// never crosses a network. Every upload still carries the SDK's CRC32 checksum, which the
/// server checks, so a body damaged on the way is refused either way. Over plain `http` to
/// another host the signature is all that ties the body to the credentials, so it stays.
fn payload_is_protected(endpoint: Option<&str>) -> bool {
    let Some(url) = endpoint else { return true };
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if scheme.eq_ignore_ascii_case("https") {
        return true;
    }
    // The authority: up to the path, without userinfo and port; IPv6 hosts are bracketed.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Leaves in-memory request bodies (every upload fleetmap makes) out of the signature, on
/// clients whose endpoint [`payload_is_protected`]. Streaming bodies are left alone: the SDK
/// sends those `aws-chunked` and picks their payload mode itself.
#[derive(Debug)]
struct UnsignedBodies;

impl Intercept for UnsignedBodies {
    fn name(&self) -> &'static str {
        "fleetmap::UnsignedBodies"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context
            .request()
            .body()
            .bytes()
            .is_some_and(|b| !b.is_empty())
        {
            cfg.interceptor_state()
                .store_put(PayloadSigningOverride::UnsignedPayload);
        }
        Ok(())
    }
}

/// [`S3Config::ca_bundle`] names a file that is not a usable PEM bundle of CA certificates.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the CA bundle {path} (AWS_CA_BUNDLE): {reason}")]
pub struct CaBundleError {
    pub path: String,
    pub reason: String,
}

/// Like [`client`], but a CA bundle that cannot be read or parsed is an error, so a process
/// can refuse to start instead of failing every HTTPS call later.
pub async fn try_client(cfg: &S3Config) -> Result<aws_sdk_s3::Client, CaBundleError> {
    Ok(try_data_client(cfg).await?.sdk().clone())
}

/// Like [`client`], plus the direct lane for the data path's small GETs and PUTs (see
/// [`crate::direct`]): what the worker and the coordinator's footer reads use.
pub async fn data_client(cfg: &S3Config) -> DataClient {
    match try_data_client(cfg).await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("{e}; trusting the system's root certificates only");
            let (sdk, settings) = build(cfg, None, None).await;
            DataClient::new(sdk, settings)
        }
    }
}

/// [`data_client`], failing on a CA bundle it cannot use like [`try_client`].
pub async fn try_data_client(cfg: &S3Config) -> Result<DataClient, CaBundleError> {
    let (http, pem) = match &cfg.ca_bundle {
        Some(path) => {
            let pem = read_ca_bundle(path).map_err(|reason| CaBundleError {
                path: path.display().to_string(),
                reason,
            })?;
            (Some(https_client_trusting(path, &pem)?), Some(pem))
        }
        None => (None, None),
    };
    let (sdk, settings) = build(cfg, http, pem.as_deref()).await;
    Ok(DataClient::new(sdk, settings))
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
///
/// With [`S3Config::ca_bundle`] set, HTTPS endpoints may also present certificates from the
/// CAs in that file. If it cannot be used, the error is logged and the client trusts the
/// system's roots only, so calls to a privately certified endpoint fail their TLS handshake;
/// [`try_client`] returns the error instead.
pub async fn client(cfg: &S3Config) -> aws_sdk_s3::Client {
    data_client(cfg).await.sdk().clone()
}

/// The SDK's default HTTPS client (hyper, rustls with aws-lc, proxies from the environment),
/// trusting the CAs in the PEM file at `path` besides the system's roots. Only the trust
/// store differs.
fn https_client_trusting(path: &Path, pem: &[u8]) -> Result<SharedHttpClient, CaBundleError> {
    let err = |reason: String| CaBundleError {
        path: path.display().to_string(),
        reason,
    };
    let pem = pem.to_vec();
    let context = TlsContext::builder()
        .with_trust_store(TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| err(e.to_string()))?;
    Ok(
        aws_smithy_http_client::Builder::new().build_with_connector_fn(
            move |settings, components| {
                let mut conn = ConnectorBuilder::default()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::AwsLc,
                    ))
                    .tls_context(context.clone());
                conn.set_connector_settings(settings.cloned());
                if let Some(components) = components {
                    conn.set_sleep_impl(components.sleep_impl());
                }
                conn.set_proxy_config(Some(ProxyConfig::from_env()));
                conn.build()
            },
        ),
    )
}

/// Reads a PEM bundle and checks it the way the SDK's TLS setup will, which panics (at the
/// first call) on a certificate it cannot parse or use as a trust anchor.
fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".to_owned());
    }
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        store
            .add(cert)
            .map_err(|e| format!("certificate {} is not a usable CA: {e}", i + 1))?;
    }
    Ok(pem)
}

/// The SDK client, and what the direct lane needs to send the same requests to the same place.
async fn build(
    cfg: &S3Config,
    http: Option<SharedHttpClient>,
    ca_pem: Option<&[u8]>,
) -> (aws_sdk_s3::Client, DirectSettings) {
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
    // Also used by the credential providers (STS, SSO, IMDS), as AWS_CA_BUNDLE is elsewhere.
    if let Some(http) = http {
        loader = loader.http_client(http);
    }
    let shared = loader.load().await;

    let mut s3_config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(cfg.force_path_style || cfg.endpoint.is_some())
        .retry_partition(
            RetryPartition::custom("fleetmap-s3")
                .token_bucket(TokenBucket::unlimited())
                .build(),
        );
    let unsigned_bodies = payload_is_protected(cfg.endpoint.as_deref());
    if unsigned_bodies {
        s3_config = s3_config.interceptor(UnsignedBodies);
    }
    let s3_config = s3_config.build();
    let force_path_style = cfg.force_path_style || cfg.endpoint.is_some();
    // Where the SDK client sends S3 calls: our endpoint, else `AWS_ENDPOINT_URL_S3` or the
    // profile's `services` section, else the general endpoint URL (as `aws_sdk_s3::Config`
    // picks it from the shared config).
    let endpoint = cfg.endpoint.clone().or_else(|| {
        shared
            .service_config()
            .and_then(|c| {
                c.load_config(
                    ServiceConfigKey::builder()
                        .service_id("S3")
                        .env("AWS_ENDPOINT_URL")
                        .profile("endpoint_url")
                        .build()
                        .ok()?,
                )
            })
            .or_else(|| shared.endpoint_url().map(str::to_owned))
    });
    let settings = DirectSettings {
        http: direct_http_client(ca_pem),
        credentials: shared.credentials_provider(),
        region: shared
            .region()
            .map_or(DEFAULT_REGION.to_owned(), |r| r.as_ref().to_owned()),
        endpoint,
        force_path_style,
        use_fips: shared.use_fips().unwrap_or(false),
        use_dual_stack: shared.use_dual_stack().unwrap_or(false),
        unsigned_bodies,
        sdk_only: cfg.sdk_only,
    };
    (aws_sdk_s3::Client::from_conf(s3_config), settings)
}

/// The direct lane's HTTP client: the SDK's connect timeout, a stall timeout per read, the
/// same extra CAs, and proxies from the environment as the SDK's client takes them.
fn direct_http_client(ca_pem: Option<&[u8]>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(crate::direct::STALL_TIMEOUT)
        // A redirect would resend the request, signed for one host, to another; the SDK
        // does not follow them either (S3 answers a wrong region with 301).
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fleetmap/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        // Already checked by `read_ca_bundle`.
        if let Ok(certs) = reqwest::Certificate::from_pem_bundle(pem) {
            b = b.tls_certs_merge(certs);
        }
    }
    b.build().unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot build the direct S3 HTTP client; using defaults");
        reqwest::Client::new()
    })
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
    fn from_lookup_reads_the_ca_bundle() {
        let cfg = S3Config::from_lookup(|name| {
            (name == "AWS_CA_BUNDLE").then(|| "/etc/fleetmap/ca.pem".to_owned())
        });
        assert_eq!(cfg.ca_bundle, Some(PathBuf::from("/etc/fleetmap/ca.pem")));
        assert!(format!("{cfg:?}").contains("/etc/fleetmap/ca.pem"));
    }

    #[tokio::test]
    async fn unusable_ca_bundles_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not-a-ca.pem");
        std::fs::write(&not_pem, "just some text\n").unwrap();
        let bad_pem = dir.path().join("bad.pem");
        std::fs::write(
            &bad_pem,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, why) in [
            (dir.path().join("missing.pem"), "No such file"),
            (not_pem, "no PEM certificate"),
            (bad_pem, "not a usable CA"),
        ] {
            let cfg = S3Config {
                endpoint: Some("https://127.0.0.1:9".into()),
                ca_bundle: Some(path.clone()),
                ..S3Config::default()
            };
            let err = try_client(&cfg).await.unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn payloads_are_signed_only_where_nothing_else_protects_them() {
        for (endpoint, unsigned) in [
            (None, true),
            (Some("https://s3.eu-west-1.amazonaws.com"), true),
            (Some("HTTPS://minio.internal:9000/"), true),
            (Some("http://127.0.0.1:9000"), true),
            (Some("http://127.8.9.10"), true),
            (Some("http://localhost:9000/path"), true),
            (Some("http://[::1]:9000"), true),
            (Some("http://user@127.0.0.1:9000"), true),
            (Some("http://minio.internal:9000"), false),
            (Some("http://10.0.0.7:9000"), false),
            (Some("http://[2001:db8::1]:9000"), false),
            (Some("http://localhost.evil.example"), false),
            (Some("http://127.0.0.1.nip.io"), false),
            (Some("127.0.0.1:9000"), false),
        ] {
            assert_eq!(payload_is_protected(endpoint), unsigned, "{endpoint:?}");
        }
    }

    #[test]
    fn from_lookup_without_endpoint_targets_aws() {
        let cfg = S3Config::from_lookup(|_| None);
        assert_eq!(cfg.endpoint, None);
        assert!(!cfg.force_path_style);
        assert!(!cfg.sdk_only, "the direct lane is on unless turned off");
    }

    #[test]
    fn fleetmap_s3_direct_off_keeps_every_call_on_the_sdk() {
        for (value, sdk_only) in [("off", true), ("0", true), (" OFF ", true), ("on", false)] {
            let cfg = S3Config::from_lookup(|name| {
                (name == crate::direct::DIRECT_ENV).then(|| value.to_owned())
            });
            assert_eq!(cfg.sdk_only, sdk_only, "{value:?}");
        }
    }

    #[tokio::test]
    async fn a_data_client_takes_the_direct_lane_only_with_credentials_and_not_when_off() {
        let keys = S3Config {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            access_key_id: Some("id".into()),
            secret_access_key: Some("secret".into()),
            ..S3Config::default()
        };
        assert!(data_client(&keys).await.is_direct());
        let off = S3Config {
            sdk_only: true,
            ..keys.clone()
        };
        assert!(!data_client(&off).await.is_direct());
    }
}
