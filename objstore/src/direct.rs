//! The data path's three hot calls — a suffix GET, a ranged GET, a small PutObject — sent
//! straight over HTTP, signed with the SDK's own SigV4 signer.
//!
//! # Why
//!
//! A tiny child execution is three S3 requests (the coordinator's footer read, the worker's
//! GET of the file and its PUT of the records), and through aws-sdk-s3 each cost ~200–300 µs
//! of client CPU on the bench machine (`fleetmap-bench s3-requests`), most of it the SDK's
//! per-call orchestration: building the operation's runtime components and config layers,
//! running a dozen interceptors and the S3 endpoint rules, and moving its large futures
//! around. The same signed GET over a pooled HTTP client costs ~50 µs. For small files that
//! per-call overhead, not Parquet or the anomaly kernel, is what a worker spends its CPU on.
//!
//! # What is kept from the SDK
//!
//! Everything that decides *what* is sent stays the SDK's: the endpoint and signing region
//! come from aws-sdk-s3's own endpoint resolver (path style, FIPS, dual-stack, partitions),
//! resolved once per bucket; credentials come from the same provider chain, cached until
//! shortly before they expire; requests are signed by `aws-sigv4` as the SDK signs them;
//! uploads carry the same CRC32 checksum and whole-object downloads are checked against the
//! store's checksum; failures are retried with the same policy ([`MAX_ATTEMPTS`], full-jitter
//! backoff from [`INITIAL_BACKOFF`] to [`MAX_BACKOFF`], the same retryable statuses and codes)
//! and end in the same [`ObjStoreError`]s as [`crate::ops`]. A bucket whose endpoint needs
//! anything else (S3 Express session auth, SigV4a for multi-region access points, endpoint
//! headers) and keys with `.`/`..` path segments are sent through the SDK instead, as is
//! everything when `FLEETMAP_S3_DIRECT=off`.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, Range};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_checksums::ChecksumAlgorithm;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::Document;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{INITIAL_BACKOFF, MAX_ATTEMPTS, MAX_BACKOFF};
use crate::error::{BoxError, RETRYABLE_CODES, SdkFailure};
use crate::{ObjStoreError, ops};

/// Environment variable that turns the direct lane off (`off`, `0`, `false`, `no`): every call
/// then goes through aws-sdk-s3, as everything else does.
pub const DIRECT_ENV: &str = "FLEETMAP_S3_DIRECT";

/// Credentials are refreshed this long before they expire, as the SDK's identity cache does.
const CREDENTIALS_BUFFER: Duration = Duration::from_secs(300);

/// A read that makes no progress for this long fails the attempt (it is retried): the
/// counterpart of the SDK's stalled-stream protection, which gives up on a body that moves
/// less than a byte a second for 20 s.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Headers whose values name a whole-object checksum, by algorithm.
const CHECKSUM_HEADERS: [(&str, ChecksumAlgorithm); 5] = [
    ("x-amz-checksum-crc32", ChecksumAlgorithm::Crc32),
    ("x-amz-checksum-crc32c", ChecksumAlgorithm::Crc32c),
    ("x-amz-checksum-crc64nvme", ChecksumAlgorithm::Crc64Nvme),
    ("x-amz-checksum-sha1", ChecksumAlgorithm::Sha1),
    ("x-amz-checksum-sha256", ChecksumAlgorithm::Sha256),
];

/// An aws-sdk-s3 client with a direct lane for the data path's small GETs and PUTs.
///
/// It dereferences to the SDK [`Client`], so every other call (multipart uploads, listing,
/// HEAD) is made exactly as before; only [`DataClient::get_suffix`],
/// [`DataClient::get_range`] and [`DataClient::put_bytes`] take the direct lane.
#[derive(Clone)]
pub struct DataClient {
    sdk: Client,
    direct: Option<Arc<Direct>>,
}

impl fmt::Debug for DataClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataClient")
            .field("direct", &self.direct.is_some())
            .finish_non_exhaustive()
    }
}

/// An SDK client alone: every call goes through the SDK.
impl From<Client> for DataClient {
    fn from(sdk: Client) -> Self {
        DataClient { sdk, direct: None }
    }
}

impl Deref for DataClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.sdk
    }
}

/// What [`DataClient::new`] needs besides the SDK client.
pub(crate) struct DirectSettings {
    pub http: reqwest::Client,
    pub credentials: Option<SharedCredentialsProvider>,
    pub region: String,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub use_fips: bool,
    pub use_dual_stack: bool,
    pub unsigned_bodies: bool,
    pub sdk_only: bool,
}

impl DataClient {
    /// The direct lane over `settings`, unless the config turns it off
    /// ([`crate::S3Config::sdk_only`]) or there are no credentials to sign with (anonymous
    /// access stays with the SDK).
    pub(crate) fn new(sdk: Client, settings: DirectSettings) -> DataClient {
        let direct = match (&settings.credentials, settings.sdk_only) {
            (Some(credentials), false) => Some(Arc::new(Direct {
                credentials: credentials.clone(),
                cached: RwLock::new(None),
                refresh: tokio::sync::Mutex::new(()),
                routes: Mutex::new(HashMap::new()),
                resolver: DefaultResolver::new(),
                settings,
            })),
            _ => None,
        };
        DataClient { sdk, direct }
    }

    /// Whether calls may take the direct lane (otherwise all go through the SDK).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The SDK client, for every other call.
    pub fn sdk(&self) -> &Client {
        &self.sdk
    }

    /// [`ops::get_suffix`] through the direct lane where it can serve the object.
    pub async fn get_suffix(
        &self,
        bucket: &str,
        key: &str,
        n: u64,
    ) -> Result<(Bytes, u64), ObjStoreError> {
        if n > 0
            && let Some((d, route)) = self.lane(bucket, key).await
        {
            match d.get(&route, bucket, key, &format!("bytes=-{n}")).await? {
                Got::Body { bytes, total } => {
                    return ops::suffix_checked(bucket, key, n, bytes, total);
                }
                // An empty object has no last bytes; the SDK path answers with its HEAD.
                Got::Unsatisfiable => {}
            }
        }
        ops::get_suffix(&self.sdk, bucket, key, n).await
    }

    /// [`ops::get_range`] through the direct lane where it can serve the object.
    pub async fn get_range(
        &self,
        bucket: &str,
        key: &str,
        range: Range<u64>,
    ) -> Result<Bytes, ObjStoreError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        if let Some((d, route)) = self.lane(bucket, key).await {
            let header = format!("bytes={}-{}", range.start, range.end - 1);
            match d.get(&route, bucket, key, &header).await? {
                Got::Body { bytes, .. } => return Ok(bytes),
                Got::Unsatisfiable => {
                    return Err(ObjStoreError::Get {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                        retryable: false,
                        source: Box::new(SdkFailure(format!(
                            "HTTP 416 InvalidRange: {header} is outside the object"
                        ))),
                    });
                }
            }
        }
        ops::get_range(&self.sdk, bucket, key, range).await
    }

    /// [`ops::put_bytes`] through the direct lane where it can serve the bucket.
    pub async fn put_bytes(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), ObjStoreError> {
        if let Some((d, route)) = self.lane(bucket, key).await {
            return d.put(&route, bucket, key, body, content_type).await;
        }
        ops::put_bytes(&self.sdk, bucket, key, body, content_type).await
    }

    async fn lane(&self, bucket: &str, key: &str) -> Option<(&Direct, Arc<Route>)> {
        let d = self.direct.as_deref()?;
        if has_dot_segment(key) {
            return None;
        }
        Some((d, d.route(bucket).await?))
    }
}

/// Where and how requests for one bucket go, from the SDK's endpoint rules.
#[derive(Debug)]
struct Route {
    /// The bucket's URL without a trailing slash: `http://host:9000/bucket` (path style) or
    /// `https://bucket.s3.eu-west-1.amazonaws.com`.
    base: String,
    /// The `Host` header, exactly as signed.
    host: String,
    signing_region: String,
    signing_name: String,
}

struct Direct {
    settings: DirectSettings,
    credentials: SharedCredentialsProvider,
    cached: RwLock<Option<Credentials>>,
    /// One refresh at a time; callers that find fresh credentials after waiting use them.
    refresh: tokio::sync::Mutex<()>,
    /// Per bucket: its route, or `None` when the SDK must serve it.
    routes: Mutex<HashMap<String, Option<Arc<Route>>>>,
    resolver: DefaultResolver,
}

/// A GET's answer.
enum Got {
    /// The bytes, and the object's length when the store said it (`Content-Range`).
    Body { bytes: Bytes, total: Option<u64> },
    /// 416: the range is outside the object (or the object is empty).
    Unsatisfiable,
}

/// One attempt's failure, before it becomes an [`ObjStoreError`].
struct Failure {
    retryable: bool,
    not_found: bool,
    /// A retryable failure that the lane still does not repeat itself: a body that fails its
    /// checksum reads the same on every attempt when the object is torn, so the caller (who
    /// may hold another copy) decides, as with the SDK, which does not retry those either.
    final_here: bool,
    source: BoxError,
}

impl Failure {
    fn transport(e: reqwest::Error) -> Failure {
        Failure {
            // Anything that failed in flight (connect, timeout, broken body) may succeed on a
            // fresh connection; a request reqwest refused to build would fail again.
            retryable: !e.is_builder(),
            not_found: false,
            final_here: false,
            source: Box::new(e),
        }
    }
}

impl Direct {
    async fn route(&self, bucket: &str) -> Option<Arc<Route>> {
        if let Some(r) = self.routes.lock().expect("routes lock").get(bucket) {
            return r.clone();
        }
        let route = self.resolve(bucket).await.map(Arc::new);
        if route.is_none() {
            tracing::debug!(bucket, "S3 endpoint needs the SDK; its calls go through it");
        }
        self.routes
            .lock()
            .expect("routes lock")
            .insert(bucket.to_owned(), route.clone());
        route
    }

    async fn resolve(&self, bucket: &str) -> Option<Route> {
        let s = &self.settings;
        let params = Params::builder()
            .bucket(bucket)
            .region(s.region.clone())
            .use_fips(s.use_fips)
            .use_dual_stack(s.use_dual_stack)
            .force_path_style(s.force_path_style)
            .set_endpoint(s.endpoint.clone())
            .build()
            .ok()?;
        let endpoint = self.resolver.resolve_endpoint(&params).await.ok()?;
        if endpoint.headers().next().is_some() {
            return None;
        }
        // The first auth scheme the rules name is the one the SDK would use.
        let scheme = match endpoint.properties().get("authSchemes") {
            Some(Document::Array(schemes)) => match schemes.first() {
                Some(Document::Object(o)) => Some(o),
                _ => return None,
            },
            None => None,
            Some(_) => return None,
        };
        let text = |name: &str| match scheme.and_then(|o| o.get(name)) {
            Some(Document::String(v)) => Some(v.clone()),
            _ => None,
        };
        if scheme.is_some() && text("name").as_deref() != Some("sigv4") {
            return None;
        }
        let url: http::Uri = endpoint.url().parse().ok()?;
        let host = url.authority()?.as_str().to_owned();
        // The query string, if a rule ever adds one, would have to be signed with the key.
        if url.query().is_some() || host.contains('@') {
            return None;
        }
        Some(Route {
            base: endpoint.url().trim_end_matches('/').to_owned(),
            host,
            signing_region: text("signingRegion").unwrap_or_else(|| s.region.clone()),
            signing_name: text("signingName").unwrap_or_else(|| "s3".to_owned()),
        })
    }

    /// The provider's credentials, fetched again only when they are about to expire.
    async fn credentials(&self) -> Result<Credentials, Failure> {
        let fresh = |c: &Credentials| {
            c.expiry()
                .is_none_or(|t| t > SystemTime::now() + CREDENTIALS_BUFFER)
        };
        if let Some(c) = self.cached.read().expect("credentials lock").as_ref()
            && fresh(c)
        {
            return Ok(c.clone());
        }
        let _one = self.refresh.lock().await;
        if let Some(c) = self.cached.read().expect("credentials lock").as_ref()
            && fresh(c)
        {
            return Ok(c.clone());
        }
        let c = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| Failure {
                // The chain's own errors say whether a retry can help; most cannot.
                retryable: false,
                not_found: false,
                final_here: false,
                source: format!("no credentials to sign with: {e}").into(),
            })?;
        *self.cached.write().expect("credentials lock") = Some(c.clone());
        Ok(c)
    }

    /// Headers for one request: the caller's plus the SigV4 ones.
    fn signed(
        &self,
        creds: Credentials,
        route: &Route,
        method: &str,
        url: &str,
        mut headers: HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<HeaderMap, Failure> {
        let mut settings = SigningSettings::default();
        // As the SDK signs S3: the path is sent encoded once and never normalised.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity: Identity = creds.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&route.signing_region)
            .name(&route.signing_name)
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| local_failure(format!("cannot sign: {e}")))?
            .into();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_str(&route.host)
                .map_err(|e| local_failure(format!("bad host {}: {e}", route.host)))?,
        );
        let body = match body {
            None => SignableBody::Bytes(&[]),
            Some(_) if self.settings.unsigned_bodies => SignableBody::UnsignedPayload,
            Some(b) => SignableBody::Bytes(b),
        };
        let pairs = headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable = SignableRequest::new(method, url, pairs, body)
            .map_err(|e| local_failure(format!("cannot sign {url}: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| local_failure(format!("cannot sign {url}: {e}")))?
            .into_parts();
        let (add, _query) = instructions.into_parts();
        for h in add {
            let name = HeaderName::from_static(h.name());
            let mut value = HeaderValue::from_str(h.value())
                .map_err(|e| local_failure(format!("bad signature header: {e}")))?;
            value.set_sensitive(h.sensitive());
            headers.insert(name, value);
        }
        Ok(headers)
    }

    async fn get(
        &self,
        route: &Route,
        bucket: &str,
        key: &str,
        range: &str,
    ) -> Result<Got, ObjStoreError> {
        let url = object_url(route, key);
        let result = self
            .with_retries(|| async {
                let creds = self.credentials().await?;
                let mut headers = HeaderMap::new();
                headers.insert(
                    http::header::RANGE,
                    HeaderValue::from_str(range).map_err(|e| local_failure(e.to_string()))?,
                );
                // Ask for the object's checksum, which the store sends with a whole object.
                headers.insert("x-amz-checksum-mode", HeaderValue::from_static("ENABLED"));
                let headers = self.signed(creds, route, "GET", &url, headers, None)?;
                let resp = self
                    .settings
                    .http
                    .get(&url)
                    .headers(headers)
                    .send()
                    .await
                    .map_err(Failure::transport)?;
                let status = resp.status().as_u16();
                if status == 416 {
                    return Ok(Got::Unsatisfiable);
                }
                if !resp.status().is_success() {
                    return Err(answer_failure(resp).await);
                }
                let total = resp
                    .headers()
                    .get(http::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|r| r.rsplit_once('/'))
                    .and_then(|(_, t)| t.parse::<u64>().ok());
                let expected = whole_object_checksum(resp.headers(), status, total);
                let bytes = resp.bytes().await.map_err(Failure::transport)?;
                if let Some((algorithm, expected)) = expected {
                    check(algorithm, &expected, &bytes)?;
                }
                Ok(Got::Body { bytes, total })
            })
            .await;
        result.map_err(|f| {
            if f.not_found {
                ObjStoreError::NotFound {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                }
            } else {
                ObjStoreError::Get {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    retryable: f.retryable,
                    source: f.source,
                }
            }
        })
    }

    async fn put(
        &self,
        route: &Route,
        bucket: &str,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), ObjStoreError> {
        let url = object_url(route, key);
        // The SDK's default for uploads: a CRC32 of the body, which the store verifies.
        let mut crc = ChecksumAlgorithm::Crc32.into_impl();
        crc.update(&body);
        let crc = crc.header_value();
        let result = self
            .with_retries(|| async {
                let creds = self.credentials().await?;
                let mut headers = HeaderMap::new();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_str(content_type)
                        .map_err(|e| local_failure(format!("content type: {e}")))?,
                );
                headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                headers.insert("x-amz-checksum-crc32", crc.clone());
                let headers = self.signed(creds, route, "PUT", &url, headers, Some(&body))?;
                let resp = self
                    .settings
                    .http
                    .put(&url)
                    .headers(headers)
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(Failure::transport)?;
                if !resp.status().is_success() {
                    return Err(answer_failure(resp).await);
                }
                Ok(())
            })
            .await;
        result.map_err(|f| ObjStoreError::Put {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            retryable: f.retryable,
            source: f.source,
        })
    }

    /// Runs `attempt` up to [`MAX_ATTEMPTS`] times while it fails retryably, waiting a
    /// uniformly random fraction of `INITIAL_BACKOFF × 2^retry` (capped at [`MAX_BACKOFF`])
    /// in between: the SDK's standard strategy.
    async fn with_retries<T, F, Fut>(&self, attempt: F) -> Result<T, Failure>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let failure = match attempt().await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            if !failure.retryable || failure.final_here || tries >= MAX_ATTEMPTS {
                return Err(failure);
            }
            let cap = INITIAL_BACKOFF
                .saturating_mul(1 << (tries - 1).min(16))
                .min(MAX_BACKOFF);
            let wait = cap.mul_f64(rand::random::<f64>());
            tracing::debug!(attempt = tries, ?wait, error = %failure.source, "S3 call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

fn local_failure(reason: String) -> Failure {
    Failure {
        retryable: false,
        not_found: false,
        final_here: false,
        source: reason.into(),
    }
}

/// URL parsers resolve `.` and `..` segments, which would change the object addressed.
fn has_dot_segment(key: &str) -> bool {
    key.split('/').any(|s| s == "." || s == "..")
}

/// `route.base/key`, the key percent-encoded as the SDK encodes a greedy label: everything
/// but unreserved characters and `/`.
fn object_url(route: &Route, key: &str) -> String {
    let mut url = String::with_capacity(route.base.len() + 1 + key.len() * 3 / 2);
    url.push_str(&route.base);
    url.push('/');
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The store's checksum of the object when this answer holds all of it (S3 sends one only
/// then); multipart objects' composite checksums (`…-N`) cover parts, not the bytes.
fn whole_object_checksum(
    headers: &HeaderMap,
    status: u16,
    total: Option<u64>,
) -> Option<(ChecksumAlgorithm, HeaderValue)> {
    let len: Option<u64> = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if status != 200 && total != len {
        return None;
    }
    CHECKSUM_HEADERS.iter().find_map(|(name, algorithm)| {
        let v = headers.get(*name)?;
        (!v.as_bytes().contains(&b'-')).then(|| (*algorithm, v.clone()))
    })
}

fn check(algorithm: ChecksumAlgorithm, expected: &HeaderValue, body: &[u8]) -> Result<(), Failure> {
    let mut c = algorithm.into_impl();
    c.update(body);
    let actual = c.header_value();
    if actual == *expected {
        return Ok(());
    }
    let decode = |v: &HeaderValue| {
        Bytes::from(
            aws_smithy_types::base64::decode(v.to_str().unwrap_or_default()).unwrap_or_default(),
        )
    };
    Err(Failure {
        // A torn read; the store's copy may be whole (see `ObjStoreError::is_checksum_mismatch`).
        retryable: true,
        not_found: false,
        final_here: true,
        source: Box::new(
            aws_smithy_checksums::body::validate::Error::ChecksumMismatch {
                expected: decode(expected),
                actual: decode(&actual),
            },
        ),
    })
}

/// A store's error answer: status, S3 code and message, as [`crate::error::sdk_failure`]
/// words them, and whether the SDK would retry it.
async fn answer_failure(resp: reqwest::Response) -> Failure {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{name}>"))? + start;
        Some(body[start..end].to_owned())
    };
    let code = tag("Code");
    let summary = match (&code, tag("Message").filter(|m| !m.is_empty())) {
        (Some(c), Some(m)) => format!("HTTP {status} {c}: {m}"),
        (Some(c), None) => format!("HTTP {status} {c}"),
        (None, _) => format!("HTTP {status} (no error code)"),
    };
    Failure {
        retryable: status == 429
            || status >= 500
            || code
                .as_deref()
                .is_some_and(|c| RETRYABLE_CODES.contains(&c)),
        // A GET of a missing key; a missing bucket (`NoSuchBucket`) is a different failure.
        not_found: status == 404 && code.as_deref().is_none_or(|c| c == "NoSuchKey"),
        final_here: false,
        source: Box::new(SdkFailure(summary)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(base: &str) -> Route {
        Route {
            base: base.to_owned(),
            host: "h".to_owned(),
            signing_region: "us-east-1".to_owned(),
            signing_name: "s3".to_owned(),
        }
    }

    #[test]
    fn keys_are_encoded_like_greedy_labels() {
        let r = route("http://127.0.0.1:9000/data");
        assert_eq!(
            object_url(&r, "unload/deviceid_partition=sensor-001/20260101_x 00003"),
            "http://127.0.0.1:9000/data/unload/deviceid_partition%3Dsensor-001/20260101_x%2000003"
        );
        assert_eq!(
            object_url(&r, "ü+~a.b"),
            "http://127.0.0.1:9000/data/%C3%BC%2B~a.b"
        );
    }

    #[test]
    fn keys_with_dot_segments_are_left_to_the_sdk() {
        for key in ["a/../b", "./x", "a/.", ".."] {
            assert!(has_dot_segment(key), "{key}");
        }
        for key in ["a..b/c", ".hidden/x", "a/b.", "x/...", ""] {
            assert!(!has_dot_segment(key), "{key}");
        }
    }

    #[test]
    fn a_checksum_counts_only_for_the_whole_object() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("10"));
        h.insert("x-amz-checksum-crc32", HeaderValue::from_static("AAAAAA=="));
        assert!(whole_object_checksum(&h, 200, None).is_some());
        assert!(whole_object_checksum(&h, 206, Some(10)).is_some());
        assert!(whole_object_checksum(&h, 206, Some(11)).is_none());
        h.insert(
            "x-amz-checksum-crc32",
            HeaderValue::from_static("AAAAAA==-3"),
        );
        assert!(whole_object_checksum(&h, 200, None).is_none());
    }

    #[test]
    fn a_body_that_does_not_match_its_checksum_is_a_retryable_mismatch() {
        let mut crc = ChecksumAlgorithm::Crc32.into_impl();
        crc.update(b"hello");
        let good = crc.header_value();
        assert!(check(ChecksumAlgorithm::Crc32, &good, b"hello").is_ok());
        let f = check(ChecksumAlgorithm::Crc32, &good, b"hellO")
            .err()
            .unwrap();
        assert!(f.retryable);
        let e = ObjStoreError::Get {
            bucket: "b".into(),
            key: "k".into(),
            retryable: true,
            source: f.source,
        };
        assert!(e.is_checksum_mismatch());
    }
}
