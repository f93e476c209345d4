//! Request logs and API-call usage, written in batches off the request path.
//!
//! Each finished call of a tenant's user or API key becomes one row of
//! `identity.tenant_api_request_logs` and one count in `tenant_usage_daily.api_calls`. Calls
//! queue in a bounded channel and a writer inserts them together every second (or every 512);
//! when the database falls behind, entries are dropped and counted rather than slowing calls.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use sqlx::PgPool;
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

impl RequestLog {
    /// A log and the writer task that empties it into `pool` until `signal`, flushing once more
    /// at the end.
    pub fn new(
        pool: PgPool,
        signal: flatrender_kit::shutdown::ShutdownSignal,
    ) -> (Self, impl Future<Output = ()> + Send) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let log = Self { queue, dropped: Arc::default() };
        (log, write(pool, receiver, signal))
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

async fn write(pool: PgPool, mut receiver: mpsc::Receiver<Entry>, signal: flatrender_kit::shutdown::ShutdownSignal) {
    let stop = signal.wait();
    tokio::pin!(stop);
    let mut batch = Vec::with_capacity(BATCH);
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
            if let Err(e) = insert(&pool, chunk).await {
                tracing::warn!(error = %e, entries = chunk.len(), "cannot write request logs; dropping them");
            }
        }
        batch.clear();
        if stopping {
            return;
        }
    }
}

/// Writes `entries` and their usage counts in one transaction.
pub async fn insert(pool: &PgPool, entries: &[Entry]) -> sqlx::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Entry) -> Option<String>| entries.iter().map(f).collect::<Vec<_>>();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO identity.tenant_api_request_logs
             (requested_at, tenant_id, api_key_id, user_id, method, grpc_status, duration_us, request_bytes,
              response_bytes, client_ip, user_agent, trace_id)
         SELECT u.at, u.tenant, u.key, u.usr, u.method, u.status, u.duration, u.req, u.resp, u.ip::inet, u.agent, u.trace
         FROM unnest($1::timestamptz[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::int2[], $7::int8[],
                     $8::int8[], $9::int8[], $10::text[], $11::text[], $12::text[])
              AS u(at, tenant, key, usr, method, status, duration, req, resp, ip, agent, trace)",
    )
    .bind(entries.iter().map(|e| e.requested_at).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.tenant_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.api_key_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.user_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.method.clone()).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.grpc_status).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.duration_us).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.request_bytes).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.response_bytes).collect::<Vec<_>>())
    .bind(column(|e| e.client_ip.map(|ip| ip.to_string())))
    .bind(column(|e| e.user_agent.clone()))
    .bind(column(|e| e.trace_id.clone()))
    .execute(&mut *tx)
    .await?;
    // One count per tenant and UTC day; tenants that no longer exist are skipped.
    let mut counts: std::collections::BTreeMap<(Uuid, time::Date), i64> = std::collections::BTreeMap::new();
    for entry in entries {
        *counts.entry((entry.tenant_id, entry.requested_at.to_offset(time::UtcOffset::UTC).date())).or_default() += 1;
    }
    sqlx::query(
        "INSERT INTO identity.tenant_usage_daily AS d (tenant_id, day, api_calls)
         SELECT u.tenant, u.day, u.calls FROM unnest($1::uuid[], $2::date[], $3::int8[]) AS u(tenant, day, calls)
         JOIN identity.tenants t ON t.id = u.tenant
         ON CONFLICT (tenant_id, day) DO UPDATE SET api_calls = d.api_calls + EXCLUDED.api_calls",
    )
    .bind(counts.keys().map(|(tenant, _)| *tenant).collect::<Vec<_>>())
    .bind(counts.keys().map(|(_, day)| *day).collect::<Vec<_>>())
    .bind(counts.values().copied().collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
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
