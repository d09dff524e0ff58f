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
    complete_if(c, key, id, parts, None).await
}

/// A precondition on the object the completion would replace.
#[derive(Debug, Clone)]
enum Condition {
    IfMatch(String),
    IfNoneMatch(String),
}

/// Completes the upload; returns its ETag, or the service error as text.
async fn complete_if(
    c: &Client,
    key: &str,
    id: &str,
    parts: Vec<CompletedPart>,
    condition: Option<Condition>,
) -> Result<String, String> {
    let request = c
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        );
    let request = match condition {
        None => request,
        Some(Condition::IfMatch(etag)) => request.if_match(etag),
        Some(Condition::IfNoneMatch(etag)) => request.if_none_match(etag),
    };
    request
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

async fn list_parts(c: &Client, key: &str, id: &str) -> Vec<(i32, i64, Option<String>)> {
    let out = c
        .list_parts()
        .bucket(BUCKET)
        .key(key)
        .upload_id(id)
        .send()
        .await
        .expect("list parts");
    out.parts()
        .iter()
        .map(|p| {
            (
                p.part_number().unwrap_or_default(),
                p.size().unwrap_or_default(),
                p.e_tag().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn parts_of_one_size_are_written_in_place_and_listed() {
    let (server, c) = server_with_bucket().await;
    let key = "even";
    let id = create(&c, key).await;
    let parts = vec![
        body(1, 5 * MIB),
        body(2, 5 * MIB),
        body(3, 5 * MIB),
        body(4, 1000),
    ];
    // Part 2 arrives first and sets the stride.
    let second = upload(&c, key, &id, 2, parts[1].clone()).await;
    let fourth = upload(&c, key, &id, 4, parts[3].clone()).await;
    let first = upload(&c, key, &id, 1, parts[0].clone()).await;
    let third = upload(&c, key, &id, 3, parts[2].clone()).await;

    let root = server.root().to_owned();
    assert!(root.join(format!(".upload_id-{id}.assembly")).is_file());
    for n in 1..=3 {
        assert!(
            !root.join(format!(".upload_id-{id}.part-{n}")).exists(),
            "part {n}"
        );
    }
    assert!(root.join(format!(".upload_id-{id}.part-4")).is_file());
    let listed = list_parts(&c, key, &id).await;
    let numbers: Vec<_> = listed.iter().map(|(n, size, _)| (*n, *size)).collect();
    let m5 = 5 * MIB as i64;
    assert_eq!(numbers, vec![(1, m5), (2, m5), (3, m5), (4, 1000)]);
    assert_eq!(listed[0].2.as_deref(), first.e_tag());

    let etag = complete(&c, key, &id, vec![first, second, third, fourth])
        .await
        .unwrap();
    assert_eq!(etag, multipart_etag(&parts));
    let (got, got_etag, _) = get(&c, key).await;
    assert!(got == parts.concat(), "the object is the parts in order");
    assert_eq!(got_etag, etag);
    assert_eq!(upload_leftovers(&server), Vec::<String>::new());
    server.shutdown().await;
}

#[tokio::test]
async fn a_part_sent_again_replaces_the_first_whatever_its_size() {
    let (server, c) = server_with_bucket().await;
    let key = "again";
    let id = create(&c, key).await;
    let old = upload(&c, key, &id, 1, body(1, 5 * MIB)).await;
    let two = upload(&c, key, &id, 2, body(2, 5 * MIB)).await;
    // Same size, in place again; then part 2 once more, longer, so into a file of its own.
    let new_one = upload(&c, key, &id, 1, body(7, 5 * MIB)).await;
    let new_two = upload(&c, key, &id, 2, body(8, 6 * MIB)).await;
    assert_ne!(old.e_tag(), new_one.e_tag());

    let err = complete(&c, key, &id, vec![old, new_two.clone()])
        .await
        .unwrap_err();
    assert!(
        err.contains("part 1") && err.contains("does not match"),
        "{err}"
    );
    let err = complete(&c, key, &id, vec![new_one.clone(), two])
        .await
        .unwrap_err();
    assert!(
        err.contains("part 2") && err.contains("does not match"),
        "{err}"
    );

    let etag = complete(&c, key, &id, vec![new_one, new_two])
        .await
        .unwrap();
    let expected = [body(7, 5 * MIB), body(8, 6 * MIB)];
    assert_eq!(etag, multipart_etag(&expected));
    assert!(get(&c, key).await.0 == expected.concat());
    assert_eq!(upload_leftovers(&server), Vec::<String>::new());
    server.shutdown().await;
}

#[tokio::test]
async fn parts_left_out_of_the_completion_are_not_in_the_object() {
    let (server, c) = server_with_bucket().await;
    let key = "fewer";
    let id = create(&c, key).await;
    let one = upload(&c, key, &id, 1, body(1, 5 * MIB)).await;
    let two = upload(&c, key, &id, 2, body(2, 5 * MIB)).await;
    upload(&c, key, &id, 3, body(3, 5 * MIB)).await;
    let etag = complete(&c, key, &id, vec![one, two]).await.unwrap();
    let expected = [body(1, 5 * MIB), body(2, 5 * MIB)];
    assert_eq!(etag, multipart_etag(&expected));
    assert!(get(&c, key).await.0 == expected.concat());
    server.shutdown().await;
}

#[tokio::test]
async fn if_none_match_refuses_to_replace_an_object_and_if_match_wants_its_etag() {
    let (server, c) = server_with_bucket().await;
    let key = "guarded";
    let first = create(&c, key).await;
    let part = upload(&c, key, &first, 1, body(1, 100)).await;
    let none = || Some(Condition::IfNoneMatch("*".to_owned()));
    let etag = complete_if(&c, key, &first, vec![part], none())
        .await
        .expect("no object yet");

    let second = create(&c, key).await;
    let part = upload(&c, key, &second, 1, body(2, 100)).await;
    let wrong = "\"0123456789abcdef0123456789abcdef-1\"".to_owned();
    for refused in [none(), Some(Condition::IfMatch(wrong))] {
        let err = complete_if(&c, key, &second, vec![part.clone()], refused.clone())
            .await
            .unwrap_err();
        assert!(err.contains("PreconditionFailed"), "{refused:?}: {err}");
    }
    complete_if(&c, key, &second, vec![part], Some(Condition::IfMatch(etag)))
        .await
        .expect("the ETag matches");
    assert!(get(&c, key).await.0 == body(2, 100));
    server.shutdown().await;
}
