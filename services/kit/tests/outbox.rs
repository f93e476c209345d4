//! The outbox against real PostgreSQL: delivery, a consumer that was down, a crash between
//! handling and acknowledging, a failing handler, transactions committing out of order,
//! competing replicas, starting from now, publishing in a rolled-back transaction, trace
//! context, and `run` (notifications, retries, a lost listener connection, shutdown).
//!
//! The horizon consumers read below (`pg_snapshot_xmin`) is cluster-wide and other tests
//! migrate databases in parallel, so every loop waiting for delivery has a wall-clock deadline
//! and a short backoff instead of a fixed number of rounds.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flatrender_kit::db::ServiceRole;
use flatrender_kit::outbox::{self, Batch, Consumer, Event, EventMeta, Handler, HandlerError};
use flatrender_kit::shutdown::Shutdown;
use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::common::v1::PageRequest;
use sqlx::{Connection as _, PgPool};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long any wait for the outbox to settle may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// Records every delivery; optionally fails once after recording event `fail_after_handling`.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<i64>>,
    fail_after_handling: Mutex<Option<i64>>,
}

impl Recorder {
    fn seen(&self) -> Vec<i64> {
        self.seen.lock().unwrap().clone()
    }
}

impl Handler for Recorder {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        let message: PageRequest = event.decode().expect("right type").expect("decodes");
        // Each test event carries its own marker: the payload must belong to its row.
        let marker: i64 = event.aggregate_id.parse().expect("marker");
        assert_eq!(i64::from(message.page_size), marker, "payload belongs to its event");
        self.seen.lock().unwrap().push(event.id);
        let mut fail = self.fail_after_handling.lock().unwrap();
        if *fail == Some(event.id) {
            *fail = None;
            // The work is done but the handler reports failure: nothing is acknowledged.
            return Err(HandlerError("failed after handling".into()));
        }
        Ok(())
    }
}

/// Records like [`Recorder`], then at event `at` signals `reached` once and never returns: the
/// process dies in the middle of a batch.
struct Hang {
    recorder: Recorder,
    at: i64,
    reached: Mutex<Option<oneshot::Sender<()>>>,
}

impl Handler for Hang {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        self.recorder.handle(event).await?;
        if event.id == self.at {
            let reached = self.reached.lock().unwrap().take();
            if let Some(reached) = reached {
                reached.send(()).unwrap();
                std::future::pending::<()>().await;
            }
        }
        Ok(())
    }
}

/// Forwards every delivered event id.
struct Forward(mpsc::UnboundedSender<i64>);

impl Handler for Forward {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        self.0.send(event.id).map_err(|e| HandlerError(e.to_string()))
    }
}

/// Publishes one event in its own transaction, as a service would; returns its id.
async fn publish(pool: &PgPool) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let id = publish_in(&mut tx).await;
    tx.commit().await.unwrap();
    id
}

async fn publish_in(tx: &mut sqlx::PgTransaction<'_>) -> i64 {
    let marker: u32 = next_marker();
    let meta = EventMeta { source: "test", aggregate_type: "thing", aggregate_id: marker.to_string(), tenant_id: None };
    let message = PageRequest { page_size: marker, page_token: String::new() };
    outbox::publish(tx, meta, &message).await.unwrap()
}

fn next_marker() -> u32 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(7919, Ordering::Relaxed)
}

/// The transaction id each event was written by.
async fn txids(pool: &PgPool, ids: &[i64]) -> Vec<i64> {
    sqlx::query_scalar("SELECT txid::text::bigint FROM platform.outbox WHERE id = ANY($1) ORDER BY id")
        .bind(ids)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until every event in `ids` lies below the (cluster-wide) horizon, so that one batch
/// sees them all.
async fn wait_below_horizon(pool: &PgPool, ids: &[i64]) {
    let deadline = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(20);
    loop {
        let below: bool = sqlx::query_scalar(
            "SELECT bool_and(txid < pg_snapshot_xmin(pg_current_snapshot())) FROM platform.outbox WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap();
        if below {
            return;
        }
        assert!(Instant::now() < deadline, "the horizon did not pass events {ids:?}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Processes batches until nothing is left to deliver: no progress, nothing held back, no
/// other holder of the cursor, no failure.
async fn drain<H: Handler>(consumer: &Consumer, handler: &H) {
    let deadline = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(20);
    loop {
        let batch = consumer.process_batch(handler).await.unwrap();
        if batch.handled > 0 && !batch.failed {
            pause = Duration::from_millis(20);
        } else if !batch.held_back && !batch.busy && !batch.failed {
            return;
        } else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        assert!(Instant::now() < deadline, "consumer did not settle: {batch:?}");
    }
}

/// One batch by a consumer whose cursor nobody else holds (an aborted batch may hold it until
/// its rollback reaches the server).
async fn batch_when_free<H: Handler>(consumer: &Consumer, handler: &H) -> Batch {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let batch = consumer.process_batch(handler).await.unwrap();
        if !batch.busy {
            return batch;
        }
        assert!(Instant::now() < deadline, "the cursor stayed busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_consumer_that_was_down_gets_every_event_in_order() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let mut ids = Vec::new();
    for _ in 0..25 {
        ids.push(publish(&pool).await);
    }
    // The consumer starts only now, with a small batch size to cross batch boundaries.
    let consumer = Consumer::new(db.service_pool(ServiceRole::NOTIFICATION), "notifications").batch_size(7);
    let recorder = Recorder::default();
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), ids);

    // Nothing is delivered twice when all went well.
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), ids);
}

#[tokio::test]
async fn a_crash_between_handling_and_acknowledging_redelivers_the_whole_batch() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::FILE);
    let ids = vec![publish(&pool).await, publish(&pool).await, publish(&pool).await];
    // All three in the batch that crashes.
    wait_below_horizon(&pool, &ids).await;
    let consumer = Consumer::new(db.service_pool(ServiceRole::IDENTITY), "webhooks");
    let (reached, crashed) = oneshot::channel();
    let handler = Arc::new(Hang { recorder: Recorder::default(), at: ids[1], reached: Mutex::new(Some(reached)) });

    let task = tokio::spawn({
        let consumer = consumer.clone();
        let handler = handler.clone();
        async move { consumer.process_batch(handler.as_ref()).await }
    });
    tokio::time::timeout(DEADLINE, crashed).await.expect("the handler reached the second event").unwrap();
    // While its handler runs, the batch's transaction holds no transaction id, so it holds back
    // no other consumer's horizon.
    let open: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT backend_xid::text FROM pg_stat_activity
         WHERE datname = current_database() AND state = 'idle in transaction'",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(open, [None], "one open batch transaction, without a transaction id");
    // The process dies: its transaction is dropped without a commit.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(handler.recorder.seen(), &ids[..2]);

    let batch = batch_when_free(&consumer, handler.as_ref()).await;
    assert_eq!(batch, Batch { handled: 3, ..Batch::default() }, "the whole batch again, in one batch");
    assert_eq!(
        handler.recorder.seen(),
        vec![ids[0], ids[1], ids[0], ids[1], ids[2]],
        "at least once: the unacknowledged batch arrives again, in order"
    );
    drain(&consumer, handler.as_ref()).await;
    assert_eq!(handler.recorder.seen().len(), 5, "acknowledged once it succeeded");
}

#[tokio::test]
async fn a_failing_handler_stops_the_batch_and_gets_the_event_again() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::FILE);
    let ids = vec![publish(&pool).await, publish(&pool).await, publish(&pool).await];
    wait_below_horizon(&pool, &ids).await;
    let consumer = Consumer::new(db.service_pool(ServiceRole::IDENTITY), "webhooks");
    let recorder = Recorder::default();
    *recorder.fail_after_handling.lock().unwrap() = Some(ids[1]);

    let batch = consumer.process_batch(&recorder).await.unwrap();
    assert_eq!(batch.handled, 1, "the first event is acknowledged, the second is not");
    assert!(batch.failed);
    assert_eq!(recorder.seen(), &ids[..2], "nothing after the failed event in this batch");

    let batch = consumer.process_batch(&recorder).await.unwrap();
    assert_eq!(batch, Batch { handled: 2, ..Batch::default() }, "the failed event first, then the rest");
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), vec![ids[0], ids[1], ids[1], ids[2]], "at least once: the second arrives again");
}

#[tokio::test]
async fn an_event_committed_late_is_not_skipped() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    // Transaction A takes the lower id but commits after B.
    let mut slow = pool.begin().await.unwrap();
    let a = publish_in(&mut slow).await;
    let b = publish(&pool).await;
    assert!(a < b);

    let consumer = Consumer::new(db.service_pool(ServiceRole::NOTIFICATION), "late");
    let recorder = Recorder::default();
    let batch = consumer.process_batch(&recorder).await.unwrap();
    assert_eq!(batch.handled, 0, "B must wait: A may still commit below it");
    assert!(batch.held_back);

    slow.commit().await.unwrap();
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), vec![a, b]);
}

#[tokio::test]
async fn a_consumer_started_from_now_skips_the_history_but_not_what_is_in_flight() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let history = vec![publish(&pool).await, publish(&pool).await];
    let mut slow = pool.begin().await.unwrap();
    let in_flight = publish_in(&mut slow).await;
    let in_flight_txid: i64 = sqlx::query_scalar("SELECT txid::text::bigint FROM platform.outbox WHERE id = $1")
        .bind(in_flight)
        .fetch_one(&mut *slow)
        .await
        .unwrap();
    // Other tests' transactions may still hold the horizon below the history.
    wait_below_horizon(&pool, &history).await;

    let consumer = Consumer::new(db.service_pool(ServiceRole::NOTIFICATION), "from-now").start_from_now();
    let recorder = Recorder::default();
    let batch = consumer.process_batch(&recorder).await.unwrap();
    assert_eq!(batch.handled, 0, "the history is skipped and the in-flight event is not committed yet");

    // The cursor sits just below the horizon: after every transaction that had ended, before
    // every one still running.
    let (cursor_txid, cursor_id): (i64, i64) = sqlx::query_as(
        "SELECT last_txid::text::bigint, last_id FROM platform.outbox_consumers WHERE name = 'from-now'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(cursor_id, i64::MAX);
    let history_txids = txids(&pool, &history).await;
    assert!(history_txids.iter().all(|&t| t <= cursor_txid), "{history_txids:?} skipped by {cursor_txid}");
    assert!(cursor_txid < in_flight_txid, "{in_flight_txid} delivered after {cursor_txid}");

    let fresh = publish(&pool).await;
    slow.commit().await.unwrap();
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), vec![in_flight, fresh], "in flight then new, nothing older");

    // The choice applies to a new cursor only; an existing one is kept.
    let later = publish(&pool).await;
    drain(&Consumer::new(pool.clone(), "from-now").start_from_now(), &recorder).await;
    assert_eq!(recorder.seen(), vec![in_flight, fresh, later]);

    // By default a new consumer starts at the beginning.
    let everything = Recorder::default();
    drain(&Consumer::new(pool.clone(), "from-the-beginning"), &everything).await;
    assert_eq!(everything.seen(), [history, vec![in_flight, fresh, later]].concat());
}

#[tokio::test]
async fn an_event_published_in_a_rolled_back_transaction_is_never_delivered() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::STUDIO);
    let mut tx = pool.begin().await.unwrap();
    let rolled_back = publish_in(&mut tx).await;
    tx.rollback().await.unwrap();
    let committed = publish(&pool).await;
    assert!(rolled_back < committed);

    let consumer = Consumer::new(pool.clone(), "rollback");
    let recorder = Recorder::default();
    drain(&consumer, &recorder).await;
    assert_eq!(recorder.seen(), vec![committed]);
}

#[tokio::test]
async fn consumers_keep_their_own_cursors() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let ids = vec![publish(&pool).await, publish(&pool).await];
    for name in ["metering", "gamification"] {
        let recorder = Recorder::default();
        drain(&Consumer::new(pool.clone(), name), &recorder).await;
        assert_eq!(recorder.seen(), ids, "{name}");
    }
}

#[tokio::test]
async fn competing_replicas_share_the_work_without_duplicates() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(publish(&pool).await);
    }
    let recorder = Arc::new(Recorder::default());
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let consumer = Consumer::new(pool.clone(), "shared").batch_size(10);
            let recorder = recorder.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + DEADLINE;
                let mut pause = Duration::from_millis(20);
                loop {
                    let batch = consumer.process_batch(recorder.as_ref()).await.unwrap();
                    if batch.handled > 0 {
                        pause = Duration::from_millis(20);
                    } else if !batch.busy && !batch.held_back {
                        break;
                    } else {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(200));
                    }
                    assert!(Instant::now() < deadline, "replica did not settle: {batch:?}");
                }
            })
        })
        .collect();
    for r in replicas {
        r.await.unwrap();
    }
    let seen = recorder.seen();
    assert_eq!(seen.len(), ids.len(), "each event exactly once when nothing fails");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), ids.len());
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ids);
}

/// What the handler saw of the current span: its name, trace id and span id.
#[derive(Default)]
struct SpanRecorder(Mutex<Vec<(i64, String, String, String)>>);

impl Handler for SpanRecorder {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let current = tracing::Span::current();
        let name = current.metadata().map(|m| m.name().to_owned()).unwrap_or_default();
        let context = current.context();
        let span = context.span();
        let ids = span.span_context();
        self.0.lock().unwrap().push((event.id, name, ids.trace_id().to_string(), ids.span_id().to_string()));
        Ok(())
    }
}

#[tokio::test]
async fn the_handler_continues_the_publishers_trace() {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    // A subscriber with the OpenTelemetry layer, and the propagator `telemetry::init` installs.
    // Global, not `set_default`: with a single registered dispatcher, tracing caches a
    // callsite's interest from whichever thread registers it first, so `outbox.handle`, first
    // reached by a parallel test's thread without a subscriber, would stay disabled here. The
    // other tests only gain spans nobody exports. The only global subscriber of this binary.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::CONTENT);

    // The publisher works inside a span continuing a caller's trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = HashMap::from([("traceparent".to_owned(), format!("00-{trace_id}-00f067aa0ba902b7-01"))]);
    let request = tracing::info_span!("request");
    request.set_parent(TraceContextPropagator::new().extract(&caller)).unwrap();
    let traced = publish(&pool).instrument(request).await;
    let untraced = publish(&pool).await;

    let stored: String = sqlx::query_scalar("SELECT trace_context->>'traceparent' FROM platform.outbox WHERE id = $1")
        .bind(traced)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stored.starts_with(&format!("00-{trace_id}-")), "{stored}");
    let publisher_span_id = stored.split('-').nth(2).unwrap().to_owned();

    let recorder = SpanRecorder::default();
    drain(&Consumer::new(pool.clone(), "traced"), &recorder).await;
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");

    let (id, name, handler_trace, handler_span) = &seen[0];
    assert_eq!((*id, name.as_str()), (traced, "outbox.handle"));
    assert_eq!(handler_trace, trace_id, "the handler continues the publisher's trace");
    assert_ne!(handler_span, &publisher_span_id, "in a span of its own");

    let (id, name, handler_trace, _) = &seen[1];
    assert_eq!((*id, name.as_str()), (untraced, "outbox.handle"));
    assert_ne!(handler_trace, trace_id, "an event published outside any trace starts a new one");
}

#[tokio::test]
async fn run_wakes_on_notify_and_stops_on_shutdown() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let shutdown = Shutdown::new();

    // An hour-long idle poll: deliveries within the deadlines below come from NOTIFY.
    let (tx, mut delivered) = mpsc::unbounded_channel();
    let consumer = Consumer::new(pool.clone(), "live").idle_poll(Duration::from_secs(3600));
    let task = tokio::spawn(consumer.run(Forward(tx), shutdown.signal()));
    for _ in 0..3 {
        let id = publish(&pool).await;
        let got = tokio::time::timeout(DEADLINE, delivered.recv()).await.expect("delivered promptly");
        assert_eq!(got, Some(id));
    }
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap();
}

#[tokio::test]
async fn run_retries_a_failed_handler_without_waiting_for_the_idle_poll() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let shutdown = Shutdown::new();

    /// Fails the first delivery, then forwards `(id, succeeded)`.
    struct FailFirst(mpsc::UnboundedSender<(i64, bool)>, AtomicBool);
    impl Handler for FailFirst {
        async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
            let succeed = self.1.swap(true, Ordering::Relaxed);
            self.0.send((event.id, succeed)).map_err(|e| HandlerError(e.to_string()))?;
            if succeed { Ok(()) } else { Err(HandlerError("not yet".into())) }
        }
    }

    // Published before the consumer listens: no notification can wake it. Each batch is full
    // (one event), so only the failure backoff can bring the retry before the hour-long poll.
    let ids = [publish(&pool).await, publish(&pool).await];
    let (tx, mut delivered) = mpsc::unbounded_channel();
    let consumer = Consumer::new(pool.clone(), "flaky").batch_size(1).idle_poll(Duration::from_secs(3600));
    let task = tokio::spawn(consumer.run(FailFirst(tx, AtomicBool::new(false)), shutdown.signal()));
    for expected in [(ids[0], false), (ids[0], true), (ids[1], true)] {
        let got = tokio::time::timeout(DEADLINE, delivered.recv()).await.expect("retried promptly");
        assert_eq!(got, Some(expected));
    }
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap();
}

#[tokio::test]
async fn run_looks_for_missed_events_when_the_listener_connection_is_lost() {
    let db = TestDatabase::migrated().await;
    let pool = db.service_pool(ServiceRole::RENDER);
    let shutdown = Shutdown::new();

    let (tx, mut delivered) = mpsc::unbounded_channel();
    let consumer = Consumer::new(pool.clone(), "reconnect").idle_poll(Duration::from_secs(3600));
    let task = tokio::spawn(consumer.run(Forward(tx), shutdown.signal()));
    let first = publish(&pool).await;
    let got = tokio::time::timeout(DEADLINE, delivered.recv()).await.expect("delivered promptly");
    assert_eq!(got, Some(first), "the consumer is listening");

    // Enough pooled connections for the outage below, when no new one can be opened.
    let warm: Vec<_> = hold_connections(&pool, 3).await;
    drop(warm);
    // Let the consumer finish its follow-up batch and wait on the hour-long idle poll.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // An outage of the listener: its connection dies and cannot be re-established for a while,
    // and an event is committed meanwhile. Its notification is lost; it must not wait the idle
    // poll.
    // (From another database: a database cannot disallow connections to itself.)
    let mut server = sqlx::PgConnection::connect(flatrender_kit::testing::server_url().expose()).await.unwrap();
    let name = db.name().to_owned();
    let allow = |yes: bool| sqlx::AssertSqlSafe(format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {yes}"));
    sqlx::query(allow(false)).execute(&mut server).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&name)
    .fetch_all(&mut server)
    .await
    .unwrap();
    assert_eq!(killed, [true], "exactly the listener's connection");
    let second = publish(&pool).await;
    let got = tokio::time::timeout(DEADLINE, delivered.recv()).await.expect("delivered during the outage");
    assert_eq!(got, Some(second));

    // After the outage it listens again (retried with a backoff, not only at the idle poll)...
    sqlx::query(allow(true)).execute(&mut server).await.unwrap();
    let third = publish(&pool).await;
    let got = tokio::time::timeout(DEADLINE, delivered.recv()).await.expect("delivered after the outage");
    assert_eq!(got, Some(third));
    // ...and is woken by notifications again.
    let fourth = publish(&pool).await;
    let got = tokio::time::timeout(DEADLINE, delivered.recv()).await.expect("notified again");
    assert_eq!(got, Some(fourth));

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops").unwrap();
}

/// `n` connections of `pool` held at once, so that the pool keeps them open.
async fn hold_connections(pool: &PgPool, n: usize) -> Vec<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(pool.acquire().await.unwrap());
    }
    held
}
