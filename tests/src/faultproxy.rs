//! A fault-injecting HTTP proxy in front of the loopback S3 server.
//!
//! Object-store faults have to go through the real SDK retry path, so instead of a mock client
//! the proxy sits between aws-sdk-s3 and [`LocalS3`] and answers some requests itself, the way
//! S3 does under load (`503 SlowDown`, `500 InternalError`) or for a permanent fault
//! (`403 AccessDenied` on chosen objects). Which requests fail is drawn from a seed and the
//! request's sequence number, so a seed gives the same fault pattern over the same sequence.
//! Everything else is forwarded unchanged, headers included: SigV4 signs the `Host` the client
//! sent (the proxy's), and the upstream checks the signature against the `Host` it receives,
//! so keeping it is what makes signatures verify.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fleetmap_objstore::S3Config;
use fleetmap_objstore::local::LocalS3;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// What to inject. The default injects nothing.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fraction of requests answered `503 SlowDown` without reaching the server.
    pub slow_down: f64,
    /// Fraction of requests answered `500 InternalError` without reaching the server.
    pub internal_error: f64,
    /// Added before each forwarded request, to model a slow store.
    pub latency: Duration,
    /// Path-style paths (`/bucket/key`, not percent-encoded) always answered
    /// `403 AccessDenied`.
    pub deny: Vec<String>,
    pub seed: u64,
}

/// What the proxy has seen and done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub requests: u64,
    pub slow_down: u64,
    pub internal_error: u64,
    pub denied: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FaultProxyError {
    /// Faults are only ever injected in front of a server on this machine.
    #[error("upstream {0:?} is not an http:// loopback address")]
    NotLoopback(String),
    #[error("binding the fault proxy: {0}")]
    Bind(#[source] std::io::Error),
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    slow_down: AtomicU64,
    internal_error: AtomicU64,
    denied: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    faults: Faults,
    counters: Counters,
    /// Paths under this prefix are denied too, switched at run time ([`FaultProxy::deny_prefix`]).
    deny_prefix: std::sync::Mutex<Option<String>>,
}

/// A running proxy; dropping it stops accepting and closes its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1` at a free port in front of `s3`.
    pub async fn in_front_of(s3: &LocalS3, faults: Faults) -> Result<FaultProxy, FaultProxyError> {
        Self::start(&s3.endpoint(), faults).await
    }

    /// Starts a proxy in front of `upstream`, an `http://127.0.0.1:port` style endpoint.
    pub async fn start(upstream: &str, faults: Faults) -> Result<FaultProxy, FaultProxyError> {
        let not_loopback = || FaultProxyError::NotLoopback(upstream.to_owned());
        let upstream_addr: SocketAddr = upstream
            .strip_prefix("http://")
            .map(|a| a.trim_end_matches('/'))
            .and_then(|a| a.parse().ok())
            .filter(|a: &SocketAddr| a.ip().is_loopback())
            .ok_or_else(not_loopback)?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(FaultProxyError::Bind)?;
        let addr = listener.local_addr().map_err(FaultProxyError::Bind)?;
        let shared = Arc::new(Shared {
            upstream: upstream_addr,
            faults,
            counters: Counters::default(),
            deny_prefix: std::sync::Mutex::new(None),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::clone(&shared), cancel.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            cancel,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base` (credentials, region) pointed at the proxy.
    pub fn config(&self, base: &S3Config) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            force_path_style: true,
            ..base.clone()
        }
    }

    /// From now on, answers every request for a path under `prefix` (path style,
    /// `/bucket/key…`) with `403 AccessDenied`; `None` lifts it. Models an object store
    /// that refuses writes for a while (a revoked grant, a full bucket quota).
    pub fn deny_prefix(&self, prefix: Option<&str>) {
        if let Ok(mut p) = self.shared.deny_prefix.lock() {
            *p = prefix.map(str::to_owned);
        }
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        FaultCounts {
            requests: c.requests.load(Ordering::Relaxed),
            slow_down: c.slow_down.load(Ordering::Relaxed),
            internal_error: c.internal_error.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Typically EMFILE; back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let (shared, cancel) = (Arc::clone(&shared), cancel.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&shared), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let (f, c) = (&shared.faults, &shared.counters);
    let n = c.requests.fetch_add(1, Ordering::Relaxed);
    // The SDK percent-encodes keys (`=` in `deviceid_partition=` and the like).
    let path = percent_encoding::percent_decode_str(req.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    let draw = unit_draw(f.seed, n);
    let denied_now = shared
        .deny_prefix
        .lock()
        .map(|p| p.as_deref().is_some_and(|p| path.starts_with(p)))
        .unwrap_or(false);
    let fault = if f.deny.contains(&path) || denied_now {
        Some((
            &c.denied,
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access Denied",
        ))
    } else if draw < f.slow_down {
        let msg = "Please reduce your request rate.";
        Some((
            &c.slow_down,
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            msg,
        ))
    } else if draw < f.slow_down + f.internal_error {
        let msg = "We encountered an internal error. Please try again.";
        Some((
            &c.internal_error,
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            msg,
        ))
    } else {
        None
    };
    if let Some((counter, status, code, message)) = fault {
        counter.fetch_add(1, Ordering::Relaxed);
        // Read the upload first, as S3 does: answering mid-body makes the client see a reset
        // connection instead of the error under test.
        let _ = req.into_body().collect().await;
        return Ok(s3_error(status, code, message, &path, n));
    }
    if !f.latency.is_zero() {
        tokio::time::sleep(f.latency).await;
    }
    Ok(match forward(shared.upstream, req).await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(e) => s3_error(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            &e.to_string(),
            &path,
            n,
        ),
    })
}

/// One request on a fresh upstream connection: simple, and the test's request rate is low.
async fn forward(
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

/// An error answer in S3's XML shape, so the SDK parses its code as it would from S3.
fn s3_error(
    status: StatusCode,
    code: &str,
    message: &str,
    resource: &str,
    n: u64,
) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><Resource>{resource}</Resource>\
         <RequestId>fault-{n}</RequestId></Error>"
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    if let Ok(id) = HeaderValue::from_str(&format!("fault-{n}")) {
        headers.insert("x-amz-request-id", id);
    }
    resp
}

/// A uniform draw in `[0, 1)` from the seed and the request's number (SplitMix64), so
/// concurrent requests need no shared generator.
fn unit_draw(seed: u64, n: u64) -> f64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::unit_draw;

    #[test]
    fn draws_are_uniform_enough_and_repeatable() {
        let hits = (0..10_000).filter(|&n| unit_draw(42, n) < 0.2).count();
        assert!((1_800..2_200).contains(&hits), "{hits}");
        assert_eq!(unit_draw(7, 3), unit_draw(7, 3));
        assert_ne!(unit_draw(7, 3), unit_draw(8, 3));
    }
}
