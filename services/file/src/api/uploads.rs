//! Simple and resumable uploads (`UploadService`).
//!
//! Every quota reservation lives in an `upload_sessions` row (migration 15), so the reservation
//! of an upload that died with its process is always found by expiry. The file id is the
//! session id, and the file's object key is `ObjectKey::file(tenant, session id)`.
//!
//! - `target`: the `UploadTarget` checks, name clashes and request digests;
//! - `simple`: `UploadFile`;
//! - `sessions`: starting sessions, parts, reading and listing sessions;
//! - `finish`: completing and aborting sessions;
//! - `db`: their SQL.

mod db;
mod finish;
mod sessions;
mod simple;
mod target;

use std::future::Future;

use flatrender_proto::flatrender::file::v1 as pb;
use pb::upload_service_server::UploadServiceServer;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::FileApi;
use crate::access::Actor;
use crate::error::Result;
use crate::storage::MAX_CHUNK_BYTES;

/// Room for a message's framing and other fields beside its bytes.
const MESSAGE_OVERHEAD: u64 = 64 * 1024;

/// The gRPC server of `UploadService`, accepting messages as large as the largest part a
/// session may have (a part is one message).
pub(crate) fn server(api: FileApi) -> UploadServiceServer<FileApi> {
    let largest = sessions::largest_part(&api.state.settings).max(MAX_CHUNK_BYTES as u64) + MESSAGE_OVERHEAD;
    UploadServiceServer::new(api).max_decoding_message_size(usize::try_from(largest).unwrap_or(usize::MAX))
}

/// Runs `work` in a task of its own and waits for it. The server drops a call's future when
/// the client goes away (a reset stream, a deadline); work that stores objects and then
/// records them must not stop in between, or it would leave a session COMPLETING, a stored
/// object without its row, or a reservation that only expiry gives back.
async fn detached<T: Send + 'static>(work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T, Status> {
    match tokio::spawn(work.in_current_span()).await {
        Ok(result) => result.map_err(Status::from),
        Err(panicked) => Err(flatrender_kit::error::internal(&panicked)),
    }
}

#[tonic::async_trait]
impl pb::upload_service_server::UploadService for FileApi {
    async fn upload_file(
        &self,
        request: Request<Streaming<pb::UploadFileRequest>>,
    ) -> Result<Response<pb::UploadFileResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let (state, stream) = (self.state.clone(), request.into_inner());
        let file = detached(async move { simple::upload(&state, actor, stream).await }).await?;
        Ok(Response::new(pb::UploadFileResponse { file: Some(file.to_proto()) }))
    }

    async fn start_upload_session(
        &self,
        request: Request<pb::StartUploadSessionRequest>,
    ) -> Result<Response<pb::StartUploadSessionResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let session = sessions::start(&self.state, actor, request.into_inner()).await?;
        Ok(Response::new(pb::StartUploadSessionResponse { session: Some(session) }))
    }

    async fn upload_part(
        &self,
        request: Request<pb::UploadPartRequest>,
    ) -> Result<Response<pb::UploadPartResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let (state, request) = (self.state.clone(), request.into_inner());
        Ok(Response::new(detached(async move { sessions::upload_part(&state, actor, request).await }).await?))
    }

    async fn complete_upload_session(
        &self,
        request: Request<pb::CompleteUploadSessionRequest>,
    ) -> Result<Response<pb::CompleteUploadSessionResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let (state, request) = (self.state.clone(), request.into_inner());
        Ok(Response::new(detached(async move { finish::complete(&state, actor, request).await }).await?))
    }

    async fn abort_upload_session(
        &self,
        request: Request<pb::AbortUploadSessionRequest>,
    ) -> Result<Response<pb::AbortUploadSessionResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let (state, request) = (self.state.clone(), request.into_inner());
        let session = detached(async move { finish::abort(&state, actor, request).await }).await?;
        Ok(Response::new(pb::AbortUploadSessionResponse { session: Some(session) }))
    }

    async fn get_upload_session(
        &self,
        request: Request<pb::GetUploadSessionRequest>,
    ) -> Result<Response<pb::GetUploadSessionResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(sessions::get(&self.state, actor, request.into_inner()).await?))
    }

    async fn list_upload_sessions(
        &self,
        request: Request<pb::ListUploadSessionsRequest>,
    ) -> Result<Response<pb::ListUploadSessionsResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(sessions::list(&self.state, actor, request.into_inner()).await?))
    }
}
