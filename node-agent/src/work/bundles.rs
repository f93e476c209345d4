//! Template bundles for the cache, fetched with `DownloadObject` on behalf of a task that names
//! them: the orchestrator serves a bundle only to a node holding a task that needs it, so each
//! fetch goes out under the lease of a task waiting for that bundle.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use futures_util::TryStreamExt;
use tokio_util::io::StreamReader;

use crate::cache::{BundleRef, Fetch, FetchBody};
use crate::transfer::{Object, TaskLease, Transfers};

/// Who may fetch which bundle: the latest task that asked for it.
#[derive(Clone)]
pub struct BundleSources {
    by_sha256: Arc<Mutex<HashMap<String, (TaskLease, String)>>>,
    transfers: Transfers,
}

impl BundleSources {
    pub fn new(transfers: Transfers) -> Self {
        Self { by_sha256: Arc::default(), transfers }
    }

    /// Notes that `lease`'s task needs the bundle `sha256`, stored as file `file_id`.
    pub fn register(&self, sha256: &str, lease: TaskLease, file_id: String) {
        if let Ok(mut map) = self.by_sha256.lock() {
            map.insert(sha256.to_string(), (lease, file_id));
        }
    }

    fn source(&self, sha256: &str) -> Option<(TaskLease, String, Transfers)> {
        let (lease, file) = self.by_sha256.lock().ok()?.get(sha256).cloned()?;
        Some((lease, file, self.transfers.clone()))
    }
}

impl Fetch for BundleSources {
    async fn fetch(&self, bundle: &BundleRef, offset: u64) -> io::Result<FetchBody> {
        let sha256 = bundle.sha256.as_str();
        let (lease, file, transfers) =
            self.source(sha256).ok_or_else(|| io::Error::other(format!("no task names the bundle {sha256}")))?;
        let (_, parts) = transfers.open(&lease, &Object::File(file), offset).await.map_err(io::Error::other)?;
        let bytes = parts.map_err(io::Error::other).try_filter_map(|part| async move {
            Ok(match part.part {
                Some(agent_pb::download_object_response::Part::Data(data)) => Some(data),
                _ => None,
            })
        });
        Ok(Box::new(StreamReader::new(Box::pin(bytes))))
    }
}
