//! The helpers against a real S3-protocol server (s3s-fs on loopback), no mocks.

use bytes::Bytes;
use fleetmap_objstore::local::LocalS3;
use fleetmap_objstore::{
    ObjStoreError, ensure_bucket, get_bytes, get_range, get_suffix, head_size, list_keys,
    list_keys_paged, put_bytes,
};

const BUCKET: &str = "fleet-test";

async fn server_with_bucket() -> (LocalS3, aws_sdk_s3::Client) {
    let server = LocalS3::start().await.expect("local S3 starts");
    let client = server.client().await;
    ensure_bucket(&client, BUCKET)
        .await
        .expect("bucket created");
    (server, client)
}

fn sample_body() -> Bytes {
    Bytes::from((0u8..100).collect::<Vec<u8>>())
}

#[tokio::test]
async fn put_then_get_returns_the_same_bytes() {
    let (server, c) = server_with_bucket().await;
    let body = sample_body();
    put_bytes(
        &c,
        BUCKET,
        "a/b c.bin",
        body.clone(),
        "application/octet-stream",
    )
    .await
    .unwrap();
    let got = get_bytes(&c, BUCKET, "a/b c.bin").await.unwrap();
    assert_eq!(got, body);
    // s3s-fs keeps objects as files under <root>/<bucket>/<key>.
    assert!(server.root().join(BUCKET).join("a/b c.bin").is_file());
    server.shutdown().await;
}

#[tokio::test]
async fn ranged_get_returns_exactly_the_requested_bytes() {
    let (server, c) = server_with_bucket().await;
    put_bytes(&c, BUCKET, "obj", sample_body(), "application/octet-stream")
        .await
        .unwrap();

    // The raw SDK call with an HTTP Range header, as the worker's Parquet reader issues it.
    let out = c
        .get_object()
        .bucket(BUCKET)
        .key("obj")
        .range("bytes=10-19")
        .send()
        .await
        .unwrap();
    let raw = out.body.collect().await.unwrap().into_bytes();
    assert_eq!(raw.as_ref(), &(10u8..20).collect::<Vec<u8>>()[..]);

    let helper = get_range(&c, BUCKET, "obj", 90..100).await.unwrap();
    assert_eq!(helper.as_ref(), &(90u8..100).collect::<Vec<u8>>()[..]);
    assert!(get_range(&c, BUCKET, "obj", 5..5).await.unwrap().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn head_reports_the_content_length() {
    let (server, c) = server_with_bucket().await;
    put_bytes(&c, BUCKET, "obj", sample_body(), "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(head_size(&c, BUCKET, "obj").await.unwrap(), 100);
    let out = c
        .head_object()
        .bucket(BUCKET)
        .key("obj")
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_length(), Some(100));
    server.shutdown().await;
}

#[tokio::test]
async fn list_follows_continuation_tokens_across_pages() {
    let (server, c) = server_with_bucket().await;
    let mut expected = Vec::new();
    for i in 0..30 {
        let key = format!("runs/r1/part-{i:03}");
        put_bytes(&c, BUCKET, &key, Bytes::from_static(b"x"), "text/plain")
            .await
            .unwrap();
        expected.push(key);
    }
    // Outside the prefix: must not be listed.
    put_bytes(
        &c,
        BUCKET,
        "runs/r2/other",
        Bytes::from_static(b"y"),
        "text/plain",
    )
    .await
    .unwrap();

    // 30 keys at 7 a page is 5 pages.
    let paged = list_keys_paged(&c, BUCKET, "runs/r1/", 7).await.unwrap();
    assert_eq!(paged, expected);
    let all = list_keys(&c, BUCKET, "runs/").await.unwrap();
    assert_eq!(all.len(), 31);
    assert!(list_keys(&c, BUCKET, "nothing/").await.unwrap().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn missing_key_is_not_found_naming_bucket_and_key() {
    let (server, c) = server_with_bucket().await;
    for result in [
        get_bytes(&c, BUCKET, "no/such/key").await.map(|_| ()),
        head_size(&c, BUCKET, "no/such/key").await.map(|_| ()),
    ] {
        match result {
            Err(err @ ObjStoreError::NotFound { .. }) => {
                assert!(!err.is_retryable());
                let ObjStoreError::NotFound { bucket, key } = &err else {
                    unreachable!()
                };
                assert_eq!((bucket.as_str(), key.as_str()), (BUCKET, "no/such/key"));
                assert_eq!(err.to_string(), "s3://fleet-test/no/such/key not found");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn missing_bucket_is_a_non_retryable_error_naming_the_bucket() {
    let server = LocalS3::start().await.unwrap();
    let c = server.client().await;
    let err = get_bytes(&c, "no-such-bucket", "k").await.unwrap_err();
    // AWS (and the loopback server) answer NoSuchBucket, a Get error; other S3-compatible
    // stores answer NoSuchKey (NotFound). Either way the caller must see the object named and
    // must not retry.
    assert!(
        matches!(
            err,
            ObjStoreError::Get { .. } | ObjStoreError::NotFound { .. }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("s3://no-such-bucket/k"), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn ensure_bucket_is_idempotent() {
    let (server, c) = server_with_bucket().await;
    ensure_bucket(&c, BUCKET).await.unwrap();
    assert!(server.root().join(BUCKET).is_dir());
    server.shutdown().await;
}

#[tokio::test]
async fn start_in_serves_an_existing_folder_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pre-made/data")).unwrap();
    std::fs::write(dir.path().join("pre-made/data/file.txt"), b"hello").unwrap();

    let server = LocalS3::start_in(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    let c = server.client().await;
    assert_eq!(
        get_bytes(&c, "pre-made", "data/file.txt").await.unwrap(),
        Bytes::from_static(b"hello")
    );
    server.shutdown().await;
    assert!(dir.path().join("pre-made/data/file.txt").is_file());
}

#[tokio::test]
async fn wrong_secret_is_rejected() {
    let server = LocalS3::start().await.unwrap();
    let mut cfg = server.config();
    cfg.secret_access_key = Some("not-the-secret".into());
    let c = fleetmap_objstore::client(&cfg).await;
    let err = ensure_bucket(&c, BUCKET).await.unwrap_err();
    assert!(matches!(err, ObjStoreError::CreateBucket { .. }), "{err:?}");
    assert!(!err.is_retryable());
    server.shutdown().await;
}

#[tokio::test]
async fn a_torn_object_reads_as_a_checksum_mismatch_and_a_missing_one_does_not() {
    let (server, c) = server_with_bucket().await;
    put_bytes(&c, BUCKET, "torn", sample_body(), "application/json")
        .await
        .unwrap();
    // Replace the body behind the server's back, keeping the checksum it recorded: what a
    // store that is not atomic leaves when a writer dies between the two.
    std::fs::write(server.root().join(BUCKET).join("torn"), b"{\"half\":").unwrap();
    let err = get_bytes(&c, BUCKET, "torn").await.unwrap_err();
    assert!(err.is_checksum_mismatch(), "{err:?}");
    assert!(err.to_string().contains("s3://fleet-test/torn"), "{err}");

    let missing = get_bytes(&c, BUCKET, "nothing-here").await.unwrap_err();
    assert!(!missing.is_checksum_mismatch(), "{missing:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn suffix_get_returns_the_tail_and_the_object_length() {
    let (server, c) = server_with_bucket().await;
    put_bytes(&c, BUCKET, "obj", sample_body(), "application/octet-stream")
        .await
        .unwrap();
    let (tail, size) = get_suffix(&c, BUCKET, "obj", 10).await.unwrap();
    assert_eq!((tail, size), (sample_body().slice(90..), 100));
    // Longer than the object: all of it.
    let (all, size) = get_suffix(&c, BUCKET, "obj", 64 * 1024).await.unwrap();
    assert_eq!((all, size), (sample_body(), 100));

    put_bytes(
        &c,
        BUCKET,
        "empty",
        Bytes::new(),
        "application/octet-stream",
    )
    .await
    .unwrap();
    let (none, size) = get_suffix(&c, BUCKET, "empty", 10).await.unwrap();
    assert_eq!((none.len(), size), (0, 0));

    let err = get_suffix(&c, BUCKET, "missing", 10).await.unwrap_err();
    assert!(matches!(err, ObjStoreError::NotFound { .. }), "{err:?}");
    server.shutdown().await;
}
