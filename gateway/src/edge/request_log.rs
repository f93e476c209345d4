//! Request logs and API-call usage, sent to identity in batches off the request path.
//!
//! Each finished call of a tenant's user or API key becomes one row of
//! `identity.tenant_api_request_logs` and one count in `tenant_usage_daily.api_calls`, written by
//! identity (in this process, or over `UsageService.RecordApiRequests`). Calls queue in a bounded
//! channel and a writer sends them together every second (or every 512); when identity falls
//! behind, entries are dropped and counted rather than slowing calls.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatrender_proto::flatrender::identity::v1 as identity_pb;
use http_body::{Body as _, Frame, SizeHint};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Entries waiting at most.
const QUEUE: usize = 16_384;
/// Entries written per statement at most.
const BATCH: usize = 512;
/// How often the writer flushes.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One finished call.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub requested_at: OffsetDateTime,
    pub tenant_id: Uuid,
    pub api_key_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub method: String,
    pub grpc_status: i16,
    pub duration_us: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub trace_id: Option<String>,
}

/// Where finished calls are sent.
#[derive(Clone, Debug)]
pub struct RequestLog {
    queue: mpsc::Sender<Entry>,
    dropped: Arc<AtomicU64>,
}

/// Where batches go: identity's writer, as a future per batch.
pub type Sink = Arc<
    dyn Fn(Vec<identity_pb::ApiRequestRecord>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// A sink that records at an identity service in another process.
pub fn remote_sink(identity: super::RemoteIdentity) -> Sink {
    Arc::new(move |records| {
        let identity = identity.clone();
        Box::pin(async move {
            let request = identity
                .request(identity_pb::RecordApiRequestsRequest { records }, None)
                .map_err(|status| status.message().to_owned())?;
            identity_pb::usage_service_client::UsageServiceClient::new(identity.channel)
                .record_api_requests(request)
                .await
                .map(|_| ())
                .map_err(|status| format!("{}: {}", status.code(), status.message()))
        })
    })
}

impl RequestLog {
    /// A log and the writer task that empties it into `sink` until `signal`, flushing once more
    /// at the end.
    pub fn new(
        sink: Sink,
        signal: flatrender_kit::shutdown::ShutdownSignal,
    ) -> (Self, impl Future<Output = ()> + Send) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let log = Self { queue, dropped: Arc::default() };
        (log, write(sink, receiver, signal))
    }

    /// Queues `entry`; never waits.
    pub fn record(&self, entry: Entry) {
        if self.queue.try_send(entry).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "request log is behind; dropping entries");
            }
        }
    }
}

async fn write(sink: Sink, mut receiver: mpsc::Receiver<Entry>, signal: flatrender_kit::shutdown::ShutdownSignal) {
    let stop = signal.wait();
    tokio::pin!(stop);
    let mut batch = Vec::with_capacity(BATCH);
    // A failing sink (identity away, a key it does not trust) is said once a minute, not per batch.
    let mut warned: Option<Instant> = None;
    loop {
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        let stopping = loop {
            tokio::select! {
                () = &mut stop => break true,
                () = &mut deadline => break false,
                received = receiver.recv() => match received {
                    Some(entry) => {
                        batch.push(entry);
                        if batch.len() >= BATCH { break false; }
                    }
                    None => break true,
                },
            }
        };
        if stopping {
            while let Ok(entry) = receiver.try_recv() {
                batch.push(entry);
            }
        }
        for chunk in batch.chunks(BATCH) {
            if let Err(error) = sink(chunk.iter().map(Entry::record).collect()).await {
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(%error, entries = chunk.len(), "cannot write request logs; dropping them");
                    warned = Some(Instant::now());
                } else {
                    tracing::debug!(%error, entries = chunk.len(), "cannot write request logs; dropping them");
                }
            }
        }
        batch.clear();
        if stopping {
            return;
        }
    }
}

impl Entry {
    /// The entry as identity records it.
    pub fn record(&self) -> identity_pb::ApiRequestRecord {
        let text = |id: Option<Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
        identity_pb::ApiRequestRecord {
            requested_at: Some(prost_types::Timestamp {
                seconds: self.requested_at.unix_timestamp(),
                nanos: i32::try_from(self.requested_at.nanosecond()).unwrap_or(0),
            }),
            tenant_id: self.tenant_id.to_string(),
            api_key_id: text(self.api_key_id),
            user_id: text(self.user_id),
            method: self.method.clone(),
            grpc_status: i32::from(self.grpc_status),
            duration_us: self.duration_us,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            client_ip: self.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            user_agent: self.user_agent.clone().unwrap_or_default(),
            trace_id: self.trace_id.clone().unwrap_or_default(),
        }
    }
}

/// Counts the bytes of a request body.
pub struct CountedBody {
    inner: tonic::body::Body,
    bytes: Arc<AtomicU64>,
}

impl CountedBody {
    /// `inner`, counted into `bytes`.
    pub fn new(inner: tonic::body::Body, bytes: Arc<AtomicU64>) -> Self {
        Self { inner, bytes }
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that logs its call once it ends (or is dropped): the gRPC status of a
/// streaming call is only known from its trailers.
pub struct LoggedBody {
    inner: tonic::body::Body,
    pending: Option<(RequestLog, Entry, Instant, Arc<AtomicU64>)>,
}

impl LoggedBody {
    /// `inner`, logging `entry` (its status, duration and sizes filled in) into `log`.
    pub fn new(
        inner: tonic::body::Body,
        log: RequestLog,
        entry: Entry,
        started: Instant,
        request_bytes: Arc<AtomicU64>,
    ) -> Self {
        Self { inner, pending: Some((log, entry, started, request_bytes)) }
    }

    fn finish(&mut self) {
        if let Some((log, mut entry, started, request_bytes)) = self.pending.take() {
            entry.duration_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
            entry.request_bytes = i64::try_from(request_bytes.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            log.record(entry);
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((_, entry, _, _)) = self.pending.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        entry.response_bytes =
                            entry.response_bytes.saturating_add(i64::try_from(data.len()).unwrap_or(0));
                    }
                    if let Some(status) = frame.trailers_ref().and_then(grpc_status) {
                        entry.grpc_status = status;
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // A client that went away mid-stream: the call still happened.
        if let Some((_, entry, _, _)) = self.pending.as_mut()
            && entry.grpc_status == 0
            && !self.inner.is_end_stream()
        {
            entry.grpc_status = tonic::Code::Cancelled as i16;
        }
        self.finish();
    }
}

/// The `grpc-status` in `headers`, if any.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<i16> {
    headers.get("grpc-status")?.to_str().ok()?.parse::<i16>().ok().filter(|code| (0..=16).contains(code))
}
