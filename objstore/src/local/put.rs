//! PutObject for the loopback server, in place of s3s-fs's.
//!
//! Why: a tiny item's results are one small PutObject, and s3s-fs spends it in hops to
//! tokio's blocking pool: it creates a temporary file, writes it through a buffered async
//! writer, renames it, then does the same for each of the object's two sidecar files
//! (attributes; ETag and checksums), every step a task handed to another thread and a
//! wake-up back. `perf` over B3 tiny put those futex wake-ups and waits at a fifth of the
//! server's CPU, more than the file system work itself. Here a body of up to
//! [`WRITE_CHUNK`] is gathered in memory and everything else (hashing, the file, both
//! sidecars, the renames) is one blocking task; a larger body streams to its temporary
//! file as multipart parts do, and the rest is one more task. The preconditions
//! (If-Match, If-None-Match) are checked in that task, just before the object is renamed
//! into place, not before the body is read.
//!
//! The files are s3s-fs's layout, so its GetObject, HeadObject, listings and CopyObject
//! read them as their own. An object without attributes (no content type, no user
//! metadata, …) gets no attributes file rather than an empty one, which s3s-fs reads the
//! same way: one file fewer to create, and an older object's attributes go. Folder markers
//! (keys ending in `/`) are left to s3s-fs.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::{self, ETag};
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::store::{
    Attributes, Info, Sink, TmpFile, WRITE_CHUNK, blocking, check, check_content_md5,
    check_destination, hasher_for, hex, info_path, internal, metadata_path, object_path,
    read_trailers, receive, remove_if_present, tmp_path, write_file,
};

/// The body once the request has delivered all of it.
enum Body {
    /// Short enough to have been gathered whole in memory: written, checked and moved into
    /// place in one blocking task.
    Gathered(PathBuf, Vec<Bytes>, ChecksumHasher),
    /// Streamed into a temporary file as it arrived.
    Received(TmpFile, Sink),
}

/// What the last step needs besides the received body.
struct Commit {
    expected: dto::Checksum,
    content_md5: Option<String>,
    attributes: Attributes,
    if_match: Option<dto::ETagCondition>,
    if_none_match: Option<dto::ETagCondition>,
    bucket: PathBuf,
    object: PathBuf,
    meta: PathBuf,
    info: PathBuf,
    meta_tmp: PathBuf,
    info_tmp: PathBuf,
}

/// Stores the object under `root`, s3s-fs's folder.
pub(super) async fn put_object(
    root: &Path,
    req: S3Request<dto::PutObjectInput>,
) -> S3Result<S3Response<dto::PutObjectOutput>> {
    let S3Request {
        input,
        trailing_headers,
        ..
    } = req;
    let dto::PutObjectInput {
        body,
        bucket,
        key,
        metadata,
        content_md5,
        content_encoding,
        content_type,
        content_disposition,
        content_language,
        cache_control,
        expires,
        website_redirect_location,
        if_match,
        if_none_match,
        storage_class,
        checksum_algorithm,
        checksum_crc32,
        checksum_crc32c,
        checksum_crc64nvme,
        checksum_sha1,
        checksum_sha256,
        ..
    } = input;
    if let Some(class) = &storage_class
        && !["STANDARD", "REDUCED_REDUNDANCY"].contains(&class.as_str())
    {
        return Err(s3_error!(InvalidStorageClass));
    }
    let mut body = body.ok_or_else(|| s3_error!(IncompleteBody))?;
    let object = object_path(root, &bucket, &key)?;
    let expected = dto::Checksum {
        checksum_crc32,
        checksum_crc32c,
        checksum_crc64nvme,
        checksum_sha1,
        checksum_sha256,
        ..Default::default()
    };
    let checksum = hasher_for(&expected, checksum_algorithm.as_ref())?;
    let expires = expires.and_then(|t| {
        let mut out = Vec::new();
        t.format(dto::TimestampFormat::DateTime, &mut out)
            .ok()
            .map(|()| String::from_utf8_lossy(&out).into_owned())
    });

    // Up to WRITE_CHUNK of the body in memory: a small object then costs one blocking task.
    let mut head: Vec<Bytes> = Vec::new();
    let mut gathered = 0;
    let mut ended = false;
    while gathered < WRITE_CHUNK {
        match body.next().await {
            Some(Ok(bytes)) => {
                gathered += bytes.len();
                head.push(bytes);
            }
            Some(Err(e)) => {
                return Err(s3_error!(
                    IncompleteBody,
                    "the object's body broke off: {e}"
                ));
            }
            None => {
                ended = true;
                break;
            }
        }
    }
    let mut commit = Commit {
        expected,
        content_md5,
        attributes: Attributes {
            // s3s gives an empty map when no x-amz-meta-* header was sent.
            user_metadata: metadata.filter(|m| !m.is_empty()),
            content_encoding,
            content_type,
            content_disposition,
            content_language,
            cache_control,
            expires,
            website_redirect_location,
        },
        if_match,
        if_none_match,
        bucket: root.join(&bucket),
        object,
        meta: metadata_path(root, &bucket, &key, None),
        info: info_path(root, &bucket, &key),
        meta_tmp: tmp_path(root),
        info_tmp: tmp_path(root),
    };
    let tmp = tmp_path(root);
    let body = if ended {
        Body::Gathered(tmp, head, checksum)
    } else {
        let (file, sink) =
            blocking("storing an object", move || begin(tmp, &head, checksum)).await?;
        Body::Received(file, receive(body, sink).await?)
    };
    // Checksums in a trailer come after the body, so they are read once it has ended.
    if let Some(trailers) = trailing_headers.and_then(|t| t.take()) {
        read_trailers(&trailers, &mut commit.expected)?;
    }
    let (e_tag, actual) = blocking("storing an object", move || {
        let (file, sink) = match body {
            Body::Gathered(tmp, head, checksum) => begin(tmp, &head, checksum)?,
            Body::Received(file, sink) => (file, sink),
        };
        commit_object(file, sink, commit)
    })
    .await?;
    Ok(S3Response::new(dto::PutObjectOutput {
        e_tag: Some(ETag::Strong(e_tag)),
        checksum_crc32: actual.checksum_crc32,
        checksum_crc32c: actual.checksum_crc32c,
        checksum_crc64nvme: actual.checksum_crc64nvme,
        checksum_sha1: actual.checksum_sha1,
        checksum_sha256: actual.checksum_sha256,
        ..Default::default()
    }))
}

/// Creates the temporary file and writes the chunks gathered so far; blocking.
fn begin(tmp: PathBuf, head: &[Bytes], checksum: ChecksumHasher) -> S3Result<(TmpFile, Sink)> {
    let (file, out) = TmpFile::create(tmp)?;
    let mut sink = Sink {
        file: out,
        at: None,
        md5: Md5::new(),
        checksum,
        len: 0,
    };
    for bytes in head {
        sink.absorb(bytes).map_err(|e| internal(&file.path, e))?;
    }
    Ok((file, sink))
}

/// Checks the received body against what the request said, then moves it into place with
/// its sidecars; blocking. Returns the ETag and the checksums computed.
fn commit_object(file: TmpFile, sink: Sink, c: Commit) -> S3Result<(String, dto::Checksum)> {
    let Sink {
        file: out,
        md5,
        checksum,
        ..
    } = sink;
    drop(out);
    let md5 = md5.finalize();
    let actual = checksum.finalize();
    check_content_md5(c.content_md5.as_deref(), &md5)?;
    check(&c.expected, &actual)?;
    check_destination(
        &c.bucket,
        &c.object,
        &c.info,
        c.if_match.as_ref(),
        c.if_none_match.as_ref(),
    )?;
    if let Some(dir) = c.object.parent() {
        std::fs::create_dir_all(dir).map_err(|e| internal(dir, e))?;
    }
    file.persist_blocking(&c.object)?;

    if c.attributes.is_empty() {
        remove_if_present(&c.meta)?;
    } else {
        let body = serde_json::to_vec(&c.attributes)
            .map_err(|e| s3_error!(InternalError, "encoding the attributes: {e}"))?;
        write_file(c.meta_tmp, &c.meta, &body)?;
    }
    let e_tag = hex(&md5);
    Info::new(e_tag.clone(), &actual).write(c.info_tmp, &c.info)?;
    Ok((e_tag, actual))
}
