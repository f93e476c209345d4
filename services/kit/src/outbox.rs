//! The transactional outbox.
//!
//! A service that changes state calls [`publish`] inside the same transaction, so the event
//! exists exactly when the change does. Consumers read `platform.outbox` in commit-safe order
//! with a cursor of their own, are woken by `LISTEN flatrender_outbox`, and receive every event
//! at least once: the cursor moves only after the handler succeeded, in one transaction, so a
//! crash between handling and acknowledging redelivers. Handlers must therefore be idempotent.
//!
//! Ordering and gaps: identity ids are handed out at insert time but transactions commit in any
//! order, so "id > cursor" alone would skip an event whose transaction commits late. Each row
//! also records its transaction id (`xid8`), and a consumer only reads rows whose transaction
//! is older than every transaction still running (`pg_snapshot_xmin`), ordered by
//! `(txid, id)`. No row can later appear below that horizon, so nothing is ever skipped.

use std::future::Future;
use std::time::Duration;

use prost::{Message, Name};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::shutdown::ShutdownSignal;
use crate::{Result, telemetry};

/// The notification channel the outbox trigger signals on commit.
pub const CHANNEL: &str = "flatrender_outbox";

/// What an event is about, beside its payload.
#[derive(Clone, Debug)]
pub struct EventMeta<'a> {
    /// The publishing service (`render`, `file`, ...).
    pub source: &'a str,
    /// The kind of thing that changed (`render_job`, `file`, ...).
    pub aggregate_type: &'a str,
    /// Its id.
    pub aggregate_id: String,
    /// Its tenant, when it has one.
    pub tenant_id: Option<Uuid>,
}

/// Writes `event` into the outbox inside the caller's transaction and returns its id. The
/// current trace context is stored with it so consumers continue the same trace.
pub async fn publish<M: Message + Name>(conn: &mut PgConnection, meta: EventMeta<'_>, event: &M) -> Result<i64> {
    let trace: serde_json::Map<String, serde_json::Value> =
        telemetry::current_context_fields().into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    let id = sqlx::query_scalar(
        "INSERT INTO platform.outbox (event_type, source, aggregate_type, aggregate_id, tenant_id, payload, trace_context)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(M::full_name())
    .bind(meta.source)
    .bind(meta.aggregate_type)
    .bind(meta.aggregate_id)
    .bind(meta.tenant_id)
    .bind(event.encode_to_vec())
    .bind(serde_json::Value::Object(trace))
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// One delivered event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Outbox id: unique, but not a delivery order on its own.
    pub id: i64,
    /// Full proto message name of the payload.
    pub event_type: String,
    /// Publishing service.
    pub source: String,
    /// Kind of thing that changed.
    pub aggregate_type: String,
    /// Its id.
    pub aggregate_id: String,
    /// Its tenant.
    pub tenant_id: Option<Uuid>,
    /// Encoded protobuf payload.
    pub payload: Vec<u8>,
    /// W3C trace context of the publishing call.
    pub trace_context: serde_json::Value,
    /// When it was written.
    pub created_at: OffsetDateTime,
}

impl Event {
    /// Decodes the payload as `M`, or `None` when the event is of another type.
    pub fn decode<M: Message + Name + Default>(&self) -> Option<Result<M>> {
        (self.event_type == M::full_name()).then(|| M::decode(self.payload.as_slice()).map_err(Into::into))
    }
}

/// Handles delivered events. Must be idempotent: an event can arrive more than once.
pub trait Handler: Send + Sync {
    /// Handles one event; an error stops the batch and the event is redelivered later.
    fn handle(&self, event: &Event) -> impl Future<Output = std::result::Result<(), HandlerError>> + Send;
}

/// A handler's failure, logged by the consumer before it retries.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// A named consumer with its own cursor. Several replicas may run the same consumer: a row
/// lock on the cursor lets one of them work at a time.
#[derive(Clone, Debug)]
pub struct Consumer {
    pool: PgPool,
    name: String,
    batch_size: i64,
    idle_poll: Duration,
}

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Events handled and acknowledged.
    pub handled: usize,
    /// Whether another replica held the cursor.
    pub busy: bool,
    /// Whether committed events wait behind a still-running older transaction.
    pub held_back: bool,
}

impl Consumer {
    /// A consumer named `name` (its cursor's key) reading through `pool`.
    pub fn new(pool: PgPool, name: impl Into<String>) -> Self {
        Self { pool, name: name.into(), batch_size: 100, idle_poll: Duration::from_secs(10) }
    }

    /// Events per batch (default 100).
    pub fn batch_size(mut self, size: u16) -> Self {
        self.batch_size = i64::from(size.max(1));
        self
    }

    /// How often to look without a notification (default 10 s): covers a lost notification.
    pub fn idle_poll(mut self, every: Duration) -> Self {
        self.idle_poll = every;
        self
    }

    /// Handles one batch and acknowledges it. An error leaves the cursor where it was.
    pub async fn process_batch<H: Handler>(&self, handler: &H) -> Result<Batch> {
        sqlx::query("INSERT INTO platform.outbox_consumers (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
            .bind(&self.name)
            .execute(&self.pool)
            .await?;

        let mut tx = self.pool.begin().await?;
        let cursor: Option<(i64, i64)> = sqlx::query_as(
            "SELECT last_txid::text::bigint, last_id FROM platform.outbox_consumers
             WHERE name = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&self.name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((last_txid, last_id)) = cursor else {
            return Ok(Batch { busy: true, ..Batch::default() });
        };

        let rows = sqlx::query(
            "SELECT id, txid::text::bigint AS txid, event_type, source, aggregate_type, aggregate_id, tenant_id,
                    payload, trace_context, created_at
             FROM platform.outbox
             WHERE (txid, id) > ($1::text::xid8, $2)
               AND txid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY txid, id
             LIMIT $3",
        )
        .bind(last_txid.to_string())
        .bind(last_id)
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;

        let mut cursor = (last_txid, last_id);
        let mut handled = 0;
        for row in &rows {
            let event = Event {
                id: row.try_get("id")?,
                event_type: row.try_get("event_type")?,
                source: row.try_get("source")?,
                aggregate_type: row.try_get("aggregate_type")?,
                aggregate_id: row.try_get("aggregate_id")?,
                tenant_id: row.try_get("tenant_id")?,
                payload: row.try_get("payload")?,
                trace_context: row.try_get("trace_context")?,
                created_at: row.try_get("created_at")?,
            };
            if let Err(e) = handler.handle(&event).await {
                tracing::warn!(consumer = %self.name, event_id = event.id, error = %e, "event handler failed; will retry");
                break;
            }
            cursor = (row.try_get("txid")?, event.id);
            handled += 1;
        }
        if handled > 0 {
            sqlx::query(
                "UPDATE platform.outbox_consumers SET last_txid = $2::text::xid8, last_id = $3, updated_at = now()
                 WHERE name = $1",
            )
            .bind(&self.name)
            .bind(cursor.0.to_string())
            .bind(cursor.1)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        let held_back = rows.len() < usize::try_from(self.batch_size).unwrap_or(usize::MAX)
            && sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM platform.outbox WHERE (txid, id) > ($1::text::xid8, $2))",
            )
            .bind(cursor.0.to_string())
            .bind(cursor.1)
            .fetch_one(&self.pool)
            .await?;
        Ok(Batch { handled, busy: false, held_back })
    }

    /// Delivers events to `handler` until shutdown: drains what is pending, then sleeps until a
    /// notification, the idle poll, or — when events wait behind a running transaction — a
    /// short retry.
    pub async fn run<H: Handler>(self, handler: H, signal: ShutdownSignal) {
        let mut listener = match self.listen().await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(consumer = %self.name, error = %e, "cannot LISTEN; falling back to polling");
                None
            }
        };
        let mut backoff = Duration::from_millis(20);
        let stop = signal.clone().wait();
        tokio::pin!(stop);
        loop {
            let wait = match self.process_batch(&handler).await {
                Ok(batch) if batch.handled > 0 && !signal.is_started() => {
                    backoff = Duration::from_millis(20);
                    continue;
                }
                Ok(batch) if batch.held_back || batch.busy => {
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    backoff
                }
                Ok(_) => {
                    backoff = Duration::from_millis(20);
                    self.idle_poll
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.name, error = %e, "outbox batch failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            if signal.is_started() {
                return;
            }
            let notified = async {
                match listener.as_mut() {
                    // PgListener reconnects by itself; an error here means it could not.
                    Some(l) => {
                        if l.recv().await.is_err() {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(wait) => {}
                _ = notified => {}
            }
        }
    }

    async fn listen(&self) -> Result<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}
