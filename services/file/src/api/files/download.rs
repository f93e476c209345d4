//! `DownloadFile`: the metadata, then the bytes of the range in chunks of at most 1 MiB.
//!
//! A task pumps the storage stream into a small bounded channel, so memory stays constant however
//! large the file and however slow the client. When the stream ends (or the client goes away)
//! the task records the download — `last_accessed_at` at most once an hour, and a
//! `FileDownloaded` event when a person downloaded — before it ends the response, so the record
//! exists once the client has seen the end.

use flatrender_proto::flatrender::file::v1 as pb;
use futures_util::StreamExt;
use pb::download_file_response::Payload;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codegen::BoxStream;

use super::super::folders::tree::Lock;
use super::{reachable, require_active};
use crate::FileApi;
use crate::access::Actor;
use crate::downloads::{self, Recipient};
use crate::error::{FileError, Result};
use crate::model::FileRecord;
use crate::state::State;
use crate::storage::{ByteRange, ByteStream};
use crate::validate;

/// Messages buffered between storage and the client.
const CHANNEL_DEPTH: usize = 2;

type Sender = mpsc::Sender<Result<pb::DownloadFileResponse, Status>>;

/// A download under way.
struct Transfer {
    state: State,
    actor: Actor,
    file: FileRecord,
    offset: u64,
}

impl FileApi {
    /// Checks the request and starts streaming the range it asks for.
    pub(super) async fn start_download(
        &self,
        actor: Actor,
        req: &pb::DownloadFileRequest,
    ) -> Result<BoxStream<pb::DownloadFileResponse>> {
        let id = validate::id("file_id", &req.file_id)?;
        let expected = validate::optional_sha256("expected_sha256", &req.expected_sha256)?;
        let file = reachable(&self.state.pool, &actor, id, Lock::None).await?;
        require_active(&file)?;
        if expected.is_some_and(|expected| expected != file.sha256) {
            return Err(FileError::FailedPrecondition(format!(
                "expected_sha256: the file's SHA-256 is {}",
                file.sha256.to_hex()
            )));
        }
        if req.offset > file.size {
            return Err(FileError::OutOfRange(format!(
                "offset: {} is past the end of the {}-byte file",
                req.offset, file.size
            )));
        }
        let rest = file.size - req.offset;
        let length = if req.length == 0 { rest } else { req.length.min(rest) };
        // Opened before answering, so a missing object fails the call rather than the stream.
        let (length, bytes): (u64, ByteStream) = if length == 0 {
            (0, futures_util::stream::empty().boxed())
        } else {
            let read = self.state.storage.get(&file.object_key()?, ByteRange::new(req.offset, length)).await?;
            (read.length, read.bytes)
        };
        let metadata = pb::DownloadFileMetadata { file: Some(file.to_proto()), offset: req.offset, length };
        let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
        let transfer = Transfer { state: self.state.clone(), actor, file, offset: req.offset };
        tokio::spawn(transfer.run(metadata, bytes, sender));
        let responses = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(Box::pin(responses))
    }
}

impl Transfer {
    /// Sends the metadata and every chunk, then records the download and ends the response.
    async fn run(self, metadata: pb::DownloadFileMetadata, mut bytes: ByteStream, sender: Sender) {
        let mut sent = 0_u64;
        let first = pb::DownloadFileResponse { payload: Some(Payload::Metadata(metadata)) };
        if sender.send(Ok(first)).await.is_ok() {
            while let Some(chunk) = bytes.next().await {
                match chunk {
                    Ok(chunk) if chunk.is_empty() => {}
                    Ok(chunk) => {
                        let len = chunk.len() as u64;
                        let message = pb::DownloadFileResponse { payload: Some(Payload::Chunk(chunk)) };
                        if sender.send(Ok(message)).await.is_err() {
                            break;
                        }
                        sent += len;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, file = %self.file.id, "a download broke off");
                        let _ = sender.send(Err(err.into())).await;
                        break;
                    }
                }
            }
        }
        let complete = self.offset == 0 && sent == self.file.size;
        if let Err(error) = self.record(sent, complete).await {
            tracing::warn!(%error, file = %self.file.id, "could not record a download");
        }
        drop(sender);
    }

    /// Updates `last_accessed_at` (at most once an hour) and, for a person, writes the event.
    async fn record(&self, sent: u64, complete: bool) -> Result<()> {
        let recipient =
            if self.actor.is_service() { Recipient::Service } else { Recipient::Person(self.actor.user_id()) };
        downloads::record(&self.state, &self.file, sent, complete, recipient).await
    }
}
