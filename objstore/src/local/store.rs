//! The loopback server's file handling shared by its own PutObject ([`super::put`]) and
//! multipart uploads ([`super::multipart`]): bodies streamed to disk while hashed, files
//! written under a temporary name and renamed into place, checksum checks, and s3s-fs's
//! paths for objects and their sidecar files.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum, Md5};
use s3s::dto::{self, ETag};
use s3s::{S3Error, S3Result, s3_error};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Bytes of a body (a part's or an object's) gathered before they are hashed and written in
/// one blocking task: large enough that the hops to the blocking pool cost nothing next to
/// the work, small enough that a large body never sits in memory whole.
pub(super) const WRITE_CHUNK: usize = 1024 * 1024;

/// An object's attributes as s3s-fs stores them (its `ObjectAttributes`, same fields and
/// names), in `.bucket-….object-….metadata.json`.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Attributes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user_metadata: Option<dto::Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) content_disposition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) content_language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cache_control: Option<String>,
    /// An HTTP date, as s3s-fs writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) website_redirect_location: Option<String>,
}

impl Attributes {
    pub(super) fn is_empty(&self) -> bool {
        self.user_metadata.is_none()
            && self.content_encoding.is_none()
            && self.content_type.is_none()
            && self.content_disposition.is_none()
            && self.content_language.is_none()
            && self.cache_control.is_none()
            && self.expires.is_none()
            && self.website_redirect_location.is_none()
    }
}

/// The body's MD5 must be the Content-MD5 the request sent, if any.
pub(super) fn check_content_md5(content_md5: Option<&str>, md5: &[u8; 16]) -> S3Result<()> {
    let Some(content_md5) = content_md5 else {
        return Ok(());
    };
    let given = base64_simd::STANDARD
        .decode_to_vec(content_md5)
        .map_err(|_| s3_error!(InvalidDigest, "Content-MD5 is not base64"))?;
    if given != md5 {
        return Err(s3_error!(BadDigest, "Content-MD5 does not match the body"));
    }
    Ok(())
}

/// An object's ETag and checksums as s3s-fs stores them (its `InternalInfo`, same keys), in
/// `.bucket-<b64 bucket>.object-<b64 key>.internal.json`.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Info {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) e_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum_crc32: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum_crc32c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum_sha1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum_crc64nvme: Option<String>,
}

impl Info {
    pub(super) fn new(e_tag: String, checksum: &dto::Checksum) -> Info {
        Info {
            e_tag: Some(e_tag),
            checksum_crc32: checksum.checksum_crc32.clone(),
            checksum_crc32c: checksum.checksum_crc32c.clone(),
            checksum_sha1: checksum.checksum_sha1.clone(),
            checksum_sha256: checksum.checksum_sha256.clone(),
            checksum_crc64nvme: checksum.checksum_crc64nvme.clone(),
        }
    }

    pub(super) fn checksum(&self) -> dto::Checksum {
        dto::Checksum {
            checksum_crc32: self.checksum_crc32.clone(),
            checksum_crc32c: self.checksum_crc32c.clone(),
            checksum_sha1: self.checksum_sha1.clone(),
            checksum_sha256: self.checksum_sha256.clone(),
            checksum_crc64nvme: self.checksum_crc64nvme.clone(),
            ..Default::default()
        }
    }

    /// The object's info file; `None` when it has none, or one that does not parse.
    /// Blocking.
    pub(super) fn read(path: &Path) -> S3Result<Option<Info>> {
        Ok(read_if_present(path)?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Replaces the info file at `dest` (through `tmp`); blocking.
    pub(super) fn write(&self, tmp: PathBuf, dest: &Path) -> S3Result<()> {
        let body = serde_json::to_vec(self)
            .map_err(|e| s3_error!(InternalError, "encoding an object's info: {e}"))?;
        write_file(tmp, dest, &body)
    }
}

/// The ETag of an object whose info file does not record one (s3s-fs's older files): its
/// MD5, as s3s-fs computes it. Blocking.
pub(super) fn hashed_e_tag(file: &mut File, object: &Path) -> S3Result<String> {
    Ok(hex(&md5_of(file).map_err(|e| internal(object, e))?))
}

/// A file's bytes, or `None` when it does not exist; blocking.
pub(super) fn read_if_present(path: &Path) -> S3Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(internal(path, e)),
    }
}

pub(super) fn no_such_bucket(bucket: &Path) -> S3Error {
    let name = bucket.file_name().unwrap_or_default().to_string_lossy();
    s3_error!(NoSuchBucket, "no bucket {name}")
}

/// Whether an object may be stored at `object` now: its bucket must exist, and
/// If-None-Match: `*` fails when the object exists, If-Match when it does not or when its
/// ETag is not the one named. Blocking.
pub(super) fn check_destination(
    bucket: &Path,
    object: &Path,
    info: &Path,
    if_match: Option<&dto::ETagCondition>,
    if_none_match: Option<&dto::ETagCondition>,
) -> S3Result<()> {
    if !bucket.is_dir() {
        return Err(no_such_bucket(bucket));
    }
    let exists = object.is_file();
    if if_none_match.is_some_and(dto::ETagCondition::is_any) && exists {
        return Err(s3_error!(PreconditionFailed, "Object already exists"));
    }
    let Some(condition) = if_match else {
        return Ok(());
    };
    if !exists {
        return Err(s3_error!(PreconditionFailed, "Object does not exist"));
    }
    if let Some(expected) = condition.as_etag() {
        let recorded = Info::read(info).ok().flatten().and_then(|i| i.e_tag);
        let current = match recorded {
            Some(e_tag) => e_tag,
            None => {
                let mut file = File::open(object).map_err(|e| internal(object, e))?;
                hashed_e_tag(&mut file, object)?
            }
        };
        if !ETag::Strong(current).strong_cmp(expected) {
            return Err(s3_error!(PreconditionFailed, "ETag does not match"));
        }
    }
    Ok(())
}

/// What a body's bytes go through while they arrive.
pub(super) struct Sink {
    pub(super) file: File,
    /// Where in the file the body starts, when it is written in place; else appended.
    pub(super) at: Option<u64>,
    pub(super) md5: Md5,
    pub(super) checksum: ChecksumHasher,
    pub(super) len: u64,
}

impl Sink {
    pub(super) fn absorb(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.md5.update(bytes);
        self.checksum.update(bytes);
        match self.at {
            Some(at) => self.file.write_all_at(bytes, at + self.len)?,
            None => self.file.write_all(bytes)?,
        }
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// Where the sink is: free, or on the blocking pool with a batch of chunks.
enum Stage {
    Idle(Box<Sink>),
    Busy(JoinHandle<io::Result<Box<Sink>>>),
}

impl Stage {
    /// Waits for the batch in flight, if any.
    async fn settle(self) -> S3Result<Box<Sink>> {
        match self {
            Stage::Idle(sink) => Ok(sink),
            Stage::Busy(task) => task
                .await
                .map_err(|e| s3_error!(InternalError, "writing a body: {e}"))?
                .map_err(|e| s3_error!(InternalError, "writing a body: {e}")),
        }
    }
}

/// Streams `body` into the sink, about [`WRITE_CHUNK`] bytes per blocking task, one task at
/// a time, the next batch arriving while the last is hashed and written. The chunks are
/// handed over as received, not copied together.
pub(super) async fn receive(mut body: dto::StreamingBlob, sink: Sink) -> S3Result<Sink> {
    let mut stage = Stage::Idle(Box::new(sink));
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0;
    loop {
        let ended = match body.next().await {
            Some(Ok(bytes)) => {
                batched += bytes.len();
                batch.push(bytes);
                false
            }
            Some(Err(e)) => {
                return Err(s3_error!(IncompleteBody, "the body broke off: {e}"));
            }
            None => true,
        };
        if batched >= WRITE_CHUNK || (ended && batched > 0) {
            let mut sink = stage.settle().await?;
            let full = std::mem::take(&mut batch);
            batched = 0;
            stage = Stage::Busy(tokio::task::spawn_blocking(move || {
                for bytes in &full {
                    sink.absorb(bytes)?;
                }
                Ok(sink)
            }));
        }
        if ended {
            return Ok(*stage.settle().await?);
        }
    }
}

/// A file being written under a temporary name, removed unless it is moved into place.
pub(super) struct TmpFile {
    pub(super) path: PathBuf,
    keep: bool,
}

impl TmpFile {
    /// Blocking.
    pub(super) fn create(path: PathBuf) -> S3Result<(TmpFile, File)> {
        let file = File::create(&path).map_err(|e| internal(&path, e))?;
        Ok((TmpFile { path, keep: false }, file))
    }

    pub(super) fn persist_blocking(mut self, dest: &Path) -> S3Result<()> {
        std::fs::rename(&self.path, dest).map_err(|e| internal(dest, e))?;
        self.keep = true;
        Ok(())
    }

    /// Moves the file to `dest`; returns its length and mtime there.
    pub(super) async fn persist(self, dest: PathBuf) -> S3Result<(u64, SystemTime)> {
        blocking("storing a file", move || {
            self.persist_blocking(&dest)?;
            let meta = std::fs::metadata(&dest).map_err(|e| internal(&dest, e))?;
            let modified = meta.modified().map_err(|e| internal(&dest, e))?;
            Ok((meta.len(), modified))
        })
        .await
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A hasher for every checksum the request names, by value or by algorithm.
pub(super) fn hasher_for(
    expected: &dto::Checksum,
    algorithm: Option<&dto::ChecksumAlgorithm>,
) -> S3Result<ChecksumHasher> {
    let mut h = ChecksumHasher::default();
    let wants = |name: &str| algorithm.is_some_and(|a| a.as_str().eq_ignore_ascii_case(name));
    if expected.checksum_crc32.is_some() || wants(dto::ChecksumAlgorithm::CRC32) {
        h.crc32 = Some(Default::default());
    }
    if expected.checksum_crc32c.is_some() || wants(dto::ChecksumAlgorithm::CRC32C) {
        h.crc32c = Some(Default::default());
    }
    if expected.checksum_crc64nvme.is_some() || wants(dto::ChecksumAlgorithm::CRC64NVME) {
        h.crc64nvme = Some(Default::default());
    }
    if expected.checksum_sha1.is_some() || wants(dto::ChecksumAlgorithm::SHA1) {
        h.sha1 = Some(Default::default());
    }
    if expected.checksum_sha256.is_some() || wants(dto::ChecksumAlgorithm::SHA256) {
        h.sha256 = Some(Default::default());
    }
    if let Some(a) = algorithm {
        let known = [
            dto::ChecksumAlgorithm::CRC32,
            dto::ChecksumAlgorithm::CRC32C,
            dto::ChecksumAlgorithm::CRC64NVME,
            dto::ChecksumAlgorithm::SHA1,
            dto::ChecksumAlgorithm::SHA256,
        ];
        if !known.iter().any(|k| a.as_str().eq_ignore_ascii_case(k)) {
            return Err(s3_error!(
                InvalidArgument,
                "unsupported checksum algorithm {}",
                a.as_str()
            ));
        }
    }
    Ok(h)
}

/// Checksums sent after the body (`aws-chunked` with a trailer) are what the body must match.
pub(super) fn read_trailers(
    trailers: &hyper::HeaderMap,
    expected: &mut dto::Checksum,
) -> S3Result<()> {
    let value = |name: &str| -> S3Result<Option<String>> {
        trailers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| s3_error!(InvalidArgument, "trailer {name} is not text"))
            })
            .transpose()
    };
    for (name, slot) in [
        ("x-amz-checksum-crc32", &mut expected.checksum_crc32),
        ("x-amz-checksum-crc32c", &mut expected.checksum_crc32c),
        ("x-amz-checksum-crc64nvme", &mut expected.checksum_crc64nvme),
        ("x-amz-checksum-sha1", &mut expected.checksum_sha1),
        ("x-amz-checksum-sha256", &mut expected.checksum_sha256),
    ] {
        if let Some(v) = value(name)? {
            *slot = Some(v);
        }
    }
    Ok(())
}

/// Every checksum the client sent must match the bytes received.
pub(super) fn check(expected: &dto::Checksum, actual: &dto::Checksum) -> S3Result<()> {
    for (name, want, got) in [
        ("CRC32", &expected.checksum_crc32, &actual.checksum_crc32),
        ("CRC32C", &expected.checksum_crc32c, &actual.checksum_crc32c),
        (
            "CRC64NVME",
            &expected.checksum_crc64nvme,
            &actual.checksum_crc64nvme,
        ),
        ("SHA1", &expected.checksum_sha1, &actual.checksum_sha1),
        ("SHA256", &expected.checksum_sha256, &actual.checksum_sha256),
    ] {
        if let Some(want) = want
            && got.as_ref() != Some(want)
        {
            return Err(s3_error!(
                BadDigest,
                "the body's {name} checksum is {}, the request said {want}",
                got.as_deref().unwrap_or("not computed")
            ));
        }
    }
    Ok(())
}

/// `<root>/<bucket>/<key>`, refusing a bucket or key that would leave the bucket's folder.
pub(super) fn object_path(root: &Path, bucket: &str, key: &str) -> S3Result<PathBuf> {
    let normal = |p: &str| {
        Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    };
    if bucket.is_empty() || bucket.contains('/') || !normal(bucket) {
        return Err(s3_error!(InvalidBucketName, "bucket {bucket:?}"));
    }
    if key.is_empty() || key.ends_with('/') || !normal(key) {
        return Err(s3_error!(
            InvalidArgument,
            "key {key:?} cannot be stored by this server (empty, a folder, or leaving the bucket)"
        ));
    }
    Ok(root.join(bucket).join(key))
}

pub(super) fn metadata_path(root: &Path, bucket: &str, key: &str, upload: Option<Uuid>) -> PathBuf {
    let upload = upload.map(|u| format!(".upload-{u}")).unwrap_or_default();
    root.join(format!(
        ".bucket-{}.object-{}{upload}.metadata.json",
        b64(bucket),
        b64(key)
    ))
}

pub(super) fn b64(s: &str) -> String {
    base64_simd::URL_SAFE_NO_PAD.encode_to_string(s)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(super) fn md5_of(file: &mut File) -> io::Result<[u8; 16]> {
    let mut md5 = Md5::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(md5.finalize());
        }
        md5.update(&buf[..n]);
    }
}

/// Runs `f` on the blocking pool; a task that panicked is an internal error while `what`.
pub(super) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> S3Result<T> + Send + 'static,
) -> S3Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| s3_error!(InternalError, "{what}: {e}"))?
}

pub(super) fn remove_if_present(path: &Path) -> S3Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(internal(path, e)),
    }
}

pub(super) fn internal(path: &Path, e: io::Error) -> S3Error {
    s3_error!(InternalError, "{}: {e}", path.display())
}

/// A fresh name for a file being written, in the root folder beside s3s-fs's own
/// (`.tmp.<n>.internal.part`, which it deletes when it starts) but never equal to one.
pub(super) fn tmp_path(root: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    root.join(format!(
        ".tmp.fleetmap-{}-{n}.internal.part",
        std::process::id()
    ))
}

/// `.bucket-<b64 bucket>.object-<b64 key>.internal.json`: the object's ETag and checksums.
pub(super) fn info_path(root: &Path, bucket: &str, key: &str) -> PathBuf {
    root.join(format!(
        ".bucket-{}.object-{}.internal.json",
        b64(bucket),
        b64(key)
    ))
}

/// Writes `body` to a temporary file and renames it to `dest`; blocking.
pub(super) fn write_file(tmp: PathBuf, dest: &Path, body: &[u8]) -> S3Result<()> {
    let (file, mut out) = TmpFile::create(tmp)?;
    out.write_all(body).map_err(|e| internal(&file.path, e))?;
    drop(out);
    file.persist_blocking(dest)
}
