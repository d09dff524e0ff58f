//! Bad Athena manifests: each case ends in a clear error that names the manifest and the
//! line (or in the objects a person would expect), never a panic. The pure parser is
//! driven directly; the streaming reader runs against the real loopback S3 server.
//! A missing manifest is covered by `bad_input.rs` (a whole run against it).

use std::time::{Duration, Instant};

use fleetmap_coordinator::ItemSource;
use fleetmap_coordinator::manifest::{ManifestError, ManifestParser, parse_manifest};
use fleetmap_coordinator::reader::read_items;
use fleetmap_objstore::S3Uri;
use fleetmap_objstore::local::LocalS3;

const M: &str = "s3://fleetmap-data/unload/manifest.csv";
const MILLION: usize = 1_000_000;
/// Generous for a dev-profile build on a shared two-core machine; an accidental quadratic
/// step (e.g. a linear duplicate scan) would take hours, not seconds.
const MILLION_LINES_WITHIN: Duration = Duration::from_secs(120);

fn keys(uris: &[S3Uri]) -> Vec<String> {
    uris.iter().map(ToString::to_string).collect()
}

/// The error, checked to name the manifest, and its text.
fn error(bytes: &[u8]) -> (ManifestError, String) {
    let err = parse_manifest(M, bytes).expect_err("a bad manifest");
    let text = err.to_string();
    assert!(text.contains(M), "does not name the manifest: {text}");
    (err, text)
}

fn line_of(err: &ManifestError) -> Option<u64> {
    match err {
        ManifestError::BadLine { line, .. } | ManifestError::Duplicate { line, .. } => Some(*line),
        ManifestError::Empty { .. } => None,
    }
}

fn object(i: usize) -> String {
    format!("s3://fleetmap-data/unload/deviceid_partition=sensor-{i:07}/part-00000")
}

#[test]
fn empty_and_blank_manifests_list_no_objects() {
    for bytes in [
        &b""[..],
        b"\n",
        b"\r\n\r\n",
        b"  \t \n\n",
        b"\xEF\xBB\xBF",
        b"\xEF\xBB\xBF\r\n",
    ] {
        let (err, text) = error(bytes);
        assert!(
            matches!(err, ManifestError::Empty { .. }),
            "{:?}: {err:?}",
            bytes.escape_ascii().to_string()
        );
        assert_eq!(text, format!("manifest {M} lists no objects"));
    }
}

#[test]
fn crlf_line_ends_are_not_part_of_the_key() {
    let got = parse_manifest(M, b"s3://fleetmap-data/a/1\r\ns3://fleetmap-data/a/2\r\n").unwrap();
    assert_eq!(
        keys(&got),
        ["s3://fleetmap-data/a/1", "s3://fleetmap-data/a/2"]
    );
    assert!(got.iter().all(|u| !u.key.contains('\r')));

    // Line numbers count CRLF lines like LF ones.
    let (err, text) = error(b"s3://fleetmap-data/a/1\r\n\r\nftp://host/a/2\r\n");
    assert_eq!(line_of(&err), Some(3), "{text}");
    assert!(
        text.contains("line 3") && text.contains("ftp://host/a/2"),
        "{text}"
    );
}

#[test]
fn a_bom_is_stripped_from_the_first_line_only() {
    let got = parse_manifest(
        M,
        b"\xEF\xBB\xBFs3://fleetmap-data/a/1\ns3://fleetmap-data/a/2",
    )
    .unwrap();
    assert_eq!(
        keys(&got),
        ["s3://fleetmap-data/a/1", "s3://fleetmap-data/a/2"]
    );

    // A BOM in the middle means two files were concatenated: say where.
    let (err, text) = error(b"s3://fleetmap-data/a/1\n\xEF\xBB\xBFs3://fleetmap-data/a/2\n");
    assert_eq!(line_of(&err), Some(2), "{text}");
    assert!(text.contains("is not an object URI"), "{text}");
}

#[test]
fn blank_lines_are_skipped_but_still_counted_in_line_numbers() {
    let bytes = b"\n\ns3://fleetmap-data/a/1\n   \n\ts3://fleetmap-data/a/2  \n\n\n";
    let got = parse_manifest(M, bytes).unwrap();
    assert_eq!(
        keys(&got),
        ["s3://fleetmap-data/a/1", "s3://fleetmap-data/a/2"]
    );

    let (err, text) = error(b"\n\ns3://fleetmap-data/a/1\n\n\nnot a uri\n");
    assert_eq!(line_of(&err), Some(6), "{text}");
    assert!(
        text.contains("line 6") && text.contains("not a uri"),
        "{text}"
    );
}

#[test]
fn a_duplicate_line_names_both_lines_and_the_object() {
    let (err, text) =
        error(b"s3://fleetmap-data/a/1\ns3://fleetmap-data/a/2\n\"s3://fleetmap-data/a/1\"\r\n");
    assert_eq!(
        err,
        ManifestError::Duplicate {
            manifest: M.into(),
            line: 3,
            first_line: 1,
            uri: "s3://fleetmap-data/a/1".into(),
        }
    );
    assert!(
        text.contains("line 3 repeats the object of line 1"),
        "{text}"
    );
    // Objects that differ only in case are different objects.
    let got = parse_manifest(M, b"s3://fleetmap-data/a/K\ns3://fleetmap-data/a/k\n").unwrap();
    assert_eq!(got.len(), 2);
}

#[test]
fn a_non_s3_uri_is_named_with_its_line() {
    for (line, why) in [
        ("https://fleetmap-data.s3.amazonaws.com/a/1", "scheme"),
        ("s3a://fleetmap-data/a/1", "scheme"),
        ("S3://fleetmap-data/a/1", "scheme"),
        ("s3:/fleetmap-data/a/1", "scheme"),
        ("fleetmap-data/a/1", "scheme"),
        ("/data/unload/part-0", "scheme"),
        ("s3://Fleetmap_Data/a/1", "bucket name"),
        ("s3://fleetmap-data", "key is empty"),
        ("s3://fleetmap-data/a/", "folder"),
    ] {
        let bytes = format!("s3://fleetmap-data/ok/1\n{line}\n");
        let (err, text) = error(bytes.as_bytes());
        assert_eq!(line_of(&err), Some(2), "{line}: {text}");
        assert!(text.contains(line) && text.contains(why), "{line}: {text}");
    }
}

#[test]
fn binary_and_overlong_lines_are_refused_by_line() {
    // Someone pointed the run at a Parquet file instead of its manifest.
    let (err, text) = error(b"PAR1\x15\x04\x15\x80\x01\x15\x80\x01L\x15\x02\xff\xfe\n");
    assert_eq!(line_of(&err), Some(1), "{text}");
    assert!(text.contains("not UTF-8"), "{text}");

    let long = format!("s3://fleetmap-data/a/1\n{}\n", "k".repeat(10_000));
    let (err, text) = error(long.as_bytes());
    assert_eq!(line_of(&err), Some(2), "{text}");
    assert!(text.contains("longer than any S3 URI"), "{text}");
}

#[test]
fn a_million_lines_stream_through_the_parser_in_order() {
    let started = Instant::now();
    // Lines are made one at a time and dropped: the parser is all that holds memory.
    let mut parser = ManifestParser::new(M);
    for i in 0..MILLION {
        let end = if i % 2 == 0 { "\n" } else { "\r\n" };
        parser
            .push_line(format!("{}{end}", object(i)).as_bytes())
            .unwrap();
    }
    let uris = parser.finish().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(uris.len(), MILLION);
    for i in [0, 1, 4_242, MILLION / 2, MILLION - 1] {
        assert_eq!(uris[i].to_string(), object(i));
    }
    assert!(elapsed < MILLION_LINES_WITHIN, "{elapsed:?}");
    eprintln!("1,000,000 manifest lines parsed in {elapsed:?}");

    // A duplicate at the very end is still found, and named.
    let mut parser = ManifestParser::new(M);
    for i in 0..MILLION {
        parser.push_line(object(i).as_bytes()).unwrap();
    }
    let err = parser.push_line(object(123_456).as_bytes()).unwrap_err();
    assert_eq!(
        err,
        ManifestError::Duplicate {
            manifest: M.into(),
            line: MILLION as u64 + 1,
            first_line: 123_457,
            uri: object(123_456),
        }
    );
}

async fn s3_with(body: Vec<u8>) -> (LocalS3, aws_sdk_s3::Client) {
    let s3 = LocalS3::start().await.expect("loopback S3");
    let client = s3.client().await;
    fleetmap_objstore::ensure_bucket(&client, "fleetmap-data")
        .await
        .unwrap();
    fleetmap_objstore::put_bytes(
        &client,
        "fleetmap-data",
        "unload/manifest.csv",
        body.into(),
        "text/csv",
    )
    .await
    .unwrap();
    (s3, client)
}

fn manifest_source() -> ItemSource {
    ItemSource::AthenaManifest { uri: M.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_line_manifest_object_is_read_as_a_stream() {
    let mut body = b"\xEF\xBB\xBF".to_vec();
    for i in 0..MILLION {
        body.extend_from_slice(object(i).as_bytes());
        body.extend_from_slice(if i % 3 == 0 { b"\r\n" } else { b"\n" });
    }
    let size = body.len();
    let (s3, client) = s3_with(body).await;
    let started = Instant::now();
    let uris = read_items(&client, &manifest_source()).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(uris.len(), MILLION);
    for i in [0, 1, 65_535, MILLION / 2, MILLION - 1] {
        assert_eq!(uris[i].to_string(), object(i));
    }
    assert!(elapsed < MILLION_LINES_WITHIN, "{elapsed:?}");
    eprintln!("a {size}-byte, 1,000,000-line manifest read from S3 in {elapsed:?}");
    s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_deep_in_a_large_manifest_object_is_named_by_its_number() {
    const BAD: usize = 700_001;
    let mut body = Vec::new();
    for i in 1..=BAD + 10 {
        let line = if i == BAD {
            "gs://elsewhere/part-0".to_owned()
        } else {
            object(i)
        };
        body.extend_from_slice(line.as_bytes());
        body.push(b'\n');
    }
    let (s3, client) = s3_with(body).await;
    let err = read_items(&client, &manifest_source())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(M) && err.contains(&format!("line {BAD}")) && err.contains("gs://elsewhere"),
        "{err}"
    );
    s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_objects_fail_like_the_parser_says() {
    for (body, want) in [
        (&b""[..], "lists no objects".to_owned()),
        (b"\xEF\xBB\xBF\r\n\r\n", "lists no objects".to_owned()),
        (
            b"s3://fleetmap-data/a/1\r\n\r\ns3://fleetmap-data/a/1\r\n",
            "line 3 repeats the object of line 1".to_owned(),
        ),
        (b"s3://fleetmap-data/a/1\nhttp://x/y\n", "line 2".to_owned()),
        (b"PAR1\x00\x00\xff\xfe", "line 1".to_owned()),
    ] {
        let (s3, client) = s3_with(body.to_vec()).await;
        let err = read_items(&client, &manifest_source())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(M) && err.contains(&want), "{err}");
        // The reader says exactly what the parser says.
        assert_eq!(err, parse_manifest(M, body).unwrap_err().to_string());
        s3.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_without_newlines_is_refused_at_line_one() {
    // 16 MiB without a newline: a binary object named as the manifest.
    let body = vec![b'x'; 16 * 1024 * 1024];
    let (s3, client) = s3_with(body).await;
    let err = read_items(&client, &manifest_source())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(M) && err.contains("line 1"), "{err}");
    assert!(err.contains("longer than any S3 URI"), "{err}");
    s3.shutdown().await;
}
