//! Task inputs and outputs over the orchestrator's byte RPCs: `DownloadObject` (resumable by
//! offset, verified against the size and SHA-256 it announces) and `UploadObject` (the file
//! hashed first, then sent in parts of at most 1 MiB). Bytes never travel on the control stream.

use std::path::Path;

use bytes::Bytes;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::agent::v1::agent_service_client::AgentServiceClient;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::session::credential::NodeCredential;
use crate::session::stream::TRANSPORT_LIMIT_BYTES;

/// Upload parts: the protocol's maximum.
const PART_BYTES: usize = 1024 * 1024;

/// A transfer that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the orchestrator refused the transfer: {0}")]
    Refused(#[from] tonic::Status),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the download of {file} is corrupt: {why}")]
    Corrupt { file: String, why: String },
}

/// What to download.
#[derive(Clone, Debug)]
pub enum Object {
    /// A file named in the task (template, media, audio, watermark).
    File(String),
    /// An accepted frame of the job being assembled.
    Frame { segment_index: i32, frame: i32 },
}

/// The task a transfer is for (fencing: a stale epoch is refused).
#[derive(Clone, Debug)]
pub struct TaskLease {
    pub task_id: String,
    pub lease_epoch: u64,
}

/// The byte RPCs, authenticated as this node.
#[derive(Clone)]
pub struct Transfers {
    client: AgentServiceClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl Transfers {
    pub fn new(channel: Channel, credential: &NodeCredential) -> Result<Self, TransferError> {
        let authorization = credential.authorization().parse().map_err(|_| {
            TransferError::Refused(tonic::Status::unauthenticated("the credential is not a valid header"))
        })?;
        let client = AgentServiceClient::new(channel)
            .max_decoding_message_size(TRANSPORT_LIMIT_BYTES)
            .max_encoding_message_size(TRANSPORT_LIMIT_BYTES);
        Ok(Self { client, authorization })
    }

    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.authorization.clone());
        request
    }

    /// Opens `object` from `offset`: what the orchestrator announced, and the data parts.
    pub async fn open(
        &self,
        lease: &TaskLease,
        object: &Object,
        offset: u64,
    ) -> Result<(agent_pb::ObjectInfo, tonic::Streaming<agent_pb::DownloadObjectResponse>), TransferError> {
        let object = match object {
            Object::File(id) => agent_pb::download_object_request::Object::FileId(id.clone()),
            Object::Frame { segment_index, frame } => {
                agent_pb::download_object_request::Object::Frame(agent_pb::FrameSelector {
                    segment_index: *segment_index,
                    frame: *frame,
                })
            }
        };
        let request = agent_pb::DownloadObjectRequest {
            task_id: lease.task_id.clone(),
            lease_epoch: lease.lease_epoch,
            object: Some(object),
            offset,
        };
        let mut parts = self.client.clone().download_object(self.authed(request)).await?.into_inner();
        match parts.next().await {
            Some(Ok(agent_pb::DownloadObjectResponse {
                part: Some(agent_pb::download_object_response::Part::Info(info)),
            })) => Ok((info, parts)),
            Some(Err(status)) => Err(status.into()),
            _ => Err(TransferError::Refused(tonic::Status::internal("the download did not start with its info"))),
        }
    }

    /// Downloads `object` into `dest`, resuming from what `dest` already holds, and verifies the
    /// whole file against the announced size and SHA-256 (and `expected_sha256`, when the task
    /// named one). A file that does not verify is removed.
    pub async fn download_to(
        &self,
        lease: &TaskLease,
        object: &Object,
        dest: &Path,
        expected_sha256: Option<&str>,
    ) -> Result<agent_pb::ObjectInfo, TransferError> {
        let io = |what: &str| {
            let what = format!("{what} {}", dest.display());
            move |source| TransferError::Io { what, source }
        };
        let have = tokio::fs::metadata(dest).await.map(|m| m.len()).unwrap_or(0);
        let (info, mut parts) = match self.open(lease, object, have).await {
            // A partial file longer than the object: start again.
            Err(TransferError::Refused(status)) if have > 0 && status.code() == tonic::Code::OutOfRange => {
                tokio::fs::remove_file(dest).await.map_err(io("cannot remove"))?;
                self.open(lease, object, 0).await?
            }
            other => other?,
        };
        let mut file =
            tokio::fs::OpenOptions::new().create(true).append(true).open(dest).await.map_err(io("cannot open"))?;
        while let Some(part) = parts.next().await {
            if let Some(agent_pb::download_object_response::Part::Data(data)) = part?.part {
                file.write_all(&data).await.map_err(io("cannot write"))?;
            }
        }
        file.flush().await.map_err(io("cannot write"))?;
        drop(file);
        let (size, sha256) = file_digest(dest).await.map_err(io("cannot read"))?;
        let want = expected_sha256.unwrap_or(&info.sha256);
        if size != info.size_bytes || sha256 != info.sha256 || sha256 != want {
            let _ = tokio::fs::remove_file(dest).await;
            let why = format!("{size} bytes with SHA-256 {sha256}, announced {} bytes with {want}", info.size_bytes);
            return Err(TransferError::Corrupt { file: info.file_id, why });
        }
        Ok(info)
    }

    /// Uploads the file at `path` as `header` says (size and SHA-256 are filled in here).
    pub async fn upload_file(
        &self,
        mut header: agent_pb::UploadHeader,
        path: &Path,
    ) -> Result<agent_pb::UploadObjectResponse, TransferError> {
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| TransferError::Io { what, source }
        };
        let (size, sha256) = file_digest(path).await.map_err(io("cannot read"))?;
        header.size_bytes = size;
        header.sha256 = sha256;
        let mut file = tokio::fs::File::open(path).await.map_err(io("cannot open"))?;
        // Parts are read ahead while earlier ones are sent; a read error ends the stream early,
        // which the orchestrator refuses (the size does not match).
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let first = agent_pb::UploadObjectRequest { part: Some(agent_pb::upload_object_request::Part::Header(header)) };
        let _ = tx.send(first).await;
        let reading = tokio::spawn(async move {
            loop {
                let mut buf = vec![0_u8; PART_BYTES];
                let mut filled = 0;
                while filled < PART_BYTES {
                    match file.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => return Err(e),
                    }
                }
                if filled == 0 {
                    return Ok(());
                }
                buf.truncate(filled);
                let part = agent_pb::upload_object_request::Part::Data(Bytes::from(buf));
                if tx.send(agent_pb::UploadObjectRequest { part: Some(part) }).await.is_err() {
                    return Ok(());
                }
            }
        });
        let response =
            self.client.clone().upload_object(self.authed(tokio_stream::wrappers::ReceiverStream::new(rx))).await;
        let read = reading
            .await
            .map_err(|e| TransferError::Io { what: "upload reader".into(), source: std::io::Error::other(e) })?;
        read.map_err(io("cannot read"))?;
        Ok(response?.into_inner())
    }
}

/// Size and lower-case hex SHA-256 of a file, hashed off the async threads.
pub async fn file_digest(path: &Path) -> std::io::Result<(u64, String)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0_u8; 256 * 1024];
        let mut size = 0_u64;
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)?;
            if n == 0 {
                return Ok((size, hex::encode(hasher.finalize())));
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
    })
    .await
    .map_err(std::io::Error::other)?
}
