//! The direct lane of [`DataClient`] against the real S3-protocol server on loopback: it must
//! address, sign, check and fail exactly as the SDK path does, so every test crosses the two
//! (written by one, read by the other) and compares errors with [`fleetmap_objstore::ops`]'s.

use bytes::Bytes;
use fleetmap_objstore::local::LocalS3;
use fleetmap_objstore::{DataClient, ObjStoreError, ensure_bucket, get_bytes, put_bytes};

const BUCKET: &str = "fleet-direct";

async fn server() -> (LocalS3, DataClient) {
    let server = LocalS3::start().await.expect("local S3 starts");
    let c = server.data_client().await;
    assert!(
        c.is_direct(),
        "a loopback endpoint with keys takes the direct lane"
    );
    ensure_bucket(&c, BUCKET).await.expect("bucket created");
    (server, c)
}

fn body(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>())
}

/// Keys as Athena UNLOAD and users write them: Hive partitions, spaces, `+`, non-ASCII,
/// characters URL parsers treat specially.
const KEYS: [&str; 4] = [
    "unload/deviceid_partition=sensor-001/20260101_120000_00001_x_00003",
    "a/b c.bin",
    "plus+and&amp;?=#%41.json",
    "ünïcödé/ключ/鍵",
];

#[tokio::test]
async fn what_one_lane_writes_the_other_reads_byte_for_byte() {
    let (server, c) = server().await;
    let sdk = c.sdk();
    for (i, key) in KEYS.iter().enumerate() {
        let data = body(1000 + i);
        c.put_bytes(BUCKET, key, data.clone(), "application/x-ndjson")
            .await
            .unwrap_or_else(|e| panic!("direct PUT {key:?}: {e}"));
        assert_eq!(get_bytes(sdk, BUCKET, key).await.unwrap(), data, "{key:?}");

        let other = body(2000 + i);
        put_bytes(sdk, BUCKET, key, other.clone(), "text/plain")
            .await
            .unwrap();
        let (tail, size) = c.get_suffix(BUCKET, key, 100).await.unwrap();
        assert_eq!(
            (tail, size),
            (other.slice(other.len() - 100..), other.len() as u64)
        );
        let (all, _) = c.get_suffix(BUCKET, key, 64 * 1024).await.unwrap();
        assert_eq!(all, other, "{key:?}");
        assert_eq!(
            c.get_range(BUCKET, key, 10..25).await.unwrap(),
            other.slice(10..25)
        );
    }
    // The content type reaches the store as given.
    let head = sdk
        .head_object()
        .bucket(BUCKET)
        .key(KEYS[0])
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/plain"));
    c.put_bytes(BUCKET, "typed", body(10), "application/x-ndjson")
        .await
        .unwrap();
    let head = sdk
        .head_object()
        .bucket(BUCKET)
        .key("typed")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/x-ndjson"));
    server.shutdown().await;
}

#[tokio::test]
async fn empty_objects_and_empty_ranges() {
    let (server, c) = server().await;
    c.put_bytes(BUCKET, "empty", Bytes::new(), "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(
        get_bytes(c.sdk(), BUCKET, "empty").await.unwrap(),
        Bytes::new()
    );
    // S3 answers a suffix range on an empty object with 416; the length is still known.
    assert_eq!(
        c.get_suffix(BUCKET, "empty", 64).await.unwrap(),
        (Bytes::new(), 0)
    );
    assert_eq!(
        c.get_range(BUCKET, "empty", 5..5).await.unwrap(),
        Bytes::new()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn failures_match_the_sdk_path() {
    let (server, c) = server().await;
    let sdk = c.sdk();

    let direct = c.get_suffix(BUCKET, "no/such/key", 64).await.unwrap_err();
    let via_sdk = fleetmap_objstore::get_suffix(sdk, BUCKET, "no/such/key", 64)
        .await
        .unwrap_err();
    for err in [&direct, &via_sdk] {
        assert!(matches!(err, ObjStoreError::NotFound { .. }), "{err:?}");
    }
    assert_eq!(direct.to_string(), via_sdk.to_string());
    let err = c.get_range(BUCKET, "no/such/key", 0..10).await.unwrap_err();
    assert!(matches!(err, ObjStoreError::NotFound { .. }), "{err:?}");

    // A missing bucket is not a missing object, and retrying will not create it.
    let err = c.get_suffix("no-such-bucket", "k", 64).await.unwrap_err();
    assert!(matches!(err, ObjStoreError::Get { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("s3://no-such-bucket/k"), "{err}");
    assert!(err.to_string().contains("NoSuchBucket"), "{err}");
    let err = c
        .put_bytes("no-such-bucket", "k", body(5), "text/plain")
        .await
        .unwrap_err();
    assert!(matches!(err, ObjStoreError::Put { .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");

    // A range past the end of the object.
    c.put_bytes(BUCKET, "short", body(10), "text/plain")
        .await
        .unwrap();
    let err = c.get_range(BUCKET, "short", 50..60).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("416"), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_not_retried() {
    let server = LocalS3::start().await.unwrap();
    let good = server.data_client().await;
    ensure_bucket(&good, BUCKET).await.unwrap();
    let mut cfg = server.config();
    cfg.secret_access_key = Some("not-the-secret".into());
    let c = fleetmap_objstore::data_client(&cfg).await;
    assert!(c.is_direct());
    let started = std::time::Instant::now();
    let err = c
        .put_bytes(BUCKET, "k", body(5), "text/plain")
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("HTTP 403"), "{err}");
    // No retry backoff was slept through.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let err = c.get_suffix(BUCKET, "k", 5).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_torn_whole_object_read_is_a_checksum_mismatch() {
    let (server, c) = server().await;
    c.put_bytes(BUCKET, "torn", body(100), "application/json")
        .await
        .unwrap();
    // Replace the body behind the server's back, keeping the checksum it recorded from the
    // direct lane's upload.
    std::fs::write(server.root().join(BUCKET).join("torn"), b"{\"half\":").unwrap();
    let started = std::time::Instant::now();
    let err = c.get_suffix(BUCKET, "torn", 64 * 1024).await.unwrap_err();
    assert!(err.is_checksum_mismatch(), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    // Retryable by the caller, who may hold another copy, but not re-read here: a torn
    // object reads the same every time (the SDK does not retry it either).
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // A part of the object carries no checksum to compare, so it reads.
    assert_eq!(c.get_range(BUCKET, "torn", 0..2).await.unwrap().len(), 2);
    server.shutdown().await;
}
