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

use flatrender_kit::auth::{AccessClaims, Role, ServiceName, TokenSigner};
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
/// Dropped unfinished, it aborts the call and the file service keeps nothing.
#[derive(Debug)]
pub struct Upload {
    parts: Option<tokio::sync::mpsc::Sender<file_pb::UploadFileRequest>>,
    call: tokio::task::JoinHandle<std::result::Result<file_pb::File, tonic::Status>>,
}

impl Upload {
    /// Sends the next part (at most 1 MiB); waits while the file service is behind, so memory
    /// stays bounded.
    pub async fn send(&mut self, part: prost::bytes::Bytes) -> Result<()> {
        let request = file_pb::UploadFileRequest { payload: Some(file_pb::upload_file_request::Payload::Chunk(part)) };
        let sent = match &self.parts {
            Some(parts) => parts.send(request).await.is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(self.failure().await) }
    }

    /// Ends the stream and waits for the stored file.
    pub async fn finish(mut self) -> Result<file_pb::File> {
        self.parts = None;
        match (&mut self.call).await {
            Ok(Ok(file)) => Ok(file),
            Ok(Err(status)) => Err(upload_error(status)),
            Err(_) => Err(RenderError::Unavailable("the upload to the file service was interrupted".into())),
        }
    }

    /// Why the call ended early (it stopped taking parts).
    async fn failure(&mut self) -> RenderError {
        match (&mut self.call).await {
            Ok(Err(status)) => upload_error(status),
            _ => RenderError::Unavailable("the upload to the file service was interrupted".into()),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Aborting the call resets its HTTP/2 stream: the file service sees a broken upload
        // (never a complete one, whatever was sent) and removes what it had stored.
        self.call.abort();
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
        let now = now_seconds();
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: Uuid::nil(),
            tid: Uuid::nil(),
            role: Role::User,
            sid: None,
            svc: Some(ServiceName::Render),
            exp: now + TOKEN_SECONDS,
            nbf: now.saturating_sub(5),
            iat: now,
            jti: Uuid::new_v4(),
        };
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

    /// Starts storing `file` (UploadFile, the simple client-streaming upload) with render's
    /// credential; the file service refuses it over quota before any byte is stored.
    pub fn upload(&self, file: &NewFile) -> Result<Upload> {
        use file_pb::upload_file_request::Payload;
        let metadata = file_pb::UploadFileMetadata {
            target: Some(file_pb::UploadTarget {
                name: file.name.clone(),
                kind: file.kind as i32,
                content_type_hint: file.content_type_hint.clone(),
                owner_user_id: file.owner.map(|o| o.to_string()).unwrap_or_default(),
                tenant_id: file.tenant.to_string(),
                counts_toward_quota: Some(file.counts_toward_quota),
                ..Default::default()
            }),
            size_bytes: file.size_bytes,
            sha256: file.sha256.to_hex(),
            idempotency_key: String::new(),
        };
        // Two parts in flight at most: the agent is held back as fast as the file service stores.
        let (parts, queued) = tokio::sync::mpsc::channel(2);
        let first = file_pb::UploadFileRequest { payload: Some(Payload::Metadata(metadata)) };
        let stream = futures_util::stream::iter([first]).chain(tokio_stream::wrappers::ReceiverStream::new(queued));
        let request = self.streaming_request(stream)?;
        let channel = self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone();
        let mut client = file_pb::upload_service_client::UploadServiceClient::new(channel);
        let call = tokio::spawn(async move {
            let file = client.upload_file(request).await?.into_inner().file;
            file.ok_or_else(|| tonic::Status::internal("an upload answered without its file"))
        });
        Ok(Upload { parts: Some(parts), call })
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

fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
