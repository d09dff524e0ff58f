//! TLS in front of the test's loopback services.
//!
//! [`TestCa`] is a throwaway certificate authority; [`TlsProxy`] terminates TLS with a
//! certificate it issued for `localhost` and `127.0.0.1`, forwards the plain bytes to an
//! upstream (the system RabbitMQ, a loopback S3 server) and counts handshakes, so a test can
//! show that its clients verified the certificate and really spoke TLS.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A certificate authority that lives as long as the test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl TestCa {
    /// A fresh CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("self-sign the CA").pem();
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// The CA certificate, PEM-encoded.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate to `path` (what `cacertfile` / `AWS_CA_BUNDLE` point at).
    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, &self.pem)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// A server certificate for `localhost` and `127.0.0.1` with its key.
    fn issue_server_cert(&self) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign the server certificate");
        (cert.der().clone(), key.into())
    }
}

#[derive(Default)]
struct Counts {
    handshakes: AtomicU64,
    failed: AtomicU64,
}

/// A TLS-terminating TCP proxy on `127.0.0.1`. Dropping it stops accepting and ends the
/// connections it carries.
pub struct TlsProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
    cancel: CancellationToken,
}

impl TlsProxy {
    /// Listens on a free port of `127.0.0.1` with a certificate issued by `ca`, forwarding
    /// each connection, once its handshake completes, to `upstream`.
    pub async fn start(ca: &TestCa, upstream: SocketAddr) -> io::Result<TlsProxy> {
        let (cert, key) = ca.issue_server_cert();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(io::Error::other)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let cancel = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            upstream,
            counts.clone(),
            cancel.clone(),
        ));
        Ok(TlsProxy {
            addr,
            counts,
            cancel,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TLS handshakes completed (the client accepted the certificate).
    pub fn handshakes(&self) -> u64 {
        self.counts.handshakes.load(Ordering::Relaxed)
    }

    /// Connections whose TLS handshake failed (e.g. the client refused the certificate).
    pub fn failed_handshakes(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    counts: Arc<Counts>,
    cancel: CancellationToken,
) {
    loop {
        let (client, _) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let (acceptor, counts, cancel) = (acceptor.clone(), counts.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut tls = match acceptor.accept(client).await {
                Ok(tls) => {
                    counts.handshakes.fetch_add(1, Ordering::Relaxed);
                    tls
                }
                Err(_) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            // Unreachable upstream: dropping the stream closes the client's connection.
            let Ok(mut up) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut tls, &mut up) => {}
            }
        });
    }
}
