//! A real S3-protocol server on loopback, for tests and the demo.
//!
//! It is `s3s-fs` (objects stored as files under a folder) behind `s3s`'s HTTP service, so the
//! whole stack, SigV4 signing, ranged GETs, pagination and checksums included, is exercised
//! exactly as against AWS S3 or MinIO: no mocks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::dto;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Request, S3Response, S3Result};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{ObjStoreError, S3Config};

mod get;
mod multipart;
mod put;
mod store;

/// The fixed access key the loopback server accepts.
pub const LOCAL_ACCESS_KEY_ID: &str = "fleetmap-local";
/// The fixed secret key the loopback server accepts.
pub const LOCAL_SECRET_ACCESS_KEY: &str = "fleetmap-local-secret";
/// Region the loopback server's clients sign for.
pub const LOCAL_REGION: &str = "us-east-1";

/// How long [`LocalS3::shutdown`] lets in-flight requests finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running loopback S3 server. Dropping it stops serving; [`LocalS3::shutdown`] also waits
/// for in-flight requests.
pub struct LocalS3 {
    addr: SocketAddr,
    root: PathBuf,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// Held so a temporary root lives exactly as long as the server; `None` for `start_in`.
    _temp: Option<TempDir>,
}

impl LocalS3 {
    /// Serves a fresh temporary folder on `127.0.0.1` at a free port.
    pub async fn start() -> Result<LocalS3, ObjStoreError> {
        let temp = tempfile::Builder::new()
            .prefix("fleetmap-s3-")
            .tempdir()
            .map_err(|e| local_err(format!("creating a temporary folder: {e}")))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = Self::start_in(temp.path().to_owned(), addr).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Serves `dir` (created if missing; kept afterwards) on `addr`. Each top-level folder of
    /// `dir` is a bucket.
    pub async fn start_in(dir: PathBuf, addr: SocketAddr) -> Result<LocalS3, ObjStoreError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| local_err(format!("creating {}: {e}", dir.display())))?;
        // s3s-fs's error type implements neither Display nor std::error::Error.
        let fs = s3s_fs::FileSystem::new(&dir)
            .map_err(|e| local_err(format!("serving {}: {e:?}", dir.display())))?;
        let fs = AsS3 {
            inner: fs,
            root: dir.clone(),
            multipart: multipart::Multipart::new(dir.clone()),
        };
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            // Without an auth provider s3s rejects SigV4-signed requests, i.e. all SDK calls.
            b.set_auth(SimpleAuth::from_single(
                LOCAL_ACCESS_KEY_ID,
                LOCAL_SECRET_ACCESS_KEY,
            ));
            b.build()
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| local_err(format!("binding {addr}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| local_err(format!("reading the bound address: {e}")))?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(listener, service, cancel.clone()));
        tracing::debug!(%addr, root = %dir.display(), "local S3 server started");
        Ok(LocalS3 {
            addr,
            root: dir,
            cancel,
            task: Some(task),
            _temp: None,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A config that reaches this server: its endpoint, the fixed key pair, path style.
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: Some(self.endpoint()),
            region: Some(LOCAL_REGION.to_owned()),
            access_key_id: Some(LOCAL_ACCESS_KEY_ID.to_owned()),
            secret_access_key: Some(LOCAL_SECRET_ACCESS_KEY.to_owned()),
            force_path_style: true,
            ca_bundle: None,
            sdk_only: false,
        }
    }

    /// A client for this server.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        crate::client(&self.config()).await
    }

    /// A [`crate::DataClient`] for this server, direct lane included.
    pub async fn data_client(&self) -> crate::DataClient {
        crate::data_client(&self.config()).await
    }

    /// The folder holding the buckets.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops accepting, lets in-flight requests finish (bounded), then returns.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            // A panic in the serving task has already been reported by tokio; nothing to add.
            let _ = task.await;
        }
    }
}

impl Drop for LocalS3 {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Accepts connections until cancelled, each served on its own task; on cancel, asks every
/// connection to close gracefully and waits for them up to [`SHUTDOWN_GRACE`].
async fn serve(listener: TcpListener, service: S3Service, cancel: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Typically EMFILE; back off briefly instead of spinning.
                tracing::warn!(error = %e, "local S3 server: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small requests (a footer read, a checkpoint) otherwise wait out the client's delayed
        // ACK behind Nagle's algorithm, ~40 ms each on Linux loopback.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "local S3 server: cannot set TCP_NODELAY");
        }
        // Each request runs on its own task, so a client that hangs up once its request is
        // sent (a process killed mid-PUT) cannot cancel the handler half way: s3s-fs moves the
        // object into place and then writes its checksums beside it, and a handler dropped
        // between the two would leave an object whose body fails checksum validation for
        // ever, a torn write AWS S3 and MinIO never show. A body cut short still fails the
        // PUT cleanly.
        let service = service.clone();
        let service = hyper::service::service_fn(move |req| {
            let service = service.clone();
            async move {
                tokio::spawn(async move { hyper::service::Service::call(&service, req).await })
                    .await
                    .unwrap_or_else(|e| Err(s3s::HttpError::new(Box::new(e))))
            }
        });
        let cancel = cancel.clone();
        connections.spawn(async move {
            let builder = ConnBuilder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "local S3 server: connection ended with an error");
            }
        });
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("local S3 server: connections still open after the shutdown grace");
    }
}

/// s3s-fs with its deviations from S3 that fleetmap would trip on corrected; every other
/// operation passes straight through.
struct AsS3 {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
    /// UploadPart, CompleteMultipartUpload and the parts ListParts adds: a fraction of
    /// s3s-fs's CPU. PutObject and GetObject are [`put`]'s and [`get`]'s, for the same reason.
    multipart: multipart::Multipart,
}

/// Implements [`S3`] for [`AsS3`]: the listed operations go to s3s-fs unchanged, those after
/// `=>` replace theirs.
macro_rules! forward_to_s3s_fs {
    ($($op:ident($input:ident) -> $output:ident;)* => { $($extra:item)* }) => {
        #[async_trait::async_trait]
        impl S3 for AsS3 {
            $(
                async fn $op(&self, req: S3Request<dto::$input>) -> S3Result<S3Response<dto::$output>> {
                    self.inner.$op(req).await
                }
            )*
            $($extra)*
        }
    };
}

forward_to_s3s_fs! {
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    list_objects(ListObjectsInput) -> ListObjectsOutput;
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    => {
    async fn get_object(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        if req.input.key.ends_with('/') {
            return self.inner.get_object(req).await;
        }
        get::get_object(&self.root, req).await
    }

    async fn put_object(
        &self,
        req: S3Request<dto::PutObjectInput>,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        if req.input.key.ends_with('/') {
            return self.inner.put_object(req).await;
        }
        put::put_object(&self.root, req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<dto::UploadPartInput>,
    ) -> S3Result<S3Response<dto::UploadPartOutput>> {
        self.multipart.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        self.multipart.complete(req).await
    }

    /// s3s-fs lists the part files; the parts written in place are added.
    async fn list_parts(
        &self,
        req: S3Request<dto::ListPartsInput>,
    ) -> S3Result<S3Response<dto::ListPartsOutput>> {
        let upload_id = req.input.upload_id.clone();
        let mut listed = self.inner.list_parts(req).await?;
        self.multipart
            .add_assembled(&upload_id, &mut listed.output)
            .await?;
        Ok(listed)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        let upload_id = req.input.upload_id.clone();
        let aborted = self.inner.abort_multipart_upload(req).await;
        self.multipart.forget(&upload_id);
        aborted
    }
    }
}

fn local_err(reason: String) -> ObjStoreError {
    ObjStoreError::LocalServer { reason }
}
