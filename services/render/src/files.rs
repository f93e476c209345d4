//! The file service, as render uses it: do the files a request names exist for its tenant, and
//! what are their digests. Services call each other only over gRPC (`flatrender.file.v1`), with
//! a service credential (`svc: render`, no tenant, role user) signed by a key the file service's
//! verifier trusts.
//!
//! A service credential reaches every tenant's files (see the file service's access rules), so
//! the tenant check is render's: a file is visible to a job when its tenant is the job's, or —
//! for template bundles and audio, which the catalogue offers to everyone — when it is a
//! tenant-owned file of the catalogue tenant (FlatRender's own, the default tenant).
//!
//! Agents' bytes pass through here too ([`FileClient::download`], [`FileClient::upload`]):
//! streamed part by part in both directions, never held whole, so a 2 GB bundle costs the
//! orchestrator a few MiB at most.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flatrender_kit::auth::{AccessClaims, ServiceName, TokenSigner};
use flatrender_proto::flatrender::file::v1 as file_pb;
use futures_util::StreamExt as _;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::error::{RenderError, Result};
use crate::model::{FileRef, Sha256Digest};

/// The tenant whose tenant-owned files form the global catalogue (the default tenant).
pub const CATALOGUE_TENANT: Uuid = Uuid::from_u128(1);
/// The most ids one `BatchGetFiles` takes.
const BATCH: usize = 100;
/// How long a service credential lives; each call signs a fresh one.
const TOKEN_SECONDS: u64 = 120;
/// How long one call to the file service may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the file service is and how render proves who it is.
#[derive(Clone, Debug)]
pub struct FileServiceSettings {
    /// Its gRPC URL, e.g. `http://127.0.0.1:50051`.
    pub url: String,
    /// Signs render's service credential; the file service must trust its public key.
    pub signer: TokenSigner,
    /// `iss` of the credential (the file service's expected issuer).
    pub issuer: String,
    /// `aud` of the credential.
    pub audience: String,
}

/// What render learns about a visible file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFacts {
    /// The file.
    pub id: Uuid,
    /// Its SHA-256 as the file service computed it.
    pub sha256: Sha256Digest,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// What it is for (the file service's kind).
    pub kind: file_pb::FileKind,
    /// Its MIME type as the file service sniffed it.
    pub content_type: String,
}

/// The bytes of a download after its metadata, as the file service sends them (parts of at
/// most 1 MiB, in order).
pub type ByteStream = tonic::Streaming<file_pb::DownloadFileResponse>;

/// The file an upload creates.
#[derive(Clone, Debug)]
pub struct NewFile {
    /// The owning tenant.
    pub tenant: Uuid,
    /// The owning user; `None` for a tenant-owned file.
    pub owner: Option<Uuid>,
    /// The file name.
    pub name: String,
    /// Its kind.
    pub kind: file_pb::FileKind,
    /// The uploader's MIME type (the file service records it and sniffs its own).
    pub content_type_hint: String,
    /// Whether it counts towards the owner's and the tenant's quota.
    pub counts_toward_quota: bool,
    /// Its exact size.
    pub size_bytes: u64,
    /// Its SHA-256 (the file service checks it too).
    pub sha256: Sha256Digest,
}

/// An upload in progress: bytes go in with [`Upload::send`], [`Upload::finish`] stores the file.
/// Dropped unfinished, it is abandoned and the file service keeps nothing.
#[derive(Debug)]
pub struct Upload {
    sink: Sink,
}

/// Where an upload's bytes go.
#[derive(Debug)]
enum Sink {
    /// One UploadFile stream, for objects up to [`SIMPLE_UPLOAD_BYTES`].
    Simple {
        parts: Option<tokio::sync::mpsc::Sender<file_pb::UploadFileRequest>>,
        call: tokio::task::JoinHandle<std::result::Result<file_pb::File, tonic::Status>>,
    },
    /// A resumable session of unary calls, for larger objects: parts of the session's part size
    /// are gathered (so memory stays at one part) and sent as they fill up.
    Session { client: Box<FileClient>, id: String, part_size: usize, buffer: Vec<u8>, next: u32, completed: bool },
}

/// The largest object stored with one UploadFile stream; larger ones use an upload session
/// (the file service's simple uploads take 64 MiB by default, and one session part is 8 MiB).
pub const SIMPLE_UPLOAD_BYTES: u64 = 8 * 1024 * 1024;
/// How long one session call (a part, the completion) may take.
const PART_TIMEOUT: Duration = Duration::from_secs(120);

impl Upload {
    /// Sends the next bytes; waits while the file service is behind, so memory stays bounded.
    pub async fn send(&mut self, bytes: prost::bytes::Bytes) -> Result<()> {
        match &mut self.sink {
            Sink::Simple { parts, call } => {
                let request =
                    file_pb::UploadFileRequest { payload: Some(file_pb::upload_file_request::Payload::Chunk(bytes)) };
                let sent = match parts {
                    Some(parts) => parts.send(request).await.is_ok(),
                    None => false,
                };
                if sent {
                    return Ok(());
                }
                // The call stopped taking parts: why.
                Err(match call.await {
                    Ok(Err(status)) => upload_error(status),
                    _ => RenderError::Unavailable("the upload to the file service was interrupted".into()),
                })
            }
            Sink::Session { client, id, part_size, buffer, next, .. } => {
                buffer.extend_from_slice(&bytes);
                while buffer.len() >= *part_size {
                    let rest = buffer.split_off(*part_size);
                    let part = std::mem::replace(buffer, rest);
                    client.upload_part(id, *next, part).await?;
                    *next += 1;
                }
                Ok(())
            }
        }
    }

    /// Ends the upload and waits for the stored file.
    pub async fn finish(mut self) -> Result<file_pb::File> {
        match &mut self.sink {
            Sink::Simple { parts, call } => {
                *parts = None;
                match call.await {
                    Ok(Ok(file)) => Ok(file),
                    Ok(Err(status)) => Err(upload_error(status)),
                    Err(_) => Err(RenderError::Unavailable("the upload to the file service was interrupted".into())),
                }
            }
            Sink::Session { client, id, buffer, next, completed, .. } => {
                if !buffer.is_empty() {
                    client.upload_part(id, *next, std::mem::take(buffer)).await?;
                }
                let file = client.complete_session(id).await?;
                *completed = true;
                Ok(file)
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        match &mut self.sink {
            // Aborting the call resets its HTTP/2 stream: the file service sees a broken upload
            // (never a complete one, whatever was sent) and removes what it had stored.
            Sink::Simple { call, .. } => call.abort(),
            // The session's staged parts go with the session (or with its expiry, should this
            // abort not get through).
            Sink::Session { client, id, completed: false, .. } => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let (client, id) = (FileClient::clone(client), std::mem::take(id));
                    runtime.spawn(async move {
                        if let Err(error) = client.abort_session(&id).await {
                            tracing::warn!(%error, session = %id, "could not abort an abandoned upload session");
                        }
                    });
                }
            }
            Sink::Session { .. } => {}
        }
    }
}

/// A client of the file service.
#[derive(Clone, Debug)]
pub struct FileClient {
    endpoint: Endpoint,
    /// Connected lazily on first use, inside the runtime.
    channel: Arc<OnceLock<Channel>>,
    settings: Arc<FileServiceSettings>,
}

impl FileClient {
    /// A client of the file service at `settings.url`; nothing connects until the first call.
    pub fn new(settings: FileServiceSettings) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(settings.url.clone())
            .map_err(|e| format!("file service URL {:?} is invalid: {e}", settings.url))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        Ok(Self { endpoint, channel: Arc::new(OnceLock::new()), settings: Arc::new(settings) })
    }

    fn client(&self) -> file_pb::file_service_client::FileServiceClient<Channel> {
        let channel = self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone();
        file_pb::file_service_client::FileServiceClient::new(channel)
    }

    fn credential(&self) -> Result<String> {
        let claims = AccessClaims::service(
            ServiceName::Render,
            &self.settings.issuer,
            &self.settings.audience,
            Duration::from_secs(TOKEN_SECONDS),
        );
        Ok(self.settings.signer.sign(&claims)?)
    }

    /// `message` with render's credential and the call timeout.
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>> {
        let mut request = self.streaming_request(message)?;
        request.set_timeout(CALL_TIMEOUT);
        Ok(request)
    }

    /// `message` with render's credential and no deadline: a transfer takes as long as its
    /// bytes take (the agent bounds its own download time).
    fn streaming_request<T>(&self, message: T) -> Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        let token = self.credential()?;
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| RenderError::Upstream { service: "file", status: "unsendable credential".into() })?;
        request.metadata_mut().insert("authorization", header);
        Ok(request)
    }

    /// Starts downloading `file` from byte `offset` (DownloadFile), guarded by `expected` when
    /// known: the file's facts, then its bytes. `NOT_FOUND` when the file is gone (or no longer
    /// the bytes the task names), `OUT_OF_RANGE` for an offset past its end.
    pub async fn download(
        &self,
        file: Uuid,
        offset: u64,
        expected: Option<&Sha256Digest>,
    ) -> Result<(FileFacts, ByteStream)> {
        let request = self.streaming_request(file_pb::DownloadFileRequest {
            file_id: file.to_string(),
            offset,
            length: 0,
            expected_sha256: expected.map(Sha256Digest::to_hex).unwrap_or_default(),
        })?;
        let mut stream = self.client().download_file(request).await.map_err(download_error)?.into_inner();
        let first = stream.message().await.map_err(download_error)?;
        let metadata = match first.and_then(|m| m.payload) {
            Some(file_pb::download_file_response::Payload::Metadata(metadata)) => metadata,
            _ => {
                return Err(RenderError::Upstream {
                    service: "file",
                    status: "a download that does not start with its metadata".into(),
                });
            }
        };
        let facts = metadata.file.as_ref().and_then(facts).filter(|f| f.id == file).ok_or_else(|| {
            RenderError::Upstream { service: "file", status: "a download with malformed metadata".into() }
        })?;
        Ok((facts, stream))
    }

    fn uploads(&self) -> file_pb::upload_service_client::UploadServiceClient<Channel> {
        let channel = self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone();
        file_pb::upload_service_client::UploadServiceClient::new(channel).max_encoding_message_size(usize::MAX)
    }

    /// Starts storing `file` with render's credential: one UploadFile stream up to
    /// [`SIMPLE_UPLOAD_BYTES`], an upload session above. The file service refuses it over quota
    /// before any byte is stored.
    pub async fn upload(&self, file: &NewFile) -> Result<Upload> {
        let target = file_pb::UploadTarget {
            name: file.name.clone(),
            kind: file.kind as i32,
            content_type_hint: file.content_type_hint.clone(),
            owner_user_id: file.owner.map(|o| o.to_string()).unwrap_or_default(),
            tenant_id: file.tenant.to_string(),
            counts_toward_quota: Some(file.counts_toward_quota),
            ..Default::default()
        };
        if file.size_bytes > SIMPLE_UPLOAD_BYTES {
            return self.start_session(target, file).await;
        }
        use file_pb::upload_file_request::Payload;
        let metadata = file_pb::UploadFileMetadata {
            target: Some(target),
            size_bytes: file.size_bytes,
            sha256: file.sha256.to_hex(),
            idempotency_key: String::new(),
        };
        // Two parts in flight at most: the agent is held back as fast as the file service stores.
        let (parts, queued) = tokio::sync::mpsc::channel(2);
        let first = file_pb::UploadFileRequest { payload: Some(Payload::Metadata(metadata)) };
        let stream = futures_util::stream::iter([first]).chain(tokio_stream::wrappers::ReceiverStream::new(queued));
        let request = self.streaming_request(stream)?;
        let mut client = self.uploads();
        let call = tokio::spawn(async move {
            let file = client.upload_file(request).await?.into_inner().file;
            file.ok_or_else(|| tonic::Status::internal("an upload answered without its file"))
        });
        Ok(Upload { sink: Sink::Simple { parts: Some(parts), call } })
    }

    async fn start_session(&self, target: file_pb::UploadTarget, file: &NewFile) -> Result<Upload> {
        let mut request = self.streaming_request(file_pb::StartUploadSessionRequest {
            target: Some(target),
            size_bytes: file.size_bytes,
            sha256: file.sha256.to_hex(),
            preferred_part_size_bytes: 0,
            idempotency_key: String::new(),
        })?;
        request.set_timeout(CALL_TIMEOUT);
        let session = self.uploads().start_upload_session(request).await.map_err(upload_error)?.into_inner().session;
        let session = session.ok_or_else(|| RenderError::Upstream {
            service: "file",
            status: "an upload session started without its description".into(),
        })?;
        let part_size = usize::try_from(session.part_size_bytes).ok().filter(|size| *size > 0).ok_or_else(|| {
            RenderError::Upstream { service: "file", status: "an upload session without a part size".into() }
        })?;
        Ok(Upload {
            sink: Sink::Session {
                client: Box::new(self.clone()),
                id: session.id,
                part_size,
                buffer: Vec::with_capacity(part_size),
                next: 1,
                completed: false,
            },
        })
    }

    async fn upload_part(&self, session: &str, number: u32, data: Vec<u8>) -> Result<()> {
        let mut request = self.streaming_request(file_pb::UploadPartRequest {
            session_id: session.to_owned(),
            part_number: number,
            data: data.into(),
            sha256: String::new(),
        })?;
        request.set_timeout(PART_TIMEOUT);
        self.uploads().upload_part(request).await.map_err(upload_error)?;
        Ok(())
    }

    async fn complete_session(&self, session: &str) -> Result<file_pb::File> {
        let mut request =
            self.streaming_request(file_pb::CompleteUploadSessionRequest { session_id: session.to_owned() })?;
        request.set_timeout(PART_TIMEOUT);
        let file = self.uploads().complete_upload_session(request).await.map_err(upload_error)?.into_inner().file;
        file.ok_or_else(|| RenderError::Upstream {
            service: "file",
            status: "a completed upload without its file".into(),
        })
    }

    async fn abort_session(&self, session: &str) -> Result<()> {
        let request = self.request(file_pb::AbortUploadSessionRequest { session_id: session.to_owned() })?;
        self.uploads().abort_upload_session(request).await.map_err(upstream)?;
        Ok(())
    }

    /// Deletes `file` (DeleteFile), e.g. a duplicate a concurrent identical upload made.
    pub async fn delete(&self, file: Uuid) -> Result<()> {
        let request = self.request(file_pb::DeleteFileRequest { file_id: file.to_string() })?;
        self.client().delete_file(request).await.map_err(upstream)?;
        Ok(())
    }

    /// Protects `file` from cleanup and deletion until `until` (SetFileRetention, recorded as
    /// retained by render): snapshot images and exports outlive the file service's own rules
    /// for as long as render serves them.
    pub async fn retain(&self, file: Uuid, until: time::OffsetDateTime) -> Result<()> {
        let request = self.request(file_pb::SetFileRetentionRequest {
            file_id: file.to_string(),
            pinned: false,
            retained_until: Some(prost_types::Timestamp {
                seconds: until.unix_timestamp(),
                nanos: i32::try_from(until.nanosecond()).unwrap_or(0),
            }),
        })?;
        self.client().set_file_retention(request).await.map_err(upstream)?;
        Ok(())
    }

    /// The facts of every file of `refs`, keyed by id, when each exists and is visible to
    /// `tenant`; otherwise `NOT_FOUND` naming the first (in `refs` order) that is not.
    pub async fn visible(&self, tenant: Uuid, refs: &[FileRef]) -> Result<HashMap<Uuid, FileFacts>> {
        let mut ids: Vec<Uuid> = Vec::new();
        for file in refs {
            if !ids.contains(&file.file_id) {
                ids.push(file.file_id);
            }
        }
        let mut found: HashMap<Uuid, (file_pb::File, FileFacts)> = HashMap::with_capacity(ids.len());
        for batch in ids.chunks(BATCH) {
            let request =
                self.request(file_pb::BatchGetFilesRequest { file_ids: batch.iter().map(Uuid::to_string).collect() })?;
            let response = self.client().batch_get_files(request).await.map_err(upstream)?.into_inner();
            for file in response.files {
                if let Some(facts) = facts(&file) {
                    found.insert(facts.id, (file, facts));
                }
            }
        }
        let mut visible = HashMap::with_capacity(found.len());
        for wanted in refs {
            match found.get(&wanted.file_id) {
                Some((file, facts)) if reachable(file, tenant, catalogue_allowed(&wanted.field)) => {
                    visible.insert(wanted.file_id, facts.clone());
                }
                _ => return Err(RenderError::FileNotFound { field: wanted.field.clone() }),
            }
        }
        Ok(visible)
    }
}

/// Whether the file of request field `field` may come from the catalogue: template bundles and
/// audio tracks may, media of scene edits must be the tenant's own.
fn catalogue_allowed(field: &str) -> bool {
    field == "template_file_id" || field.starts_with("audio_tracks[")
}

/// Whether `file` may be used by a job of `tenant`.
fn reachable(file: &file_pb::File, tenant: Uuid, catalogue: bool) -> bool {
    if file.state != file_pb::FileState::Active as i32 {
        return false;
    }
    let Ok(owner_tenant) = Uuid::try_parse(&file.tenant_id) else { return false };
    owner_tenant == tenant || (catalogue && owner_tenant == CATALOGUE_TENANT && file.owner_user_id.is_empty())
}

/// The facts of a file as the file service described it; `None` when malformed (not usable).
fn facts(file: &file_pb::File) -> Option<FileFacts> {
    let id = Uuid::try_parse(&file.id).ok()?;
    let bytes = hex::decode(&file.sha256).ok()?;
    let sha256 = Sha256Digest::from_slice(&bytes)?;
    Some(FileFacts {
        id,
        sha256,
        size_bytes: file.size_bytes,
        kind: file.kind(),
        content_type: file.content_type.clone(),
    })
}

/// A failed download: a file that is gone (or whose bytes are not the ones expected) is
/// `NOT_FOUND`, an offset past its end `OUT_OF_RANGE`.
fn download_error(status: tonic::Status) -> RenderError {
    use tonic::Code;
    match status.code() {
        Code::NotFound | Code::FailedPrecondition => RenderError::NotFound("object"),
        Code::OutOfRange => RenderError::OutOfRange(format!("offset: {}", status.message())),
        _ => upstream(status),
    }
}

/// A failed upload: over quota stays `RESOURCE_EXHAUSTED` (the tenant's to fix), the rest as
/// any call.
fn upload_error(status: tonic::Status) -> RenderError {
    match status.code() {
        tonic::Code::ResourceExhausted => RenderError::ResourceExhausted(status.message().to_owned()),
        _ => upstream(status),
    }
}

/// A failed call: retryable statuses are `UNAVAILABLE` for our caller, the rest our bug.
fn upstream(status: tonic::Status) -> RenderError {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted | Code::Aborted => {
            RenderError::Unavailable("the file service is not reachable right now; retry shortly".into())
        }
        code => RenderError::Upstream { service: "file", status: format!("{code:?}: {}", status.message()) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tenant: Uuid, owner: Option<Uuid>) -> file_pb::File {
        file_pb::File {
            id: Uuid::new_v4().to_string(),
            tenant_id: tenant.to_string(),
            owner_user_id: owner.map(|o| o.to_string()).unwrap_or_default(),
            sha256: "ab".repeat(32),
            state: file_pb::FileState::Active as i32,
            ..Default::default()
        }
    }

    #[test]
    fn only_the_tenant_and_the_catalogue_are_visible() {
        let (tenant, other, user) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(reachable(&file(tenant, Some(user)), tenant, false));
        assert!(reachable(&file(tenant, None), tenant, false));
        assert!(!reachable(&file(other, None), tenant, true));
        assert!(reachable(&file(CATALOGUE_TENANT, None), tenant, true));
        assert!(!reachable(&file(CATALOGUE_TENANT, None), tenant, false), "media must be the tenant's own");
        assert!(!reachable(&file(CATALOGUE_TENANT, Some(user)), tenant, true), "a person's file is no catalogue");
        let deleting = file_pb::File { state: file_pb::FileState::Deleting as i32, ..file(tenant, None) };
        assert!(!reachable(&deleting, tenant, false));
        assert!(catalogue_allowed("template_file_id") && catalogue_allowed("audio_tracks[3].file_id"));
        assert!(!catalogue_allowed("scene_data.edits[0].media.file_id"));
    }

    #[test]
    fn facts_need_a_digest() {
        let good = file(Uuid::new_v4(), None);
        assert_eq!(facts(&good).unwrap().sha256.to_hex(), "ab".repeat(32));
        assert!(facts(&file_pb::File { sha256: "xyz".into(), ..good.clone() }).is_none());
        assert!(facts(&file_pb::File { id: "nope".into(), ..good }).is_none());
    }

    #[test]
    fn retryable_statuses_stay_retryable() {
        assert!(matches!(upstream(tonic::Status::unavailable("x")), RenderError::Unavailable(_)));
        assert!(matches!(upstream(tonic::Status::unauthenticated("x")), RenderError::Upstream { .. }));
    }
}
