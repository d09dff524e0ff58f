//! PutObject and GetObject against the loopback server (its own, over s3s-fs's files),
//! through aws-sdk-s3: what a worker's reads and result writes and a coordinator's
//! checkpoints rely on, and what s3s-fs's other operations (HeadObject) must still find.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode};
use bytes::Bytes;
use fleetmap_objstore::ensure_bucket;
use fleetmap_objstore::local::LocalS3;
use s3s::crypto::{Checksum, Md5};

const BUCKET: &str = "fleet-put";

async fn server_with_bucket() -> (LocalS3, Client) {
    let server = LocalS3::start().await.expect("local S3 starts");
    let client = server.client().await;
    ensure_bucket(&client, BUCKET).await.expect("bucket");
    (server, client)
}

fn body(len: usize) -> Bytes {
    (0..len).map(|i| (i as u8).wrapping_mul(7)).collect()
}

fn etag_of(data: &[u8]) -> String {
    let mut md5 = Md5::new();
    md5.update(data);
    let hex: String = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

async fn get(c: &Client, key: &str) -> aws_sdk_s3::operation::get_object::GetObjectOutput {
    c.get_object()
        .bucket(BUCKET)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .expect("get")
}

/// The HTTP status a failed call got.
fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// The S3 error code (`NoSuchBucket`, `BadDigest`, …) a failed call got.
fn error_code<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Option<&str> {
    e.as_service_error().and_then(|e| e.code())
}

/// Temporary files the server left in its root folder.
fn temporary_files(server: &LocalS3) -> Vec<String> {
    std::fs::read_dir(server.root())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".tmp."))
        .collect()
}

/// Sidecar files s3s-fs keeps for `key` in the server's root folder.
fn sidecars(server: &LocalS3, key: &str) -> Vec<String> {
    let b64 = |s: &str| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);
    let prefix = format!(".bucket-{}.object-{}.", b64(BUCKET), b64(key));
    let mut found: Vec<String> = std::fs::read_dir(server.root())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    found.sort();
    found
}

/// Small bodies (one blocking task) and bodies past the in-memory limit (streamed) store
/// the same way: the bytes, the MD5 ETag, the checksum the SDK sent, and the attributes.
#[tokio::test]
async fn small_and_streamed_bodies_round_trip_with_etag_checksum_and_attributes() {
    let (server, c) = server_with_bucket().await;
    for (key, len) in [
        ("r/small.json", 3_000),
        ("r/large.json", 3 * 1024 * 1024 + 17),
    ] {
        let data = body(len);
        let put = c
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .content_type("application/x-ndjson")
            .metadata("run", "r-1")
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(data.clone()))
            .send()
            .await
            .expect("put");
        assert_eq!(put.e_tag(), Some(etag_of(&data).as_str()), "{key}");
        let sent_crc = put.checksum_crc32().expect("crc32 echoed").to_owned();

        let got = get(&c, key).await;
        assert_eq!(got.e_tag(), Some(etag_of(&data).as_str()), "{key}");
        assert_eq!(got.content_type(), Some("application/x-ndjson"));
        assert_eq!(
            got.metadata()
                .and_then(|m| m.get("run"))
                .map(String::as_str),
            Some("r-1")
        );
        assert_eq!(got.checksum_crc32(), Some(sent_crc.as_str()), "{key}");
        let bytes = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(bytes, data, "{key}");
        assert_eq!(sidecars(&server, key), ["internal.json", "metadata.json"]);
    }
    // No temporary file is left behind.
    let tmp = temporary_files(&server);
    assert!(tmp.is_empty(), "{tmp:?}");
}

/// PUTs `body` with no header but the presigned URL's: no Content-Type, no checksum.
async fn bare_put(c: &Client, key: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let presigned = c
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(std::time::Duration::from_secs(
                60,
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    let url = presigned
        .uri()
        .strip_prefix("http://")
        .expect("loopback is http");
    let (host, path) = url.split_at(url.find('/').unwrap());
    let mut request = format!("PUT {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in presigned.headers() {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    answer
}

/// An object stored without attributes gets no attributes file, and none of an older
/// object's attributes survive it.
#[tokio::test]
async fn an_object_without_attributes_has_no_attributes_file() {
    let (server, c) = server_with_bucket().await;
    c.put_object()
        .bucket(BUCKET)
        .key("k")
        .content_type("text/csv")
        .metadata("run", "r-1")
        .body(ByteStream::from_static(b"a,b\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(sidecars(&server, "k"), ["internal.json", "metadata.json"]);
    let answer = bare_put(&c, "k", b"plain").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(sidecars(&server, "k"), ["internal.json"]);
    let head = c
        .head_object()
        .bucket(BUCKET)
        .key("k")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(5));
    assert_eq!(head.content_type(), None);
    assert!(
        head.metadata().is_none_or(|m| m.is_empty()),
        "{:?}",
        head.metadata()
    );
    assert_eq!(head.e_tag(), Some(etag_of(b"plain").as_str()));
}

/// A checksum or Content-MD5 that does not match fails the PUT and leaves the object as
/// it was.
#[tokio::test]
async fn a_mismatched_checksum_or_md5_is_bad_digest_and_changes_nothing() {
    let (server, c) = server_with_bucket().await;
    c.put_object()
        .bucket(BUCKET)
        .key("k")
        .body(ByteStream::from_static(b"first"))
        .send()
        .await
        .unwrap();
    let wrong_crc = c
        .put_object()
        .bucket(BUCKET)
        .key("k")
        .checksum_crc32("AAAAAA==")
        .body(ByteStream::from_static(b"second"))
        .send()
        .await
        .expect_err("a wrong CRC32 is refused");
    assert_eq!(error_code(&wrong_crc), Some("BadDigest"), "{wrong_crc:?}");
    let wrong_md5 = c
        .put_object()
        .bucket(BUCKET)
        .key("k")
        .content_md5("1B2M2Y8AsgTpgAmY7PhCfg==") // MD5 of nothing
        .body(ByteStream::from_static(b"second"))
        .send()
        .await
        .expect_err("a wrong Content-MD5 is refused");
    assert_eq!(error_code(&wrong_md5), Some("BadDigest"), "{wrong_md5:?}");
    let got = get(&c, "k")
        .await
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(got.as_ref(), b"first");
    let tmp = temporary_files(&server);
    assert!(
        tmp.is_empty(),
        "a refused body's temporary file is removed: {tmp:?}"
    );
}

/// If-None-Match: * creates only; If-Match replaces only the named version.
#[tokio::test]
async fn conditional_puts_follow_s3() {
    let (_server, c) = server_with_bucket().await;
    let put = |body: &'static [u8]| {
        c.put_object()
            .bucket(BUCKET)
            .key("ckpt")
            .body(ByteStream::from_static(body))
    };
    put(b"v1").if_none_match("*").send().await.expect("creates");
    let again = put(b"v2")
        .if_none_match("*")
        .send()
        .await
        .expect_err("exists");
    assert_eq!(status(&again), Some(412));
    let stale = put(b"v2")
        .if_match(etag_of(b"v0"))
        .send()
        .await
        .expect_err("not the current version");
    assert_eq!(status(&stale), Some(412));
    put(b"v2")
        .if_match(etag_of(b"v1"))
        .send()
        .await
        .expect("the current version is replaced");
    let got = get(&c, "ckpt")
        .await
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(got.as_ref(), b"v2");
}

#[tokio::test]
async fn a_put_to_a_missing_bucket_is_no_such_bucket() {
    let (_server, c) = server_with_bucket().await;
    let e = c
        .put_object()
        .bucket("no-such-bucket")
        .key("k")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect_err("no bucket");
    assert_eq!(error_code(&e), Some("NoSuchBucket"), "{e:?}");
}

/// GetObject (the server's own): a body longer than one read is streamed whole, ranges
/// across its read boundaries come back exact with their Content-Range, and checksums
/// come only with the whole object.
#[tokio::test]
async fn long_bodies_stream_and_ranges_are_exact() {
    let (_server, c) = server_with_bucket().await;
    let data = body(2 * 1024 * 1024 + 333);
    c.put_object()
        .bucket(BUCKET)
        .key("big")
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    let whole = get(&c, "big").await;
    assert_eq!(whole.content_length(), Some(data.len() as i64));
    assert!(whole.checksum_crc32().is_some());
    assert_eq!(whole.body.collect().await.unwrap().into_bytes(), data);

    let n = data.len() as u64;
    for (header, start, end) in [
        (
            "bytes=1048570-1048590".to_owned(),
            1_048_570u64,
            1_048_591u64,
        ),
        ("bytes=100-".to_owned(), 100, n),
        ("bytes=-65536".to_owned(), n - 65_536, n),
        (format!("bytes=-{}", n + 10), 0, n),
    ] {
        let got = c
            .get_object()
            .bucket(BUCKET)
            .key("big")
            .range(&header)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{header}: {e:?}"));
        assert_eq!(got.content_length(), Some((end - start) as i64), "{header}");
        if end - start < n {
            assert_eq!(
                got.content_range(),
                Some(format!("bytes {start}-{}/{n}", end - 1).as_str()),
                "{header}"
            );
            assert!(got.checksum_crc32().is_none(), "{header}");
        }
        let bytes = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(bytes, data.slice(start as usize..end as usize), "{header}");
    }
}

#[tokio::test]
async fn get_errors_follow_s3() {
    let (_server, c) = server_with_bucket().await;
    c.put_object()
        .bucket(BUCKET)
        .key("empty")
        .body(ByteStream::from_static(b""))
        .send()
        .await
        .unwrap();
    let range = c
        .get_object()
        .bucket(BUCKET)
        .key("empty")
        .range("bytes=-10")
        .send()
        .await
        .expect_err("no range of an empty object");
    assert_eq!(status(&range), Some(416));
    let whole = get(&c, "empty").await;
    assert_eq!(whole.content_length(), Some(0));
    let beyond = c
        .get_object()
        .bucket(BUCKET)
        .key("empty")
        .range("bytes=5-9")
        .send()
        .await
        .expect_err("past the end");
    assert_eq!(status(&beyond), Some(416));

    let key = c
        .get_object()
        .bucket(BUCKET)
        .key("nope")
        .send()
        .await
        .expect_err("no key");
    assert!(
        key.as_service_error().is_some_and(|e| e.is_no_such_key()),
        "{key:?}"
    );
    let bucket = c
        .get_object()
        .bucket("no-such-bucket")
        .key("k")
        .send()
        .await
        .expect_err("no bucket");
    assert_eq!(error_code(&bucket), Some("NoSuchBucket"), "{bucket:?}");
}

/// Every attribute PutObject stores comes back from GetObject and HeadObject (which is
/// still s3s-fs's, reading the same file).
#[tokio::test]
async fn attributes_round_trip_through_get_and_head() {
    let (_server, c) = server_with_bucket().await;
    let expires = aws_sdk_s3::primitives::DateTime::from_secs(1_800_000_000);
    c.put_object()
        .bucket(BUCKET)
        .key("a")
        .content_type("application/x-ndjson")
        .content_encoding("identity")
        .content_disposition("inline")
        .content_language("en")
        .cache_control("no-cache")
        .expires(expires)
        .website_redirect_location("/b")
        .metadata("source", "s3://data/x")
        .body(ByteStream::from_static(b"{}\n"))
        .send()
        .await
        .unwrap();
    let g = get(&c, "a").await;
    let h = c
        .head_object()
        .bucket(BUCKET)
        .key("a")
        .send()
        .await
        .unwrap();
    assert_eq!(g.content_type(), Some("application/x-ndjson"));
    assert_eq!(g.content_encoding(), Some("identity"));
    assert_eq!(g.content_disposition(), Some("inline"));
    assert_eq!(g.content_language(), Some("en"));
    assert_eq!(g.cache_control(), Some("no-cache"));
    assert_eq!(g.website_redirect_location(), Some("/b"));
    assert_eq!(
        g.metadata()
            .and_then(|m| m.get("source"))
            .map(String::as_str),
        Some("s3://data/x")
    );
    assert_eq!(g.e_tag(), h.e_tag());
    assert_eq!(g.last_modified(), h.last_modified());
    assert_eq!(h.content_type(), Some("application/x-ndjson"));
    assert_eq!(h.cache_control(), Some("no-cache"));
    assert!(
        g.expires_string().is_some_and(|e| e.contains("2027")),
        "{g:?}"
    );
    assert_eq!(g.expires_string(), h.expires_string());
}
