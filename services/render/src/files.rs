//! The file service, as render uses it: do the files a request names exist for its tenant, and
//! what are their digests. Services call each other only over gRPC (`flatrender.file.v1`), with
//! a service credential (`svc: render`, no tenant, role user) signed by a key the file service's
//! verifier trusts.
//!
//! A service credential reaches every tenant's files (see the file service's access rules), so
//! the tenant check is render's: a file is visible to a job when its tenant is the job's, or —
//! for template bundles and audio, which the catalogue offers to everyone — when it is a
//! tenant-owned file of the catalogue tenant (FlatRender's own, the default tenant).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flatrender_kit::auth::{AccessClaims, Role, ServiceName, TokenSigner};
use flatrender_proto::flatrender::file::v1 as file_pb;
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
        let mut request = tonic::Request::new(message);
        let token = self.credential()?;
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| RenderError::Upstream { service: "file", status: "unsendable credential".into() })?;
        request.metadata_mut().insert("authorization", header);
        request.set_timeout(CALL_TIMEOUT);
        Ok(request)
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
    Some(FileFacts { id, sha256, size_bytes: file.size_bytes, kind: file.kind() })
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
