//! Multipart uploads against the loopback server (its own UploadPart and
//! CompleteMultipartUpload over s3s-fs's files), through aws-sdk-s3, as a worker writes
//! results larger than a part.

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use fleetmap_objstore::ensure_bucket;
use fleetmap_objstore::local::LocalS3;
use s3s::crypto::{Checksum, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUCKET: &str = "fleet-multipart";
const MIB: usize = 1024 * 1024;

async fn server_with_bucket() -> (LocalS3, Client) {
    let server = LocalS3::start().await.expect("local S3 starts");
    let client = server.client().await;
    ensure_bucket(&client, BUCKET).await.expect("bucket");
    (server, client)
}

/// `len` bytes that differ from part to part (`seed`) and along the part.
fn body(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut md5 = Md5::new();
    for p in parts {
        md5.update(p);
    }
    hex(&md5.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// S3's multipart ETag: MD5 of the parts' MD5s, dash, part count.
fn multipart_etag(parts: &[Bytes]) -> String {
    let mut md5 = Md5::new();
    for p in parts {
        let mut one = Md5::new();
        one.update(p);
        md5.update(&one.finalize());
    }
    format!("\"{}-{}\"", hex(&md5.finalize()), parts.len())
}

async fn create(c: &Client, key: &str) -> String {
    c.create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .content_type("application/x-ndjson")
        .send()
        .await
        .expect("create")
        .upload_id()
        .expect("upload id")
        .to_owned()
}

async fn upload(c: &Client, key: &str, id: &str, n: i32, part: Bytes) -> CompletedPart {
    let out = c
        .upload_part()
        .bucket(BUCKET)
        .key(key)
        .upload_id(id)
        .part_number(n)
        .body(ByteStream::from(part))
        .send()
        .await
        .expect("upload part");
    CompletedPart::builder()
        .part_number(n)
        .set_e_tag(out.e_tag().map(str::to_owned))
        .build()
}

async fn complete(
    c: &Client,
    key: &str,
    id: &str,
    parts: Vec<CompletedPart>,
) -> Result<String, String> {
    c.complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map(|out| out.e_tag().unwrap_or_default().to_owned())
        .map_err(|e| format!("{:?}", e.into_service_error()))
}

async fn get(c: &Client, key: &str) -> (Bytes, String, String) {
    let out = c
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("get");
    let etag = out.e_tag().unwrap_or_default().to_owned();
    let content_type = out.content_type().unwrap_or_default().to_owned();
    let bytes = out.body.collect().await.expect("body").into_bytes();
    (bytes, etag, content_type)
}

/// Names of the files in the server's root that belong to uploads (parts, upload ids) or are
/// half written.
fn upload_leftovers(server: &LocalS3) -> Vec<String> {
    std::fs::read_dir(server.root())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.starts_with(".upload") || n.starts_with(".tmp."))
        .collect()
}

#[tokio::test]
async fn parts_are_joined_in_order_with_s3_s_etag_and_the_upload_s_content_type() {
    let (server, c) = server_with_bucket().await;
    let key = "results/run-1/item-0.json";
    let id = create(&c, key).await;
    let parts = vec![body(1, 5 * MIB), body(2, 5 * MIB + 17), body(3, 1000)];
    // Sent out of order, as a worker's concurrent parts finish.
    let third = upload(&c, key, &id, 3, parts[2].clone()).await;
    let first = upload(&c, key, &id, 1, parts[0].clone()).await;
    let second = upload(&c, key, &id, 2, parts[1].clone()).await;
    assert_eq!(
        first.e_tag(),
        Some(format!("\"{}\"", md5_hex(&[&parts[0]])).as_str())
    );

    let etag = complete(&c, key, &id, vec![first, second, third])
        .await
        .unwrap();
    let expected_etag = multipart_etag(&parts);
    assert_eq!(etag, expected_etag);

    let (got, got_etag, content_type) = get(&c, key).await;
    assert_eq!(got.len(), parts.iter().map(Bytes::len).sum::<usize>());
    assert!(got == [&parts[0][..], &parts[1][..], &parts[2][..]].concat());
    assert_eq!(got_etag, expected_etag, "GET reports the stored ETag");
    assert_eq!(content_type, "application/x-ndjson");
    assert_eq!(upload_leftovers(&server), Vec::<String>::new());
    server.shutdown().await;
}

#[tokio::test]
async fn a_completion_naming_a_wrong_etag_or_a_missing_part_fails_and_loses_nothing() {
    let (server, c) = server_with_bucket().await;
    let key = "k";
    let id = create(&c, key).await;
    let parts = [body(7, 5 * MIB), body(8, 10)];
    let first = upload(&c, key, &id, 1, parts[0].clone()).await;
    let second = upload(&c, key, &id, 2, parts[1].clone()).await;

    let wrong = CompletedPart::builder()
        .part_number(2)
        .e_tag("\"00000000000000000000000000000000\"")
        .build();
    let err = complete(&c, key, &id, vec![first.clone(), wrong])
        .await
        .unwrap_err();
    assert!(
        err.contains("InvalidPart") && err.contains("part 2"),
        "{err}"
    );

    let missing = CompletedPart::builder()
        .part_number(5)
        .e_tag(first.e_tag().unwrap())
        .build();
    let err = complete(&c, key, &id, vec![first.clone(), missing])
        .await
        .unwrap_err();
    assert!(err.contains("part 5 was not uploaded"), "{err}");

    let err = complete(&c, key, &id, vec![second.clone(), first.clone()])
        .await
        .unwrap_err();
    assert!(err.contains("InvalidPartOrder"), "{err}");

    // Every refusal left the upload as it was: the right list still completes it.
    let etag = complete(&c, key, &id, vec![first, second]).await.unwrap();
    assert_eq!(etag, multipart_etag(&parts));
    assert!(get(&c, key).await.0 == [&parts[0][..], &parts[1][..]].concat());
    server.shutdown().await;
}

#[tokio::test]
async fn a_part_below_five_mib_before_the_last_is_too_small() {
    let (server, c) = server_with_bucket().await;
    let id = create(&c, "small").await;
    let a = upload(&c, "small", &id, 1, body(1, MIB)).await;
    let b = upload(&c, "small", &id, 2, body(2, MIB)).await;
    let err = complete(&c, "small", &id, vec![a, b]).await.unwrap_err();
    assert!(
        err.contains("EntityTooSmall") && err.contains("part 1"),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_part_whose_checksum_does_not_match_is_refused() {
    let (server, c) = server_with_bucket().await;
    let id = create(&c, "sum").await;
    let err = c
        .upload_part()
        .bucket(BUCKET)
        .key("sum")
        .upload_id(&id)
        .part_number(1)
        // CRC32 of something else.
        .checksum_crc32("AAAAAA==")
        .body(ByteStream::from(body(1, 1000)))
        .send()
        .await
        .unwrap_err();
    let err = format!("{:?}", err.into_service_error());
    assert!(err.contains("BadDigest") && err.contains("CRC32"), "{err}");
    assert!(
        !upload_leftovers(&server)
            .iter()
            .any(|n| n.contains(".part-1") || n.starts_with(".tmp.")),
        "a refused part is not kept: {:?}",
        upload_leftovers(&server)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_part_replaced_behind_the_server_is_hashed_again_at_completion() {
    let (server, c) = server_with_bucket().await;
    let id = create(&c, "swapped").await;
    let first = upload(&c, "swapped", &id, 1, body(1, 5 * MIB)).await;
    let last = upload(&c, "swapped", &id, 2, body(2, 100)).await;
    // Another length, so the change shows whatever the clock's resolution.
    let part = server.root().join(format!(".upload_id-{id}.part-2"));
    std::fs::write(&part, body(9, 99)).unwrap();
    let err = complete(&c, "swapped", &id, vec![first, last])
        .await
        .unwrap_err();
    assert!(
        err.contains("InvalidPart") && err.contains("part 2"),
        "{err}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_restarted_mid_upload_completes_it_with_the_right_etag() {
    let dir = tempfile::tempdir().unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = LocalS3::start_in(dir.path().to_owned(), addr)
        .await
        .unwrap();
    let c = server.client().await;
    ensure_bucket(&c, BUCKET).await.unwrap();
    let parts = [body(4, 5 * MIB), body(5, 4096)];
    let id = create(&c, "restart").await;
    let first = upload(&c, "restart", &id, 1, parts[0].clone()).await;
    server.shutdown().await;

    let server = LocalS3::start_in(dir.path().to_owned(), addr)
        .await
        .unwrap();
    let c = server.client().await;
    let last = upload(&c, "restart", &id, 2, parts[1].clone()).await;
    let etag = complete(&c, "restart", &id, vec![first, last])
        .await
        .unwrap();
    assert_eq!(etag, multipart_etag(&parts));
    server.shutdown().await;
}

#[tokio::test]
async fn an_aborted_upload_takes_no_more_parts_and_leaves_no_files() {
    let (server, c) = server_with_bucket().await;
    let id = create(&c, "gone").await;
    upload(&c, "gone", &id, 1, body(1, 1000)).await;
    c.abort_multipart_upload()
        .bucket(BUCKET)
        .key("gone")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    let err = c
        .upload_part()
        .bucket(BUCKET)
        .key("gone")
        .upload_id(&id)
        .part_number(2)
        .body(ByteStream::from(body(2, 10)))
        .send()
        .await
        .unwrap_err();
    let err = format!("{:?}", err.into_service_error());
    assert!(err.contains("NoSuchUpload"), "{err}");
    assert_eq!(upload_leftovers(&server), Vec::<String>::new());
    server.shutdown().await;
}

/// Uploads to a loopback endpoint leave their body out of the signature (no SHA-256 over it
/// on either side) and still carry the CRC32 the server checks.
#[tokio::test]
async fn uploads_to_loopback_are_unsigned_and_checksummed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the request head");
            head.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    });
    let cfg = fleetmap_objstore::S3Config {
        endpoint: Some(format!("http://{addr}")),
        access_key_id: Some("id".into()),
        secret_access_key: Some("secret".into()),
        ..Default::default()
    };
    let c = fleetmap_objstore::client(&cfg).await;
    fleetmap_objstore::put_bytes(&c, "bkt", "k", body(1, 1000), "application/json")
        .await
        .unwrap();
    let head = seen.await.unwrap();
    assert!(
        head.contains("x-amz-content-sha256: unsigned-payload"),
        "{head}"
    );
    assert!(head.contains("x-amz-checksum-crc32:"), "{head}");
}
