//! Multipart uploads for the loopback server, in place of s3s-fs's UploadPart and
//! CompleteMultipartUpload.
//!
//! Why: B3 large writes 7.7 GB of results as multipart uploads, and s3s-fs spent most of the
//! server's CPU on them (`perf`: MD5 38 %, page-cache copies 26 %, blocking-pool wake-ups
//! 10 %). It hashes each part as it arrives; at completion it reads every part back through
//! user space, hashes it again for the multipart ETag and writes it out again, 64 KiB per hop
//! to tokio's blocking pool. Here a part is hashed once, as it arrives, and its digest kept.
//! Parts of one size (every part but the last, with any client that splits its upload evenly)
//! are written straight to their place in the object-to-be (see [`Assembly`]), so completing
//! the upload is a rename; other parts are files of their own, joined inside the kernel
//! (`std::io::copy` between files is `copy_file_range`) in one blocking task. Checksums a
//! client sends with a part (CRC32 and the like) are verified, which s3s-fs skipped, so an
//! upload whose payload is not signed is still checked end to end; the ETags named in the
//! completion are checked against the parts, as S3 does.
//!
//! The files are s3s-fs's own layout, so its CreateMultipartUpload, AbortMultipartUpload
//! and the reads of the finished object work on them unchanged, and its ListParts needs only
//! the parts held in place added:
//! - `.upload-<id>.json`: the upload exists (JSON of the initiator's access key);
//! - `.upload_id-<id>.part-<n>`: part `n`, unless the assembly holds it;
//! - `.upload_id-<id>.assembly` and `.upload_id-<id>.assembly.json`: the parts written in
//!   place, and which they are. Named like the parts, so s3s-fs's abort removes them too,
//!   and its ListParts passes over them (the server adds them to its answer).
//! - `.bucket-<b64 bucket>.object-<b64 key>[.upload-<id>].metadata.json`: the attributes
//!   (content type, user metadata), first of the upload, then of the object;
//! - `.bucket-<b64 bucket>.object-<b64 key>.internal.json`: the ETag (and checksums);
//! - `.tmp.*.internal.part`: files being written, which s3s-fs deletes when it starts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use s3s::auth::Credentials;
use s3s::crypto::{Checksum, Md5};
use s3s::dto::{self, ETag};
use s3s::stream::ByteStream as _;
use s3s::{S3Request, S3Response, S3Result, s3_error};
use uuid::Uuid;

use super::store::{
    Info, Sink, TmpFile, blocking, check, check_content_md5, check_destination, hasher_for, hex,
    info_path, internal, md5_of, metadata_path, object_path, read_trailers, receive,
    remove_if_present, tmp_path, write_file,
};

/// S3's limits on part numbers.
const PART_NUMBERS: std::ops::RangeInclusive<i32> = 1..=10_000;

/// Every part but the last must be at least this long (S3's rule).
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// The furthest an assembly reaches: S3's largest object (5 TiB), well inside ext4's 16 TiB
/// file limit. A part that would end beyond it is a part file.
const MAX_ASSEMBLY: u64 = 5 << 40;

/// The parts of one upload that are written straight to their place in one file: part `n`
/// at `(n − 1) × stride`. Completing the upload then renames that file into place instead
/// of copying every byte once more, and leaves no part files to delete (whose pages the
/// kernel may still be writing back: B3 large waited on that at the end of each run). The
/// stride is the length of the first part of at least [`MIN_PART_SIZE`] to arrive; a part
/// of another length, or one whose number is being written at that moment, goes to a part
/// file. The index (`.assembly.json`) is rewritten after each part, so a restarted server
/// still finds the parts; a part about to be overwritten leaves the index first, so a part
/// torn by a crash is never listed.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Assembly {
    stride: u64,
    /// The parts written completely, with their MD5.
    parts: BTreeMap<i32, [u8; 16]>,
    #[serde(skip)]
    writing: BTreeSet<i32>,
}

type Shared<T> = Arc<Mutex<T>>;

/// Locks a mutex whose holders never leave it half updated (plain maps and sets).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A part being written into its upload's assembly: unmarked as being written when dropped,
/// however the write ends.
struct Claim {
    assembly: Shared<Assembly>,
    part: i32,
    offset: u64,
    len: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.assembly).writing.remove(&self.part);
    }
}

/// Where a part's bytes go.
enum Dest {
    InPlace(Claim),
    PartFile(TmpFile),
}

/// Multipart state beside s3s-fs: where its files are, and the digest of each part received
/// since the server started.
pub(super) struct Multipart {
    root: PathBuf,
    /// MD5 of each part this process wrote, with the length and mtime it had then, so a part
    /// replaced behind the server's back is hashed again rather than trusted. Entries go
    /// when their upload completes or is aborted; a server restarted mid-upload hashes the
    /// parts it did not see at completion.
    digests: Mutex<HashMap<(Uuid, i32), PartDigest>>,
    /// The assemblies of the uploads seen since the server started (loaded from their index
    /// when first needed).
    assemblies: Mutex<HashMap<Uuid, Shared<Assembly>>>,
}

#[derive(Clone, Copy)]
struct PartDigest {
    md5: [u8; 16],
    len: u64,
    modified: SystemTime,
}

impl Multipart {
    pub(super) fn new(root: PathBuf) -> Multipart {
        Multipart {
            root,
            digests: Mutex::default(),
            assemblies: Mutex::default(),
        }
    }

    /// Forgets what is kept of an upload that has ended (completed or aborted).
    pub(super) fn forget(&self, upload_id: &str) {
        if let Ok(id) = Uuid::parse_str(upload_id) {
            lock(&self.digests).retain(|(upload, _), _| *upload != id);
            lock(&self.assemblies).remove(&id);
        }
    }

    fn assembly_path(&self, id: Uuid) -> PathBuf {
        self.root.join(format!(".upload_id-{id}.assembly"))
    }

    fn index_path(&self, id: Uuid) -> PathBuf {
        self.root.join(format!(".upload_id-{id}.assembly.json"))
    }

    /// The upload's assembly, read from its index the first time.
    async fn assembly(&self, id: Uuid) -> S3Result<Shared<Assembly>> {
        if let Some(a) = lock(&self.assemblies).get(&id) {
            return Ok(Arc::clone(a));
        }
        let index = self.index_path(id);
        let loaded = blocking("reading an upload's index", move || load_index(&index)).await?;
        Ok(Arc::clone(
            lock(&self.assemblies)
                .entry(id)
                .or_insert_with(|| Arc::new(Mutex::new(loaded))),
        ))
    }

    /// Adds the parts held in the upload's assembly to s3s-fs's ListParts answer, which
    /// only sees part files.
    pub(super) async fn add_assembled(
        &self,
        upload_id: &str,
        out: &mut dto::ListPartsOutput,
    ) -> S3Result<()> {
        let Ok(id) = Uuid::parse_str(upload_id) else {
            return Ok(());
        };
        let assembly = self.assembly(id).await?;
        let a = lock(&assembly);
        let parts = out.parts.get_or_insert_with(Vec::new);
        parts.retain(|p| p.part_number.is_none_or(|n| !a.parts.contains_key(&n)));
        let size = i64::try_from(a.stride).unwrap_or(i64::MAX);
        parts.extend(a.parts.iter().map(|(n, md5)| dto::Part {
            part_number: Some(*n),
            size: Some(size),
            e_tag: Some(ETag::Strong(hex(md5))),
            ..Default::default()
        }));
        parts.sort_by_key(|p| p.part_number);
        Ok(())
    }

    fn tmp_path(&self) -> PathBuf {
        tmp_path(&self.root)
    }

    fn part_path(&self, id: Uuid, part: i32) -> PathBuf {
        self.root.join(format!(".upload_id-{id}.part-{part}"))
    }

    /// The file that says the upload exists, and whose it is.
    fn upload_path(&self, id: Uuid) -> PathBuf {
        self.root.join(format!(".upload-{id}.json"))
    }

    /// Checks that the upload exists and was started with the caller's access key.
    async fn verify(&self, credentials: Option<&Credentials>, upload_id: &str) -> S3Result<Uuid> {
        let id = Uuid::parse_str(upload_id)
            .map_err(|_| s3_error!(NoSuchUpload, "no upload has the id {upload_id:?}"))?;
        let path = self.upload_path(id);
        let content = match tokio::fs::read(&path).await {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(s3_error!(NoSuchUpload, "no upload has the id {id}"));
            }
            Err(e) => return Err(internal(&path, e)),
        };
        let owner: Option<String> = serde_json::from_slice(&content)
            .map_err(|e| s3_error!(InternalError, "{}: {e}", path.display()))?;
        if owner.as_deref() != credentials.map(|c| c.access_key.as_str()) {
            return Err(s3_error!(AccessDenied));
        }
        Ok(id)
    }

    pub(super) async fn upload_part(
        &self,
        req: S3Request<dto::UploadPartInput>,
    ) -> S3Result<S3Response<dto::UploadPartOutput>> {
        let S3Request {
            input,
            credentials,
            trailing_headers,
            ..
        } = req;
        let dto::UploadPartInput {
            body,
            upload_id,
            part_number,
            content_md5,
            checksum_algorithm,
            checksum_crc32,
            checksum_crc32c,
            checksum_crc64nvme,
            checksum_sha1,
            checksum_sha256,
            ..
        } = input;
        if !PART_NUMBERS.contains(&part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        let body = body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let id = self.verify(credentials.as_ref(), &upload_id).await?;

        let mut expected = dto::Checksum {
            checksum_crc32,
            checksum_crc32c,
            checksum_crc64nvme,
            checksum_sha1,
            checksum_sha256,
            ..Default::default()
        };
        let hasher = hasher_for(&expected, checksum_algorithm.as_ref())?;

        let assembly = self.assembly(id).await?;
        let len = body.remaining_length().exact().map(|n| n as u64);
        let (tmp, asm_path) = (self.tmp_path(), self.assembly_path(id));
        let (index, index_tmp) = (self.index_path(id), self.tmp_path());
        let (shared, at) = (Arc::clone(&assembly), index.clone());
        let (dest, file) = blocking("storing a part", move || {
            choose_dest(&shared, part_number, len, &asm_path, &at, index_tmp, tmp)
        })
        .await?;
        let sink = Sink {
            file,
            at: match &dest {
                Dest::InPlace(claim) => Some(claim.offset),
                Dest::PartFile(_) => None,
            },
            md5: Md5::new(),
            checksum: hasher,
            len: 0,
        };
        let sink = receive(body, sink).await?;
        let md5 = sink.md5.finalize();
        let actual = sink.checksum.finalize();

        check_content_md5(content_md5.as_deref(), &md5)?;
        if let Some(trailers) = trailing_headers.and_then(|t| t.take()) {
            read_trailers(&trailers, &mut expected)?;
        }
        check(&expected, &actual)?;

        let (part_file, index_tmp) = (self.part_path(id, part_number), self.tmp_path());
        match dest {
            Dest::InPlace(claim) => {
                if sink.len != claim.len {
                    return Err(s3_error!(
                        IncompleteBody,
                        "the part's body was {} bytes, its length said {}",
                        sink.len,
                        claim.len
                    ));
                }
                lock(&self.digests).remove(&(id, part_number));
                blocking("storing a part", move || {
                    let mut a = lock(&claim.assembly);
                    a.parts.insert(part_number, md5);
                    save_index(&a, &index, index_tmp)?;
                    drop(a);
                    // An older copy of the part, sent when it could not go in place.
                    remove_if_present(&part_file)
                })
                .await?;
            }
            Dest::PartFile(tmp) => {
                let (len, modified) = tmp.persist(part_file).await?;
                lock(&self.digests).insert((id, part_number), PartDigest { md5, len, modified });
                // This part file is now the part; an older copy in the assembly is not.
                blocking("storing a part", move || {
                    let mut a = lock(&assembly);
                    if a.parts.remove(&part_number).is_some() {
                        save_index(&a, &index, index_tmp)?;
                    }
                    Ok(())
                })
                .await?;
            }
        }
        Ok(S3Response::new(dto::UploadPartOutput {
            e_tag: Some(ETag::Strong(hex(&md5))),
            checksum_crc32: actual.checksum_crc32,
            checksum_crc32c: actual.checksum_crc32c,
            checksum_crc64nvme: actual.checksum_crc64nvme,
            checksum_sha1: actual.checksum_sha1,
            checksum_sha256: actual.checksum_sha256,
            ..Default::default()
        }))
    }

    /// Completes an upload; If-Match and If-None-Match are checked against the object the
    /// upload would replace.
    pub(super) async fn complete(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        let S3Request {
            input, credentials, ..
        } = req;
        let dto::CompleteMultipartUploadInput {
            bucket,
            key,
            upload_id,
            multipart_upload,
            if_match,
            if_none_match,
            ..
        } = input;
        let parts = multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(InvalidPart, "You must specify at least one part"));
        }
        let id = self.verify(credentials.as_ref(), &upload_id).await?;
        let object = object_path(&self.root, &bucket, &key)?;
        let assembly = self.assembly(id).await?;

        let mut plan = Vec::with_capacity(parts.len());
        {
            let digests = lock(&self.digests);
            let mut last = 0;
            for part in parts {
                let n = part
                    .part_number
                    .ok_or_else(|| s3_error!(InvalidRequest, "a part has no part number"))?;
                if n <= last {
                    return Err(s3_error!(
                        InvalidPartOrder,
                        "part numbers must be in ascending order (part {n} after part {last})"
                    ));
                }
                last = n;
                plan.push(PlannedPart {
                    number: n,
                    path: self.part_path(id, n),
                    e_tag: part.e_tag.map(ETag::into_value),
                    known: digests.get(&(id, n)).copied(),
                });
            }
        }

        let files = Completion {
            if_match,
            if_none_match,
            assembly,
            assembly_file: self.assembly_path(id),
            index: self.index_path(id),
            bucket: self.root.join(&bucket),
            tmp: self.tmp_path(),
            info_tmp: self.tmp_path(),
            object,
            upload_meta: metadata_path(&self.root, &bucket, &key, Some(id)),
            object_meta: metadata_path(&self.root, &bucket, &key, None),
            info: info_path(&self.root, &bucket, &key),
            upload: self.upload_path(id),
        };
        let e_tag = blocking("completing the upload", move || assemble(&plan, &files)).await?;
        self.forget(&upload_id);
        Ok(S3Response::new(dto::CompleteMultipartUploadOutput {
            bucket: Some(bucket),
            key: Some(key),
            e_tag: Some(ETag::Strong(e_tag)),
            ..Default::default()
        }))
    }
}

/// A part named in a completion.
struct PlannedPart {
    number: i32,
    path: PathBuf,
    /// The ETag the client says it got for the part.
    e_tag: Option<String>,
    known: Option<PartDigest>,
}

/// The files a completion touches.
struct Completion {
    if_match: Option<dto::ETagCondition>,
    if_none_match: Option<dto::ETagCondition>,
    assembly: Shared<Assembly>,
    assembly_file: PathBuf,
    index: PathBuf,
    bucket: PathBuf,
    tmp: PathBuf,
    info_tmp: PathBuf,
    object: PathBuf,
    upload_meta: PathBuf,
    object_meta: PathBuf,
    info: PathBuf,
    upload: PathBuf,
}

/// Joins the parts into the object and records its ETag; blocking. Returns the ETag.
/// Nothing is removed until the object is in place, so a failed completion can be retried.
///
/// When parts 1…N−1 are all in the assembly (and N, the last, in it or in a file), the
/// assembly becomes the object: the last part is copied to its place if need be, the file
/// cut to length and renamed. Otherwise the parts are copied into a new file.
///
/// The assembly stays locked throughout, so no part starts to be written into it meanwhile;
/// it becomes the object only if no part is being written into it either.
fn assemble(parts: &[PlannedPart], f: &Completion) -> S3Result<String> {
    check_destination(
        &f.bucket,
        &f.object,
        &f.info,
        f.if_match.as_ref(),
        f.if_none_match.as_ref(),
    )?;
    let a = lock(&f.assembly);
    let (stride, held) = (a.stride, &a.parts);
    let count = parts.len();
    let last = parts.last().map_or(0, |p| p.number);
    // Parts 1…N in order, all but the last held, the first held too, nothing held or being
    // written beyond the last (the last part, if in a file, may be longer than the stride).
    let in_place = a.writing.is_empty()
        && held.contains_key(&1)
        && held.range(last + 1..).next().is_none()
        && parts.iter().enumerate().all(|(i, p)| {
            i64::from(p.number) == i as i64 + 1 && (i + 1 == count || held.contains_key(&p.number))
        });

    let mut digests = Md5::new();
    let mut keep_tmp = None;
    if in_place {
        let mut out = File::options()
            .write(true)
            .open(&f.assembly_file)
            .map_err(|e| internal(&f.assembly_file, e))?;
        let mut end = 0;
        for part in parts {
            let offset = (part.number as u64 - 1) * stride;
            let md5 = match held.get(&part.number) {
                Some(md5) => {
                    end = offset + stride;
                    *md5
                }
                None => {
                    // Only the last part can be outside the assembly here.
                    let (mut file, len, md5) = open_part(part, true)?;
                    out.seek(SeekFrom::Start(offset))
                        .map_err(|e| internal(&f.assembly_file, e))?;
                    io::copy(&mut file, &mut out).map_err(|e| internal(&part.path, e))?;
                    end = offset + len;
                    md5
                }
            };
            check_e_tag(part, &md5)?;
            digests.update(&md5);
        }
        out.set_len(end)
            .map_err(|e| internal(&f.assembly_file, e))?;
    } else {
        let (tmp, mut out) = TmpFile::create(f.tmp.clone())?;
        for (i, part) in parts.iter().enumerate() {
            let md5 = match held.get(&part.number) {
                Some(md5) => {
                    let mut file =
                        File::open(&f.assembly_file).map_err(|e| internal(&f.assembly_file, e))?;
                    file.seek(SeekFrom::Start((part.number as u64 - 1) * stride))
                        .map_err(|e| internal(&f.assembly_file, e))?;
                    io::copy(&mut file.take(stride), &mut out)
                        .map_err(|e| internal(&f.assembly_file, e))?;
                    *md5
                }
                None => {
                    let (mut file, _, md5) = open_part(part, i + 1 == count)?;
                    io::copy(&mut file, &mut out).map_err(|e| internal(&part.path, e))?;
                    md5
                }
            };
            check_e_tag(part, &md5)?;
            digests.update(&md5);
        }
        drop(out);
        keep_tmp = Some(tmp);
    }
    let e_tag = format!("{}-{}", hex(&digests.finalize()), count);

    if let Some(dir) = f.object.parent() {
        std::fs::create_dir_all(dir).map_err(|e| internal(dir, e))?;
    }
    match keep_tmp {
        Some(tmp) => tmp.persist_blocking(&f.object)?,
        None => std::fs::rename(&f.assembly_file, &f.object).map_err(|e| internal(&f.object, e))?,
    }
    // The upload's attributes become the object's; without any, none of an older object's
    // linger.
    match std::fs::rename(&f.upload_meta, &f.object_meta) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => remove_if_present(&f.object_meta)?,
        Err(e) => return Err(internal(&f.upload_meta, e)),
    }
    Info::new(e_tag.clone(), &dto::Checksum::default()).write(f.info_tmp.clone(), &f.info)?;

    for part in parts {
        if !held.contains_key(&part.number) {
            remove_if_present(&part.path)?;
        }
    }
    remove_if_present(&f.assembly_file)?;
    remove_if_present(&f.index)?;
    remove_if_present(&f.upload)?;
    Ok(e_tag)
}

/// Opens a part held in a file of its own (the completion's last part, or not); returns it
/// with its length and MD5 (the one kept when it was written, if the file is unchanged).
fn open_part(part: &PlannedPart, is_last: bool) -> S3Result<(File, u64, [u8; 16])> {
    let mut file = match File::open(&part.path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(s3_error!(
                InvalidPart,
                "part {} was not uploaded",
                part.number
            ));
        }
        Err(e) => return Err(internal(&part.path, e)),
    };
    let meta = file.metadata().map_err(|e| internal(&part.path, e))?;
    let modified = meta.modified().map_err(|e| internal(&part.path, e))?;
    let md5 = match part.known {
        Some(d) if d.len == meta.len() && d.modified == modified => d.md5,
        _ => {
            let md5 = md5_of(&mut file).map_err(|e| internal(&part.path, e))?;
            file.rewind().map_err(|e| internal(&part.path, e))?;
            md5
        }
    };
    if !is_last && meta.len() < MIN_PART_SIZE {
        return Err(s3_error!(
            EntityTooSmall,
            "part {} is {} bytes; every part but the last needs at least {MIN_PART_SIZE}",
            part.number,
            meta.len()
        ));
    }
    Ok((file, meta.len(), md5))
}

/// The ETag the client names for a part must be the part's.
fn check_e_tag(part: &PlannedPart, md5: &[u8; 16]) -> S3Result<()> {
    match &part.e_tag {
        Some(given) if !given.eq_ignore_ascii_case(&hex(md5)) => Err(s3_error!(
            InvalidPart,
            "part {}: ETag {given} does not match the part uploaded",
            part.number
        )),
        _ => Ok(()),
    }
}

/// Decides where a part of `len` bytes (if known beforehand) goes, and opens it there;
/// blocking.
fn choose_dest(
    assembly: &Shared<Assembly>,
    part: i32,
    len: Option<u64>,
    assembly_file: &Path,
    index: &Path,
    index_tmp: PathBuf,
    tmp: PathBuf,
) -> S3Result<(Dest, File)> {
    if let Some(len) = len.filter(|&l| l >= MIN_PART_SIZE) {
        let mut a = lock(assembly);
        if a.stride == 0 {
            a.stride = len;
        }
        let offset = (part as u64 - 1) * len;
        if a.stride == len && offset + len <= MAX_ASSEMBLY && !a.writing.contains(&part) {
            if a.parts.remove(&part).is_some() {
                save_index(&a, index, index_tmp)?;
            }
            a.writing.insert(part);
            drop(a);
            let claim = Claim {
                assembly: Arc::clone(assembly),
                part,
                offset,
                len,
            };
            let file = File::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(assembly_file)
                .map_err(|e| internal(assembly_file, e))?;
            return Ok((Dest::InPlace(claim), file));
        }
    }
    let (tmp, file) = TmpFile::create(tmp)?;
    Ok((Dest::PartFile(tmp), file))
}

fn load_index(path: &Path) -> S3Result<Assembly> {
    match std::fs::read(path) {
        Ok(body) => serde_json::from_slice(&body)
            .map_err(|e| s3_error!(InternalError, "{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Assembly::default()),
        Err(e) => Err(internal(path, e)),
    }
}

/// Rewrites the index; the caller holds the assembly's lock, so saves never cross.
fn save_index(a: &Assembly, path: &Path, tmp: PathBuf) -> S3Result<()> {
    let body = serde_json::to_vec(a).map_err(|e| s3_error!(InternalError, "{e}"))?;
    write_file(tmp, path, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_stay_inside_their_bucket() {
        let root = Path::new("/srv/s3");
        assert_eq!(
            object_path(root, "results", "a/b.json").unwrap(),
            Path::new("/srv/s3/results/a/b.json")
        );
        for (bucket, key) in [
            ("results", "../other/x"),
            ("results", "/etc/passwd"),
            ("results", "a/../../x"),
            ("results", ""),
            ("results", "dir/"),
            ("..", "x"),
            ("a/b", "x"),
            ("", "x"),
        ] {
            assert!(
                object_path(root, bucket, key).is_err(),
                "{bucket:?} {key:?}"
            );
        }
    }

    #[test]
    fn metadata_paths_are_s3s_fs_s() {
        let root = Path::new("/r");
        let id = Uuid::nil();
        assert_eq!(
            metadata_path(root, "bkt", "k/1", None),
            Path::new("/r/.bucket-Ymt0.object-ay8x.metadata.json")
        );
        assert_eq!(
            metadata_path(root, "bkt", "k/1", Some(id)),
            Path::new(&format!(
                "/r/.bucket-Ymt0.object-ay8x.upload-{id}.metadata.json"
            ))
        );
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
