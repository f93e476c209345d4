//! The transactional outbox.
//!
//! A service that changes state calls [`publish`] with the transaction that makes the change,
//! so the event exists exactly when the change does: `publish` takes a [`PgTransaction`], not a
//! bare connection, so it cannot be called outside one by mistake. Consumers read
//! `platform.outbox` in commit-safe order with a cursor of their own, are woken by
//! `LISTEN flatrender_outbox`, and receive every event at least once: the cursor moves only
//! after the handler succeeded, in one transaction, so a crash between handling and
//! acknowledging redelivers. Handlers must therefore be idempotent.
//!
//! Ordering and gaps: identity ids are handed out at insert time but transactions commit in any
//! order, so "id > cursor" alone would skip an event whose transaction commits late. Each row
//! also records its transaction id (`xid8`), and a consumer only reads rows whose transaction
//! is older than every transaction still running (`pg_snapshot_xmin`), ordered by
//! `(txid, id)`. No row can later appear below that horizon, so nothing is ever skipped.
//!
//! That horizon is cluster-wide: any transaction that holds a transaction id holds back every
//! consumer of every database on the server. A consumer therefore never holds one while its
//! handlers run. One replica at a time works on a consumer's cursor, made exclusive by a
//! transaction-scoped advisory lock (which needs no transaction id); the cursor is read with a
//! plain `SELECT`, the handlers run, and only the final `UPDATE` of the cursor takes a
//! transaction id, just before `COMMIT`.
//!
//! Where a new consumer starts: by default at the beginning of the outbox, so it receives the
//! whole history. [`Consumer::start_from_now`] instead starts it at the horizon at the moment
//! its cursor is created: it skips every event of a transaction older than the horizon (all of
//! them already ended) and receives every event of the transactions still running then and of
//! all later ones — possibly also a few that committed just before, never fewer than "from now".
//! Either choice applies only when the cursor row is first created; an existing cursor is kept.
//!
//! Tracing: [`publish`] stores the caller's W3C trace context beside the event, and each event
//! is handled inside an `outbox.handle` span whose OpenTelemetry parent is that stored context,
//! so the handler continues the publisher's trace.
//!
//! Connections: [`Consumer::run`] holds one connection of the consumer's pool for its whole
//! life (the `LISTEN` connection), and each batch takes another for as long as its handlers run.
//! The pool needs at least two connections per running consumer, plus what the handlers use.

use std::future::Future;
use std::time::Duration;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use prost::{Message, Name};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, PgTransaction, Row};
use time::OffsetDateTime;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::shutdown::ShutdownSignal;
use crate::{Error, Result, telemetry};

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

/// Writes `event` into the outbox inside the caller's transaction `tx` and returns its id. The
/// event exists once `tx` commits and never if it rolls back. The current trace context is
/// stored with it so consumers continue the same trace.
pub async fn publish<M: Message + Name>(tx: &mut PgTransaction<'_>, meta: EventMeta<'_>, event: &M) -> Result<i64> {
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
    .fetch_one(&mut **tx)
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

    /// The OpenTelemetry context of the publishing call, when the event carries a valid one.
    fn parent_context(&self) -> Option<opentelemetry::Context> {
        let fields = self.trace_context.as_object()?;
        let context = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract_with_context(&opentelemetry::Context::new(), &JsonExtractor(fields))
        });
        context.span().span_context().is_valid().then_some(context)
    }
}

/// Reads W3C trace context fields from an event's stored JSON object.
struct JsonExtractor<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl Extractor for JsonExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(serde_json::Value::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Handles delivered events. Must be idempotent: an event can arrive more than once.
pub trait Handler: Send + Sync {
    /// Handles one event; an error stops the batch and the event is redelivered later. It runs
    /// inside the event's `outbox.handle` span, a child of the publisher's trace.
    fn handle(&self, event: &Event) -> impl Future<Output = std::result::Result<(), HandlerError>> + Send;
}

/// A handler's failure, logged by the consumer before it retries.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// A named consumer with its own cursor. Several replicas may run the same consumer: an
/// advisory lock on its name lets one of them work at a time.
#[derive(Clone, Debug)]
pub struct Consumer {
    pool: PgPool,
    name: String,
    batch_size: i64,
    idle_poll: Duration,
    start_from_now: bool,
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
    /// Whether a handler failed: the failed event and everything after it were not
    /// acknowledged and will be delivered again.
    pub failed: bool,
}

/// The event a handler failed on.
struct Failure {
    event_id: i64,
    event_type: String,
    error: HandlerError,
}

/// Why [`Consumer::run`] stopped waiting.
enum Wake {
    /// The wait elapsed.
    Timer,
    /// A notification arrived.
    Notified,
    /// The listener's connection was lost and re-established: notifications may be lost.
    Reconnected,
    /// The listener failed and must be replaced.
    ListenerFailed(sqlx::Error),
}

/// First retry after a busy cursor, events held back, or a database error.
const RETRY_FIRST: Duration = Duration::from_millis(20);
/// Longest retry while another replica holds the cursor or events are held back.
const RETRY_HELD_MAX: Duration = Duration::from_secs(1);
/// Longest retry after a database error, and between attempts to `LISTEN`.
const RETRY_ERROR_MAX: Duration = Duration::from_secs(5);
/// First retry after a handler failed.
const FAILURE_FIRST: Duration = Duration::from_millis(100);
/// Longest retry after a handler failed.
const FAILURE_MAX: Duration = Duration::from_secs(30);

impl Consumer {
    /// A consumer named `name` (its cursor's key) reading through `pool`. A new consumer starts
    /// at the beginning of the outbox and receives its whole history; see
    /// [`Consumer::start_from_now`].
    pub fn new(pool: PgPool, name: impl Into<String>) -> Self {
        Self { pool, name: name.into(), batch_size: 100, idle_poll: Duration::from_secs(10), start_from_now: false }
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

    /// When this consumer's cursor does not exist yet, create it at the current horizon instead
    /// of at the beginning: the history is skipped (every event of a transaction older than the
    /// oldest one still running), and every event of a transaction still running then or
    /// started later is delivered. Has no effect on a cursor that already exists.
    pub fn start_from_now(mut self) -> Self {
        self.start_from_now = true;
        self
    }

    /// Handles one batch and acknowledges it. An error leaves the cursor where it was; a
    /// handler failure (logged here) acknowledges only the events handled before it.
    pub async fn process_batch<H: Handler>(&self, handler: &H) -> Result<Batch> {
        let (batch, failure) = self.process(handler).await?;
        if let Some(f) = failure {
            tracing::warn!(
                consumer = %self.name, event_id = f.event_id, event_type = %f.event_type, error = %f.error,
                "event handler failed; the event will be redelivered",
            );
        }
        Ok(batch)
    }

    async fn process<H: Handler>(&self, handler: &H) -> Result<(Batch, Option<Failure>)> {
        let mut created = false;
        let (mut tx, last_txid, last_id) = loop {
            // READ COMMITTED whatever the server's default: each statement must see what the
            // previous holder of the lock committed.
            let mut tx = self.pool.begin_with("BEGIN ISOLATION LEVEL READ COMMITTED").await?;
            // Exclusivity without a transaction id (a row lock would take one and hold back
            // the horizon of every consumer in the cluster while the handlers run).
            let locked =
                crate::db::try_advisory_xact_lock(&mut tx, &format!("flatrender.outbox:{}", self.name)).await?;
            if !locked {
                return Ok((Batch { busy: true, ..Batch::default() }, None));
            }
            let cursor: Option<(i64, i64)> = sqlx::query_as(
                "SELECT last_txid::text::bigint, last_id FROM platform.outbox_consumers WHERE name = $1",
            )
            .bind(&self.name)
            .fetch_optional(&mut *tx)
            .await?;
            match cursor {
                Some((last_txid, last_id)) => break (tx, last_txid, last_id),
                // First batch ever: create the cursor in its own short transaction, then start over.
                None if !created => {
                    tx.rollback().await?;
                    self.create_cursor().await?;
                    created = true;
                }
                None => return Err(Error::Database(sqlx::Error::RowNotFound)),
            }
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
        let mut failure = None;
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
            let span = tracing::info_span!(
                "outbox.handle",
                otel.kind = "consumer",
                consumer = %self.name,
                event_type = %event.event_type,
                event_id = event.id,
            );
            if let Some(parent) = event.parent_context() {
                // Fails only when the span is disabled or there is no OpenTelemetry layer.
                let _ = span.set_parent(parent);
            }
            if let Err(error) = handler.handle(&event).instrument(span).await {
                failure = Some(Failure { event_id: event.id, event_type: event.event_type, error });
                break;
            }
            cursor = (row.try_get("txid")?, event.id);
            handled += 1;
        }
        if handled > 0 {
            // The only statement that takes a transaction id, right before COMMIT.
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

        let failed = failure.is_some();
        let held_back = !failed
            && rows.len() < usize::try_from(self.batch_size).unwrap_or(usize::MAX)
            && sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM platform.outbox WHERE (txid, id) > ($1::text::xid8, $2))",
            )
            .bind(cursor.0.to_string())
            .bind(cursor.1)
            .fetch_one(&self.pool)
            .await?;
        Ok((Batch { handled, busy: false, held_back, failed }, failure))
    }

    /// Creates this consumer's cursor unless it exists: at the beginning, or with
    /// [`Consumer::start_from_now`] just below the horizon. The cursor `(xmin - 1, i64::MAX)`
    /// lies after every row of a transaction older than `xmin` (all ended, so none can appear
    /// there later) and before every row of transaction `xmin` or newer.
    async fn create_cursor(&self) -> Result<()> {
        let query = if self.start_from_now {
            sqlx::query(
                "INSERT INTO platform.outbox_consumers (name, last_txid, last_id)
                 VALUES ($1, (pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1)::text::xid8, $2)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&self.name)
            .bind(i64::MAX)
        } else {
            sqlx::query("INSERT INTO platform.outbox_consumers (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind(&self.name)
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// Delivers events to `handler` until shutdown: drains what is pending, then sleeps until a
    /// notification, the idle poll, or — when events wait behind a running transaction or
    /// another replica holds the cursor — a short retry. After a handler failure it retries
    /// with its own backoff (up to 30 s), counting attempts in the log. A lost listener
    /// connection counts as a notification (events may have been published meanwhile); a
    /// listener that cannot `LISTEN` is retried with a backoff.
    ///
    /// Holds one connection of the pool for its whole life (the listener) and takes another for
    /// each batch.
    pub async fn run<H: Handler>(self, handler: H, signal: ShutdownSignal) {
        let mut listener: Option<PgListener> = None;
        let mut listen_attempt: u32 = 0;
        let mut listen_backoff = RETRY_FIRST;
        let mut retry = RETRY_FIRST;
        let mut failure_backoff = FAILURE_FIRST;
        let mut attempt: u32 = 0;
        let stop = signal.clone().wait();
        tokio::pin!(stop);
        loop {
            // Listen before reading, so that nothing committed after the read goes unnoticed.
            if listener.is_none() {
                match self.listen().await {
                    Ok(l) => {
                        if listen_attempt > 0 {
                            tracing::info!(consumer = %self.name, "listening for outbox notifications again");
                        }
                        listener = Some(l);
                        listen_attempt = 0;
                        listen_backoff = RETRY_FIRST;
                    }
                    Err(e) => {
                        listen_attempt = listen_attempt.saturating_add(1);
                        tracing::warn!(
                            consumer = %self.name, attempt = listen_attempt, retry_in = ?listen_backoff, error = %e,
                            "cannot LISTEN; polling until it works",
                        );
                    }
                }
            }

            // (how long to wait, whether a notification or the listener retry may end it sooner)
            let (wait, interruptible) = match self.process(&handler).await {
                Ok((_, Some(f))) => {
                    // Later events wait behind the failed one: notifications cannot help.
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(
                        consumer = %self.name, event_id = f.event_id, event_type = %f.event_type, attempt,
                        retry_in = ?failure_backoff, error = %f.error, "event handler failed; retrying",
                    );
                    let wait = failure_backoff;
                    failure_backoff = (failure_backoff * 2).min(FAILURE_MAX);
                    retry = RETRY_FIRST;
                    (wait, false)
                }
                Ok((batch, None)) => {
                    if attempt > 0 {
                        tracing::info!(consumer = %self.name, attempts = attempt, "event handler recovered");
                    }
                    attempt = 0;
                    failure_backoff = FAILURE_FIRST;
                    if batch.handled > 0 {
                        retry = RETRY_FIRST;
                        if signal.is_started() {
                            return;
                        }
                        continue;
                    }
                    if batch.held_back || batch.busy {
                        let wait = retry;
                        retry = (retry * 2).min(RETRY_HELD_MAX);
                        (wait, true)
                    } else {
                        retry = RETRY_FIRST;
                        (self.idle_poll, true)
                    }
                }
                Err(e) => {
                    tracing::warn!(consumer = %self.name, retry_in = ?retry, error = %e, "outbox batch failed; retrying");
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_ERROR_MAX);
                    (wait, true)
                }
            };
            if signal.is_started() {
                return;
            }
            let wait = if interruptible && listener.is_none() {
                let until_listen = listen_backoff;
                listen_backoff = (listen_backoff * 2).min(RETRY_ERROR_MAX);
                wait.min(until_listen)
            } else {
                wait
            };
            let woke = tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(wait) => Wake::Timer,
                wake = next_notification(listener.as_mut().filter(|_| interruptible)) => wake,
            };
            match woke {
                Wake::Timer | Wake::Notified => {}
                Wake::Reconnected => {
                    tracing::info!(consumer = %self.name, "outbox listener reconnected; looking for missed events");
                }
                Wake::ListenerFailed(e) => {
                    tracing::warn!(consumer = %self.name, error = %e, "outbox listener failed; listening again");
                    listener = None;
                }
            }
        }
    }

    async fn listen(&self) -> Result<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}

/// Waits for the next notification; never returns without a listener.
async fn next_notification(listener: Option<&mut PgListener>) -> Wake {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    // `try_recv`, not `recv`: `recv` reconnects silently, hiding that notifications were lost.
    match listener.try_recv().await {
        Ok(Some(_)) => Wake::Notified,
        Ok(None) => Wake::Reconnected,
        Err(e) => Wake::ListenerFailed(e),
    }
}
