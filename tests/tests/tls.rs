//! `amqps://` and HTTPS S3 endpoints certified by a private CA (issue #4).
//!
//! RabbitMQ and the loopback S3 server each sit behind a TLS-terminating proxy whose
//! certificate a throwaway CA issued; the coordinator, the workers and the test's own S3
//! calls trust that CA only because they are told to (`cacertfile` in the AMQP URL,
//! `S3Config::ca_bundle`), and the proxies count the handshakes they completed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetmap_coordinator::{ItemSource, RunStatus, Tolerance};
use fleetmap_objstore::S3Config;
use fleetmap_objstore::local::LocalS3;
use fleetmap_sample::GenConfig;
use fleetmap_tests::tls::{TestCa, TlsProxy};
use fleetmap_tests::{DATA, Harness, amqp_url, init_logs};

/// A folder for the test's PEM files, removed when dropped.
struct PemDir(PathBuf);

impl PemDir {
    fn new() -> PemDir {
        let dir =
            std::env::temp_dir().join(format!("fleetmap-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create PEM folder");
        PemDir(dir)
    }

    fn write(&self, name: &str, ca: &TestCa) -> PathBuf {
        let path = self.0.join(name);
        ca.write_pem(&path);
        path
    }
}

impl Drop for PemDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The system RabbitMQ of [`amqp_url`], as `(user:password, host:port, vhost)`.
fn broker_parts() -> (String, String, String) {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let (userinfo, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
    let (host, vhost) = rest.split_once('/').unwrap_or((rest, "%2f"));
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    };
    (userinfo.to_owned(), host, vhost.to_owned())
}

/// A TLS proxy in front of the system RabbitMQ, and an `amqps://` URL to it that trusts the
/// CA in `ca_file`.
async fn amqps_proxy(ca: &TestCa, ca_file: &Path) -> (TlsProxy, String) {
    let (userinfo, host, vhost) = broker_parts();
    let upstream: SocketAddr = tokio::net::lookup_host(&host)
        .await
        .expect("resolve the broker")
        .next()
        .expect("an address for the broker");
    let proxy = TlsProxy::start(ca, upstream)
        .await
        .expect("start the AMQP TLS proxy");
    let url = amqps_url(&userinfo, &proxy, &vhost, ca_file);
    (proxy, url)
}

fn amqps_url(userinfo: &str, proxy: &TlsProxy, vhost: &str, ca_file: &Path) -> String {
    format!(
        "amqps://{userinfo}@127.0.0.1:{}/{vhost}?cacertfile={}",
        proxy.addr().port(),
        ca_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn map_run_over_amqps_and_https_s3_writes_every_reading_once() {
    init_logs();
    let pems = PemDir::new();
    let ca = TestCa::new("fleetmap test CA");
    let ca_file = pems.write("ca.pem", &ca);

    let (rabbit, url) = amqps_proxy(&ca, &ca_file).await;
    let s3 = LocalS3::start().await.expect("start loopback S3 server");
    let s3_addr: SocketAddr = s3
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("loopback S3 address");
    let s3_tls = TlsProxy::start(&ca, s3_addr)
        .await
        .expect("start the S3 TLS proxy");
    let cfg = S3Config {
        endpoint: Some(format!("https://127.0.0.1:{}", s3_tls.addr().port())),
        ca_bundle: Some(ca_file.clone()),
        ..s3.config()
    };
    let client = fleetmap_objstore::config::try_data_client(&cfg)
        .await
        .expect("an S3 client trusting the test CA");
    // The workers' GETs and PUTs take the direct lane, over the same TLS and CA.
    assert!(client.is_direct());

    let h = Harness::start_on(s3, client, url, 2, 2).await;
    let generated = fleetmap_sample::generate_to_s3(
        &h.client,
        DATA,
        &GenConfig {
            keep_readings: true,
            ..GenConfig::default()
        },
    )
    .await
    .expect("write the sample data over HTTPS");
    assert_eq!(generated.files.len(), 5);
    assert_eq!(generated.readings.len(), 120);

    let source = ItemSource::AthenaManifest {
        uri: format!("s3://{DATA}/{}", generated.manifest),
    };
    let (_, d) = h
        .run_to_end(
            Harness::spec(source, 50, Tolerance::default()),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(d.status, RunStatus::Succeeded, "{d:#?}");
    let c = d.execution_counts;
    assert_eq!(
        (c.total, c.succeeded, c.failed, c.results_written),
        (5, 5, 0, 5)
    );
    assert_eq!(d.readings, 120);

    let records = h.result_records().await;
    let mut seen = HashSet::new();
    for rec in &records {
        let key = (
            rec["deviceid"].as_str().expect("deviceid").to_owned(),
            rec["readingtimestamp"]
                .as_str()
                .expect("readingtimestamp")
                .to_owned(),
        );
        assert!(seen.insert(key.clone()), "reading {key:?} written twice");
    }
    let want: HashSet<(String, String)> = generated
        .readings
        .iter()
        .map(|r| (r.deviceid.clone(), r.timestamp.clone()))
        .collect();
    assert_eq!(seen, want, "every reading written exactly once");

    // The coordinator and both workers each opened a verified TLS session to the broker, and
    // every S3 call went through the HTTPS proxy (the client knows no other endpoint).
    assert!(
        rabbit.handshakes() >= 3,
        "AMQP TLS handshakes: {}",
        rabbit.handshakes()
    );
    assert!(
        s3_tls.handshakes() >= 1,
        "S3 TLS handshakes: {}",
        s3_tls.handshakes()
    );
    assert_eq!(
        (rabbit.failed_handshakes(), s3_tls.failed_handshakes()),
        (0, 0)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_refuses_a_broker_certified_by_another_ca() {
    init_logs();
    let pems = PemDir::new();
    let ca = TestCa::new("fleetmap test CA");
    let ca_file = pems.write("ca.pem", &ca);
    let other_file = pems.write("other.pem", &TestCa::new("some other CA"));
    let (rabbit, good_url) = amqps_proxy(&ca, &ca_file).await;
    let (userinfo, _, vhost) = broker_parts();
    let password = userinfo.split_once(':').map(|(_, p)| p.to_owned());

    let wrong_url = amqps_url(&userinfo, &rabbit, &vhost, &other_file);
    let no_ca_url = wrong_url
        .split_once('?')
        .map(|(u, _)| u.to_owned())
        .expect("query");
    for (url, what) in [
        (&wrong_url, "another CA"),
        (&no_ca_url, "system roots only"),
    ] {
        let failed_before = rabbit.failed_handshakes();
        let err = fleetmap_protocol::amqp::connect(url, "fleetmap-tls-test")
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: connected without trusting the broker's CA"))
            .to_string();
        let redacted = fleetmap_protocol::amqp::redact_url(url);
        assert!(err.contains(&redacted), "{what}: {err}");
        assert!(err.contains("invalid peer certificate"), "{what}: {err}");
        assert!(
            err.contains("cacertfile"),
            "{what}: says how to trust a CA: {err}"
        );
        assert!(!err.contains("Is it running"), "{what}: {err}");
        if let Some(p) = &password {
            assert!(
                !err.contains(&format!(":{p}@")),
                "{what}: password shown: {err}"
            );
        }
        // The client gives up before the proxy has read its alert: wait for the count.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while rabbit.failed_handshakes() == failed_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the proxy never saw the refused handshake"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rabbit.failed_handshakes(), failed_before + 1, "{what}");
    }
    assert_eq!(rabbit.handshakes(), 0);

    // The same proxy with the right CA: the refusal was about trust, not reachability.
    let conn = fleetmap_protocol::amqp::connect(&good_url, "fleetmap-tls-test")
        .await
        .expect("connect trusting the test CA");
    assert_eq!(rabbit.handshakes(), 1);
    conn.close(200, "done".into()).await.expect("close");
}
