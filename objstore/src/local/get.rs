//! GetObject for the loopback server, in place of s3s-fs's.
//!
//! Why: every child execution reads its object (the coordinator a footer, the worker the
//! row groups), and s3s-fs answers a GET in many hops to tokio's blocking pool (open, stat,
//! seek, each sidecar file) and then streams the body 4 KiB per hop, 2,500 hops for a
//! 10 MiB row group. Here the file, its sidecars and a body of up to [`WRITE_CHUNK`] are
//! read in one blocking task; a longer body streams [`WRITE_CHUNK`] per task.
//!
//! The answer is s3s-fs's (which ignores the conditional headers and `partNumber`, as this
//! does), with S3's behaviour where s3s-fs differs: a suffix range longer than the object
//! is the whole object (s3s-fs seeks before the start and answers 500), any range of an
//! empty object is `InvalidRange`, and a missing bucket is `NoSuchBucket`, not
//! `NoSuchKey`. Folder markers (keys ending in `/`) are left to s3s-fs.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use s3s::dto::{self, ETag};
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::store::{
    Attributes, Info, WRITE_CHUNK, blocking, hashed_e_tag, info_path, internal, metadata_path,
    no_such_bucket, object_path, read_if_present,
};

/// What one blocking task learns about the object, with the body if it is short.
struct Found {
    file: File,
    len: u64,
    modified: std::time::SystemTime,
    range: std::ops::Range<u64>,
    attributes: Option<Attributes>,
    e_tag: String,
    checksum: dto::Checksum,
    body: Option<Bytes>,
}

pub(super) async fn get_object(
    root: &Path,
    req: S3Request<dto::GetObjectInput>,
) -> S3Result<S3Response<dto::GetObjectOutput>> {
    let dto::GetObjectInput {
        bucket, key, range, ..
    } = req.input;
    let object = object_path(root, &bucket, &key)?;
    let paths = (
        root.join(&bucket),
        metadata_path(root, &bucket, &key, None),
        info_path(root, &bucket, &key),
    );
    let found = blocking("reading an object", move || find(object, paths, range)).await?;
    let Found {
        file,
        len,
        modified,
        range,
        attributes,
        e_tag,
        checksum,
        body,
    } = found;
    let content_length = range.end - range.start;
    let body = match body {
        Some(bytes) => dto::StreamingBlob::from(s3s::Body::from(bytes)),
        None => dto::StreamingBlob::wrap(chunks(file, range.clone())),
    };
    let content_range = (content_length != len || range.start != 0).then(|| {
        format!(
            "bytes {}-{}/{len}",
            range.start,
            range.end.saturating_sub(1)
        )
    });
    let a = attributes.unwrap_or_default();
    let expires = a
        .expires
        .as_deref()
        .and_then(|s| dto::Timestamp::parse(dto::TimestampFormat::DateTime, s).ok());
    // S3 returns the checksums only with the whole object.
    let checksum = if content_length == len {
        checksum
    } else {
        dto::Checksum::default()
    };
    Ok(S3Response::new(dto::GetObjectOutput {
        body: Some(body),
        content_length: Some(i64::try_from(content_length).unwrap_or(i64::MAX)),
        content_range,
        last_modified: Some(dto::Timestamp::from(modified)),
        metadata: a.user_metadata,
        content_encoding: a.content_encoding,
        content_type: a.content_type,
        content_disposition: a.content_disposition,
        content_language: a.content_language,
        cache_control: a.cache_control,
        expires,
        website_redirect_location: a.website_redirect_location,
        e_tag: Some(ETag::Strong(e_tag)),
        checksum_crc32: checksum.checksum_crc32,
        checksum_crc32c: checksum.checksum_crc32c,
        checksum_sha1: checksum.checksum_sha1,
        checksum_sha256: checksum.checksum_sha256,
        checksum_crc64nvme: checksum.checksum_crc64nvme,
        ..Default::default()
    }))
}

/// Opens the object and reads its sidecars, and its body when short; blocking.
fn find(
    object: PathBuf,
    (bucket, meta, info): (PathBuf, PathBuf, PathBuf),
    range: Option<dto::Range>,
) -> S3Result<Found> {
    let missing = || {
        if bucket.is_dir() {
            s3_error!(NoSuchKey)
        } else {
            no_such_bucket(&bucket)
        }
    };
    let mut file = match File::open(&object) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(internal(&object, e)),
    };
    let stat = file.metadata().map_err(|e| internal(&object, e))?;
    if !stat.is_file() {
        return Err(missing());
    }
    let len = stat.len();
    let modified = stat.modified().map_err(|e| internal(&object, e))?;
    let range = match range {
        None => 0..len,
        Some(_) if len == 0 => return Err(s3_error!(InvalidRange)),
        Some(r) => r.check(len).map_err(|_| s3_error!(InvalidRange))?,
    };

    let attributes = read_if_present(&meta)?.map(|bytes| {
        // s3s-fs's older format held the user metadata alone.
        serde_json::from_slice::<Attributes>(&bytes).unwrap_or_else(|_| Attributes {
            user_metadata: serde_json::from_slice(&bytes).ok(),
            ..Default::default()
        })
    });
    let info = Info::read(&info)?.unwrap_or_default();
    let checksum = info.checksum();
    let e_tag = match info.e_tag {
        Some(e_tag) => e_tag,
        None => hashed_e_tag(&mut file, &object)?,
    };

    let wanted = range.end - range.start;
    let body = if wanted <= WRITE_CHUNK as u64 {
        let mut buf = vec![0; wanted as usize];
        file.read_exact_at(&mut buf, range.start)
            .map_err(|e| internal(&object, e))?;
        Some(Bytes::from(buf))
    } else {
        None
    };
    Ok(Found {
        file,
        len,
        modified,
        range,
        attributes,
        e_tag,
        checksum,
        body,
    })
}

/// `range` of `file`, [`WRITE_CHUNK`] bytes per blocking task.
fn chunks(
    file: File,
    range: std::ops::Range<u64>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + Sync + 'static {
    let file = std::sync::Arc::new(file);
    futures::stream::try_unfold(range, move |r| {
        let file = std::sync::Arc::clone(&file);
        async move {
            if r.start >= r.end {
                return Ok(None);
            }
            let n = (r.end - r.start).min(WRITE_CHUNK as u64);
            let at = r.start;
            let buf = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; n as usize];
                file.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .await
            .map_err(io::Error::other)??;
            Ok(Some((Bytes::from(buf), at + n..r.end)))
        }
    })
}
